//! What a listing is asked for and what it gives back: the filter, the
//! viewer, the listed rows typed.

use std::sync::Arc;

use super::super::row::Listed;
use super::super::sharing::{access, grant_pairs};
use super::super::{CredentialRow, StoreError};
use crate::ids::UserId;
use crate::model::{Access, CredentialStatus};

/// Who is listing: the rows they may at least use are shown.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// Admins see everything.
    pub admin: bool,
    /// The user, if the key has one (else the organization itself).
    pub user: Option<UserId>,
}

/// A listed credential: the row, the viewer's own grant on it, and every
/// user grant on it (by user id).
#[derive(Debug, Clone)]
pub struct ListedCredential {
    pub row: CredentialRow,
    pub my_grant: Option<Access>,
    pub grants: Vec<(UserId, Access)>,
}

/// A page of a listing and the listing's total.
#[derive(Debug)]
pub struct CredentialPage {
    /// Shared with the page kept for reuse (not copied).
    pub rows: Arc<[ListedCredential]>,
    pub total: i64,
    /// Whether the page was read, or served again.
    pub served: Served,
    /// This process's number for the read the rows come from: a page with
    /// the same number has the same rows (the same values, in the same
    /// order); each read of a page gets a new one.
    pub content: u64,
}

/// How a page was come by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// Read from the tables.
    Read,
    /// Read before in this process, found unchanged by a check statement
    /// (the same rows as that read: the same number).
    Kept,
    /// Read before, and found unchanged but for its rows' use times, which
    /// alone were read again (a new number).
    UsesRead,
}

/// Which health a listing keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthFilter {
    Is(crate::model::Health),
    /// Anything but `ok`.
    NeedsAttention,
}

/// Filters and page of a credential listing.
#[derive(Debug, Clone, Default)]
pub struct CredentialFilter {
    pub viewer: Viewer,
    pub provider: Option<String>,
    pub status: Option<CredentialStatus>,
    /// Health at a time (which, now, the warning window in seconds).
    pub health: Option<(HealthFilter, i64, i64)>,
    /// Case-insensitive substring of the name.
    pub q: Option<String>,
    /// Only credentials the viewer owns.
    pub owner_me: bool,
    /// Only shared (team or users) ones, or only unshared ones.
    pub shared: Option<bool>,
    /// Keyset cursor: only credentials after this (`created_at`, `id`) in
    /// the listing's order (newest first); `page` is then ignored.
    pub after: Option<(i64, String)>,
    /// 1-based.
    pub page: i64,
    pub per_page: i64,
}

pub(super) fn like_pattern(q: &str) -> String {
    let escaped = q
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// A listed row, typed; its grants sorted by user.
pub(super) fn listed(l: Listed) -> Result<ListedCredential, StoreError> {
    let row = CredentialRow::try_from(l.raw)?;
    let my_grant = l.my_grant.as_deref().and_then(Access::parse);
    let mut grants = grant_pairs(&row.id, l.grants.as_deref())?
        .into_iter()
        .map(|(user, level)| access(&row.id, &level).map(|level| (user, level)))
        .collect::<Result<Vec<_>, _>>()?;
    grants.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(ListedCredential { row, my_grant, grants })
}

/// The condition that a credential (`x`) has `health` at `now` (see
/// `model::Health::of`: the same rules). The times are numbers credgate
/// computed, written into the statement.
pub(super) fn health_sql(health: HealthFilter, now: i64, warn: i64) -> String {
    use crate::model::Health;
    let health = match health {
        HealthFilter::Is(h) => h,
        HealthFilter::NeedsAttention => return format!("NOT {}", health_sql(HealthFilter::Is(Health::Ok), now, warn)),
    };
    let ends_by = |t: i64| {
        format!(
            "(COALESCE(x.refresh_expires_at, 9223372036854775807) <= {t} \
             OR COALESCE(x.secret_expires_at, 9223372036854775807) <= {t})"
        )
    };
    let needs_reauth = format!("(x.status = 'needs_reauth' OR {})", ends_by(now));
    let failing = "(x.status IN ('expired', 'error') OR x.refresh_failures > 0)";
    match health {
        Health::NeedsReauth => needs_reauth,
        Health::Failing => format!("(NOT {needs_reauth} AND {failing})"),
        Health::Expiring => format!("(NOT {needs_reauth} AND NOT {failing} AND {})", ends_by(now + warn)),
        Health::Ok => format!("(NOT {needs_reauth} AND NOT {failing} AND NOT {})", ends_by(now + warn)),
    }
}
