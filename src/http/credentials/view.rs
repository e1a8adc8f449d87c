//! The Credential resource as the API shows it: never a secret value.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::ids::{CredentialId, CredentialName, UserId};
use crate::model::{Access, Health};
use crate::store::CredentialRow;

/// The external account an OAuth credential belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct Account {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

/// A credential: metadata, non-secret fields, and the names of set secrets.
#[derive(Debug, Serialize, ToSchema)]
pub struct Credential {
    pub id: CredentialId,
    pub name: CredentialName,
    pub provider: String,
    pub auth_type: String,
    /// `active`, `expired`, `needs_reauth` or `error`.
    pub status: String,
    /// `ok`, `expiring` (its grant or secret ends within
    /// `CREDGATE_EXPIRY_WARN_DAYS`), `failing` or `needs_reauth`.
    pub health: Health,
    /// When the refresh token (the grant itself) ends, where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_expires_at: Option<DateTime<Utc>>,
    /// When the secret itself ends (an API key's end date), where known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_expires_at: Option<DateTime<Utc>>,
    /// Non-secret field values.
    #[schema(value_type = Object)]
    pub fields: Value,
    /// Names of the secret fields that are set.
    pub secret_fields: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_refreshed_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_tested_at: Option<DateTime<Utc>>,
    /// `{"code", "message", "at"}` of the last failure.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub last_error: Option<Value>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The owning user; `null`: an organization credential.
    pub owner: Option<UserId>,
    pub sharing: SharingView,
    /// The caller's own level: `use`, `view` or `manage`.
    pub access: Access,
}

/// Who may use a credential beside its owner.
#[derive(Debug, Serialize, ToSchema)]
pub struct SharingView {
    /// Everyone in the organization: `null`, `use`, `view` or `manage`.
    pub team: Option<Access>,
    pub users: Vec<UserGrant>,
}

/// One user's grant.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserGrant {
    pub user_id: UserId,
    pub access: Access,
}

/// What a caller with `use` sees of a credential (nothing more: its schema
/// closes, so a whole record never matches it).
#[derive(Debug, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialSummary {
    pub id: CredentialId,
    pub name: CredentialName,
    pub provider: String,
    pub auth_type: String,
    pub status: String,
    pub health: Health,
    pub owner: Option<UserId>,
    pub access: Access,
}

/// A credential as its caller may see it: whole from `view` up, else the summary.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum CredentialOut {
    Full(Box<Credential>),
    Summary(CredentialSummary),
}

impl CredentialOut {
    /// `row` seen by a caller with `access`; `grants` are its user grants
    /// (only shown from `view` up).
    pub fn new(row: &CredentialRow, access: Access, grants: &[(UserId, Access)], health: Health) -> Self {
        if access < Access::View {
            return Self::Summary(CredentialSummary {
                id: row.id.clone(),
                name: row.name.clone(),
                provider: row.provider.clone(),
                auth_type: row.auth_type.as_str().to_owned(),
                status: row.status.as_str().to_owned(),
                health,
                owner: row.owner.clone(),
                access,
            });
        }
        Self::Full(Box::new(Credential::new(row, access, grants, health)))
    }
}

/// Unix seconds → UTC time.
pub fn time(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

impl Credential {
    /// The whole record (no secret value).
    pub fn new(row: &CredentialRow, access: Access, grants: &[(UserId, Access)], health: Health) -> Self {
        Self {
            health,
            refresh_expires_at: row.refresh_expires_at.map(time),
            secret_expires_at: row.secret_expires_at.map(time),
            sharing: SharingView {
                team: row.team_access,
                users: grants
                    .iter()
                    .map(|(user_id, access)| UserGrant {
                        user_id: user_id.clone(),
                        access: *access,
                    })
                    .collect(),
            },
            access,
            auth_type: row.auth_type.as_str().to_owned(),
            status: row.status.as_str().to_owned(),
            account: row.account_id.as_ref().map(|id| Account {
                id: id.clone(),
                email: row.account_email.clone(),
                display_name: row.account_name.clone(),
            }),
            expires_at: row.expires_at.map(time),
            last_refreshed_at: row.last_refreshed_at.map(time),
            last_used_at: row.last_used_at.map(time),
            last_tested_at: row.last_tested_at.map(time),
            last_error: row
                .last_error
                .as_ref()
                .map(|e| serde_json::to_value(e).expect("serializes")),
            created_at: time(row.created_at),
            updated_at: time(row.updated_at),
            owner: row.owner.clone(),
            id: row.id.clone(),
            name: row.name.clone(),
            provider: row.provider.clone(),
            fields: Value::Object(row.fields.clone()),
            secret_fields: row.secret_names.clone(),
            scopes: row.scopes.clone(),
            created_by: row.created_by.clone(),
        }
    }
}

/// One page of credentials.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialPage {
    pub items: Vec<CredentialOut>,
    pub page: i64,
    pub per_page: i64,
    pub total: i64,
    /// Pass as `after` for the next page (keyset paging, fast at any depth);
    /// absent on a page that is not full.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// An audit event as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEventView {
    pub id: i64,
    pub action: String,
    pub outcome: String,
    pub actor: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Value>,
    pub at: DateTime<Utc>,
}
