//! The credential service: every change to a credential — create, update,
//! delete, connect (an OAuth grant), a refresh's outcome, a test's outcome —
//! goes validate → seal → store → audit → notify here, once. Handlers, the
//! OAuth callback, the refresher, the CLI and the benchmarks call it; none
//! of them touches the vault or the store's secret columns.

pub mod access;
mod connect;
mod idempotency;
pub mod minted;
mod outcome;
mod revoke;
mod secrets;
mod sharing;
mod write;

pub use connect::{connect, Grant};
pub use idempotency::{create_once, Created};
pub use outcome::{record_refresh_failure, record_refreshed, record_test, Refreshed};
pub use revoke::{revoke_credential_tokens, revoke_token_set, revoke_tokens, revoke_tokens_later};
pub use secrets::{CredentialSecrets, OAuthTokens};
pub use sharing::{check_user_id, remove_user, set_sharing, usage, Sharing};
pub use write::{create, delete, update, Changes, NewCredentialInput};

use std::sync::Arc;

use crate::context::Context;
use crate::error::Error;
use crate::ids::{CredentialId, CredentialName, OrgId, UserId};
use crate::model::{Access, AuthKind, Principal, Role};
use crate::providers::{FieldError, Provider};
use crate::store::{AuditRow, CredentialFilter, CredentialRow, ListedCredential, Served, StoreError, Viewer};

/// Longest credential name.
pub use crate::ids::MAX_NAME_LEN;
/// Most credentials on one page.
pub const MAX_PER_PAGE: i64 = 50;
/// How often a write that lost to a key rotation is sealed again and retried.
pub(crate) const KEY_RETRIES: usize = 3;

/// One credential of an organization, or `NotFound` (no access check: for
/// the domain's own use after [`access::authorize`]).
pub(crate) async fn get_unchecked(ctx: &Context, org_id: &OrgId, id: &CredentialId) -> Result<CredentialRow, Error> {
    ctx.store.credential(org_id, id).await?.ok_or(Error::NotFound)
}

/// A credential `who` may at least use, with their level.
pub async fn read(ctx: &Context, who: &Principal, id: &CredentialId) -> Result<(CredentialRow, Access), Error> {
    access::authorize(ctx, who, id, Access::Use).await
}

/// A listed credential: the row, the caller's level, its user grants.
#[derive(Debug, Clone, Copy)]
pub struct Listed<'a> {
    pub row: &'a CredentialRow,
    pub access: Access,
    pub grants: &'a [(UserId, Access)],
}

/// A page of the credentials a caller may at least use, and the total.
#[derive(Debug)]
pub struct ListedPage {
    rows: Arc<[ListedCredential]>,
    levels: Vec<Option<Access>>,
    pub total: i64,
    /// The store's number for the read the rows come from: the same number,
    /// the same rows, so for the same caller the same page
    /// ([`crate::store::CredentialPage::content`]).
    pub content: u64,
    /// Whether the store read the page, or served one it had read before.
    pub served: Served,
}

impl ListedPage {
    /// The credentials with the caller's level on each, in the listing's order.
    pub fn iter(&self) -> impl Iterator<Item = Listed<'_>> {
        self.rows.iter().zip(&self.levels).filter_map(|(l, level)| {
            Some(Listed {
                row: &l.row,
                access: (*level)?,
                grants: &l.grants,
            })
        })
    }

    pub fn is_empty(&self) -> bool {
        self.iter().next().is_none()
    }
}

/// A page of the credentials `who` may at least use, each with their level
/// and its user grants, and the total (the filter's viewer is `who`).
pub async fn list(ctx: &Context, who: &Principal, mut filter: CredentialFilter) -> Result<ListedPage, Error> {
    filter.viewer = Viewer {
        admin: who.role == Role::Admin,
        user: who.user_id.clone(),
    };
    let page = ctx.store.list_credentials(&who.org_id, &filter).await?;
    match page.served {
        Served::Read => ctx.metrics.listing_pages_read.inc(),
        Served::Kept => ctx.metrics.listing_pages_reused.inc(),
        Served::UsesRead => ctx.metrics.listing_pages_uses_read.inc(),
    };
    let levels = page
        .rows
        .iter()
        .map(|l| access::level_with(who, &l.row, l.my_grant))
        .collect();
    Ok(ListedPage {
        rows: page.rows,
        levels,
        total: page.total,
        content: page.content,
        served: page.served,
    })
}

/// A credential's audit events, newest first (at most 500): `view` needed;
/// an admin still reads those of a deleted credential.
pub async fn audit_log(ctx: &Context, who: &Principal, id: &CredentialId) -> Result<Vec<AuditRow>, Error> {
    let deleted = who.role == Role::Admin
        && ctx.store.credential(&who.org_id, id).await?.is_none()
        && ctx.store.was_deleted(&who.org_id, id).await?;
    if !deleted {
        access::authorize(ctx, who, id, Access::View).await?;
    }
    let events = ctx.store.audit_events(&who.org_id, id, 500).await?;
    if events.is_empty() {
        return Err(Error::NotFound);
    }
    Ok(events)
}

/// A credential's user grants.
pub async fn grants(ctx: &Context, id: &CredentialId) -> Result<Vec<(UserId, Access)>, Error> {
    Ok(ctx.store.grants(id).await?)
}

/// A credential name as sent: trimmed, printable, at most
/// [`MAX_NAME_LEN`] characters; the error names the field `name`.
pub fn check_name(name: &str) -> Result<CredentialName, FieldError> {
    CredentialName::parse(name).map_err(|e| FieldError::new("name", e.to_string()))
}

/// Looks up a provider and one of its auth types, or names the bad field.
fn provider_auth<'a>(
    ctx: &'a Context,
    provider: &str,
    auth_type: &str,
) -> Result<(&'a Provider, AuthKind), Vec<FieldError>> {
    let provider = ctx.registry.get(provider).ok_or_else(|| {
        vec![FieldError::new(
            "provider",
            "is not a known provider (see GET /integrations/providers)",
        )]
    })?;
    let kind = AuthKind::parse(auth_type)
        .filter(|k| provider.auth_type(*k).is_some())
        .ok_or_else(|| {
            vec![FieldError::new(
                "auth_type",
                format!("is not an auth type of provider {}", provider.id),
            )]
        })?;
    Ok((provider, kind))
}

/// Whether a sealing write should be sealed again and retried: only when a
/// key rotation beat it (the content is still ours to write).
pub(crate) fn retry_after_rotation(e: &StoreError, attempt: usize) -> bool {
    matches!(e, StoreError::KeyRotated) && attempt + 1 < KEY_RETRIES
}
