//! A credential row, typed: enums for auth type and status, JSON columns
//! parsed once, here. A column that does not parse is a [`StoreError::Corrupt`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::StoreError;
use crate::ids::{CredentialId, CredentialName, OrgId, UserId};
use crate::model::{Access, AuthKind, CredentialStatus};

/// The columns every read returns, in [`CredentialColumns`]'s order.
pub(super) const READ_COLUMNS: &str = "id, org_id, name, provider, auth_type, status, fields, secret_names, \
    secret_ct, key_version, secret_version, account_id, account_email, account_name, scopes, expires_at, \
    last_refreshed_at, last_used_at, last_tested_at, last_error, created_by, created_at, updated_at, \
    refresh_failures, refresh_after, owner, team_access, oauth_app, oauth_client_id, refresh_expires_at, \
    secret_expires_at";

/// A listing (of `credentials c`) needs no ciphertext: it is left empty.
pub(super) const LIST_COLUMNS: &str = "c.id, c.org_id, c.name, c.provider, c.auth_type, c.status, c.fields, \
    c.secret_names, '' AS secret_ct, c.key_version, c.secret_version, c.account_id, c.account_email, \
    c.account_name, c.scopes, c.expires_at, c.last_refreshed_at, c.last_used_at, c.last_tested_at, c.last_error, \
    c.created_by, c.created_at, c.updated_at, c.refresh_failures, c.refresh_after, c.owner, c.team_access, \
    c.oauth_app, c.oauth_client_id, c.refresh_expires_at, c.secret_expires_at, c.row_version";

/// The last failure recorded on a credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// Stable code (`needs_reauth`, `auth_failed`, …).
    pub code: String,
    /// Words for a person (never a secret).
    pub message: String,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A credential as stored. Holds the sealed secrets; never serialized.
#[derive(Debug, Clone)]
pub struct CredentialRow {
    pub id: CredentialId,
    pub org_id: OrgId,
    pub name: CredentialName,
    pub provider: String,
    pub auth_type: AuthKind,
    pub status: CredentialStatus,
    /// Non-secret field values.
    pub fields: Map<String, Value>,
    /// The secret field names that are set.
    pub secret_names: Vec<String>,
    /// The sealed secrets (see `crypto`); empty in listings.
    pub secret_ct: String,
    /// The data key version that sealed them.
    pub key_version: i64,
    /// Bumped by every write of new secret content (compare-and-swap).
    pub secret_version: i64,
    pub account_id: Option<String>,
    pub account_email: Option<String>,
    pub account_name: Option<String>,
    /// Granted scopes.
    pub scopes: Option<Vec<String>>,
    pub expires_at: Option<i64>,
    pub last_refreshed_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub last_tested_at: Option<i64>,
    pub last_error: Option<LastError>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Consecutive failed refreshes.
    pub refresh_failures: i64,
    /// Next background refresh not before (jittered schedule or backoff).
    pub refresh_after: Option<i64>,
    /// The user who owns it; `None`: an organization credential.
    pub owner: Option<UserId>,
    /// What everyone in the organization may do with it.
    pub team_access: Option<Access>,
    /// The organization's own OAuth app (or MCP registration) that connected
    /// it and that app's client id then; `None`: the operator's app.
    pub oauth_app: Option<(String, String)>,
    /// When the refresh token (the grant itself) ends, where known.
    pub refresh_expires_at: Option<i64>,
    /// When the secret itself ends (an API key's end), where known.
    pub secret_expires_at: Option<i64>,
}

impl CredentialRow {
    /// Its health at `now`, warning `warn_secs` before its grant or secret
    /// ends.
    pub fn health(&self, now: i64, warn_secs: i64) -> crate::model::Health {
        crate::model::Health::of(
            crate::model::HealthFacts {
                status: self.status,
                refresh_failures: self.refresh_failures,
                ends_at: self.ends_at(),
            },
            now,
            warn_secs,
        )
    }

    /// The earlier of its grant's and its secret's ends, if either is known.
    pub fn ends_at(&self) -> Option<i64> {
        [self.refresh_expires_at, self.secret_expires_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Does the access token expire within `secs` of `now`?
    pub fn expires_within(&self, now: i64, secs: i64) -> bool {
        self.expires_at.is_some_and(|e| e <= now + secs)
    }
}

/// The row as the database returns it.
#[derive(sqlx::FromRow)]
pub(super) struct CredentialColumns {
    pub(super) id: CredentialId,
    pub(super) org_id: OrgId,
    name: CredentialName,
    provider: String,
    auth_type: String,
    status: String,
    fields: String,
    secret_names: String,
    secret_ct: String,
    key_version: i64,
    secret_version: i64,
    account_id: Option<String>,
    account_email: Option<String>,
    account_name: Option<String>,
    scopes: Option<String>,
    expires_at: Option<i64>,
    last_refreshed_at: Option<i64>,
    last_used_at: Option<i64>,
    last_tested_at: Option<i64>,
    last_error: Option<String>,
    created_by: String,
    pub(super) created_at: i64,
    updated_at: i64,
    refresh_failures: i64,
    refresh_after: Option<i64>,
    owner: Option<UserId>,
    team_access: Option<String>,
    oauth_app: Option<String>,
    oauth_client_id: Option<String>,
    refresh_expires_at: Option<i64>,
    secret_expires_at: Option<i64>,
}

impl TryFrom<CredentialColumns> for CredentialRow {
    type Error = StoreError;

    fn try_from(r: CredentialColumns) -> Result<Self, StoreError> {
        let id = r.id.clone();
        let corrupt = |column: &'static str| {
            tracing::error!(credential = %id, column, "a stored credential column is malformed");
            StoreError::Corrupt {
                id: id.to_string(),
                column,
            }
        };
        let fields = match serde_json::from_str(&r.fields) {
            Ok(Value::Object(map)) => map,
            _ => return Err(corrupt("fields")),
        };
        let secret_names = serde_json::from_str(&r.secret_names).map_err(|_| corrupt("secret_names"))?;
        let scopes = r
            .scopes
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|_| corrupt("scopes"))?;
        let last_error = r
            .last_error
            .as_deref()
            .map(serde_json::from_str)
            .transpose()
            .map_err(|_| corrupt("last_error"))?;
        let team_access = match r.team_access.as_deref() {
            None => None,
            Some(a) => Some(Access::parse(a).ok_or_else(|| corrupt("team_access"))?),
        };
        Ok(Self {
            team_access,
            oauth_app: r.oauth_app.zip(r.oauth_client_id),
            refresh_expires_at: r.refresh_expires_at,
            secret_expires_at: r.secret_expires_at,
            owner: r.owner,
            auth_type: AuthKind::parse(&r.auth_type).ok_or_else(|| corrupt("auth_type"))?,
            status: CredentialStatus::parse(&r.status).ok_or_else(|| corrupt("status"))?,
            fields,
            secret_names,
            scopes,
            last_error,
            id: r.id,
            org_id: r.org_id,
            name: r.name,
            provider: r.provider,
            secret_ct: r.secret_ct,
            key_version: r.key_version,
            secret_version: r.secret_version,
            account_id: r.account_id,
            account_email: r.account_email,
            account_name: r.account_name,
            expires_at: r.expires_at,
            last_refreshed_at: r.last_refreshed_at,
            last_used_at: r.last_used_at,
            last_tested_at: r.last_tested_at,
            created_by: r.created_by,
            created_at: r.created_at,
            updated_at: r.updated_at,
            refresh_failures: r.refresh_failures,
            refresh_after: r.refresh_after,
        })
    }
}

/// Converts raw rows, failing on the first malformed one.
pub(super) fn typed(rows: Vec<CredentialColumns>) -> Result<Vec<CredentialRow>, StoreError> {
    rows.into_iter().map(CredentialRow::try_from).collect()
}

/// A listed row and the viewer's own grant on it.
#[derive(sqlx::FromRow)]
pub(super) struct Listed {
    #[sqlx(flatten)]
    pub raw: CredentialColumns,
    pub my_grant: Option<String>,
    /// The organization's listing version when the page was read (listings
    /// only).
    #[sqlx(default)]
    pub listing_version: Option<i64>,
    /// Every user grant on it, `[[user_id, access], …]` (listings only).
    #[sqlx(default)]
    pub grants: Option<String>,
    /// Raised by every update of the row (migration 0016).
    pub row_version: i64,
}
