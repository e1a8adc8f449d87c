//! The one access check: which level (`use` < `view` < `manage`) a principal
//! has on a credential, and loading a credential only for those who may do
//! what they ask. A credential they may not even use does not exist for them
//! (`NotFound`); one they may use but not at the level asked is `Forbidden`.
//! Every denial is audited as `access.denied`: one row per key per minute,
//! its `count` kept up to date, so a hostile key cannot grow the table.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::context::Context;
use crate::error::Error;
use crate::model::{Access, Principal, Role};
use crate::store::{AuditEvent, CredentialRow};

/// The level `who` has, given the row and `who`'s own grant on it.
pub fn level_with(who: &Principal, row: &CredentialRow, grant: Option<Access>) -> Option<Access> {
    if who.role == Role::Admin || row.owner.is_none() {
        return Some(Access::Manage);
    }
    if who.user_id.is_some() && who.user_id == row.owner {
        return Some(Access::Manage);
    }
    row.team_access.max(grant)
}

/// The level `who` has on `row` (one query for a user's grant, only when
/// neither role, ownership nor the team decide it).
pub async fn level(ctx: &Context, who: &Principal, row: &CredentialRow) -> Result<Option<Access>, Error> {
    let decided = level_with(who, row, None);
    if decided == Some(Access::Manage) {
        return Ok(decided);
    }
    let grant = match &who.user_id {
        Some(user) => ctx.store.grant_of(&row.id, user).await?,
        None => None,
    };
    Ok(level_with(who, row, grant))
}

/// Loads credential `id` for `who`, who needs `need`; returns it with the
/// level `who` has.
pub async fn authorize(
    ctx: &Context,
    who: &Principal,
    id: &str,
    need: Access,
) -> Result<(CredentialRow, Access), Error> {
    // A credential that does not exist has nothing to protect: not audited.
    let Some(row) = ctx.store.credential(&who.org_id, id).await? else {
        return Err(Error::NotFound);
    };
    match level(ctx, who, &row).await? {
        Some(have) if have >= need => Ok((row, have)),
        Some(_) => {
            deny(ctx, who, Some(id), need.as_str()).await;
            Err(Error::Forbidden)
        }
        None => {
            deny(ctx, who, Some(id), need.as_str()).await;
            Err(Error::NotFound)
        }
    }
}

/// Counts denials per key and minute.
#[derive(Debug, Default)]
pub struct Denials {
    /// key id → (minute, audit row, count)
    seen: Mutex<HashMap<String, (i64, i64, u64)>>,
}

const DENIALS_MAX: usize = 10_000;

/// Audits a denial of `who` (never failing the request over it).
pub async fn deny(ctx: &Context, who: &Principal, credential_id: Option<&str>, needed: &str) {
    let now = ctx.now();
    let minute = now / 60;
    let known = {
        let mut seen = ctx.denials.seen.lock().expect("not poisoned");
        match seen.get_mut(&who.key_id) {
            Some((m, row, count)) if *m == minute && *row > 0 => {
                *count += 1;
                Some((*row, *count))
            }
            _ => {
                if seen.len() >= DENIALS_MAX {
                    seen.retain(|_, (m, _, _)| *m == minute);
                }
                seen.insert(who.key_id.clone(), (minute, 0, 1));
                None
            }
        }
    };
    let detail = |count: u64| serde_json::json!({"role": who.role.as_str(), "needed": needed, "count": count});
    let recorded = match known {
        Some((row, count)) => ctx.store.update_audit_detail(row, &detail(count)).await,
        None => {
            let event = AuditEvent {
                org_id: who.org_id.clone(),
                credential_id: credential_id.map(str::to_owned),
                action: "access.denied",
                outcome: "denied",
                actor: who.actor(),
                detail: Some(detail(1)),
            };
            ctx.store.audit_returning_id(&event).await.map(|row| {
                if let Some(entry) = ctx.denials.seen.lock().expect("not poisoned").get_mut(&who.key_id) {
                    entry.1 = row;
                }
            })
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "could not record a denied access");
    }
}
