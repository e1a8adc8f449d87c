//! Sharing a credential (team level and named users), a user's removal
//! from an organization, and who used a credential for which workflow.

use serde_json::json;

use super::access;
use crate::context::Context;
use crate::error::Error;
use crate::ids::{CredentialId, OrgId, UserId};
use crate::model::{Access, Principal};
use crate::providers::FieldError;
use crate::store::{sharing_detail, AuditEvent, CredentialRow, Store, UsageSummary, UserRemoval};

/// Most named users a credential is shared with.
const MAX_GRANTS: usize = 100;

/// Who may use a credential beside its owner.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sharing {
    pub team: Option<Access>,
    pub users: Vec<(UserId, Access)>,
}

/// A user id from a request: 1 to 200 printable characters.
pub fn check_user_id(field: &str, raw: &str) -> Result<UserId, FieldError> {
    UserId::parse(raw).map_err(|e| FieldError::new(field, e.to_string()))
}

impl Sharing {
    /// Parses sharing as sent: at most [`MAX_GRANTS`] users, each a valid
    /// user id, none listed twice.
    pub fn parse(team: Option<Access>, users: Vec<(String, Access)>) -> Result<Self, Error> {
        let mut errors = Vec::new();
        if users.len() > MAX_GRANTS {
            errors.push(FieldError::new("users", format!("at most {MAX_GRANTS} users")));
        }
        let mut parsed: Vec<(UserId, Access)> = Vec::with_capacity(users.len());
        for (i, (user, access)) in users.into_iter().enumerate() {
            let field = format!("users[{i}].user_id");
            match check_user_id(&field, &user) {
                Ok(user) if parsed.iter().any(|(u, _)| *u == user) => {
                    errors.push(FieldError::new(field, "is listed twice"));
                }
                Ok(user) => parsed.push((user, access)),
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(Error::Validation(errors));
        }
        Ok(Self { team, users: parsed })
    }
}

/// Replaces a credential's sharing (`manage`); audited with before and after.
pub async fn set_sharing(
    ctx: &Context,
    who: &Principal,
    id: &CredentialId,
    new: Sharing,
) -> Result<CredentialRow, Error> {
    let (row, _) = access::authorize(ctx, who, id, Access::Manage).await?;
    let before = ctx.store.grants(id).await?;
    let event = AuditEvent::success(&who.org_id, id, "credential.share", &who.actor()).with_detail(json!({
        "before": sharing_detail(row.team_access, &before),
        "after": sharing_detail(new.team, &new.users),
    }));
    ctx.store
        .set_sharing(&who.org_id, id, new.team, &new.users, &event)
        .await?;
    super::get_unchecked(ctx, &who.org_id, id).await
}

/// A credential's uses (`view`).
pub async fn usage(ctx: &Context, who: &Principal, id: &CredentialId) -> Result<UsageSummary, Error> {
    access::authorize(ctx, who, id, Access::View).await?;
    Ok(ctx.store.usage(&who.org_id, id).await?)
}

/// Hands `user`'s personal credentials to `to` (`None`: the organization),
/// removes their grants and revokes their API keys; audited (each transfer,
/// removed grant and revoked key, and the removal itself).
pub async fn remove_user(
    store: &Store,
    org_id: &OrgId,
    user: &UserId,
    to: Option<&UserId>,
    actor: &str,
) -> Result<UserRemoval, Error> {
    if let Some(to) = to {
        if to == user {
            return Err(Error::field("--transfer-to", "must be another user"));
        }
    }
    Ok(store.remove_user(org_id, user, to, actor).await?)
}
