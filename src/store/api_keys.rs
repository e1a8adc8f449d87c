//! API keys: the SHA-256 of each token (never the token), its role and user,
//! and its lifecycle (expiry, revocation, last use).

use serde_json::json;

use super::audit::{self, AuditEvent};
use super::{Store, StoreError};
use crate::ids::{OrgId, UserId};
use crate::model::Role;

/// How a key to revoke is named.
#[derive(Clone, Copy)]
pub enum KeyRef<'a> {
    /// By its id.
    Id(&'a str),
    /// By the SHA-256 of its token (a leaked key whose id nobody knows).
    TokenHash(&'a str),
}

impl std::fmt::Debug for KeyRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Id(id) => f.debug_tuple("Id").field(id).finish(),
            Self::TokenHash(_) => f.write_str("TokenHash(..)"),
        }
    }
}

/// An API key as stored: its hash, never the token.
#[derive(Debug, Clone)]
pub struct ApiKeyRow {
    /// Key id.
    pub id: String,
    /// Organization.
    pub org_id: OrgId,
    /// What it may do.
    pub role: Role,
    /// Optional user the key acts for.
    pub user_id: Option<UserId>,
    /// When it stops working (unix seconds), if ever.
    pub expires_at: Option<i64>,
}

/// An API key as listed for operators.
#[derive(Debug, Clone)]
pub struct ApiKeyInfo {
    pub id: String,
    pub role: Role,
    pub user_id: Option<UserId>,
    pub label: Option<String>,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// A key as `api_key_by_hash` reads it.
#[derive(sqlx::FromRow)]
struct KeyColumns {
    id: String,
    org_id: OrgId,
    role: String,
    user_id: Option<UserId>,
    expires_at: Option<i64>,
}

/// What `revoke_api_key` reads back.
#[derive(sqlx::FromRow)]
struct RevokedColumns {
    id: String,
    org_id: OrgId,
}

/// A key as `list_api_keys` reads it.
#[derive(sqlx::FromRow)]
struct ListedKeyColumns {
    id: String,
    role: String,
    user_id: Option<UserId>,
    label: Option<String>,
    created_at: i64,
    last_used_at: Option<i64>,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
}

fn role(id: &str, raw: &str) -> Result<Role, StoreError> {
    Role::parse(raw).ok_or(StoreError::Corrupt {
        id: id.to_owned(),
        column: "role",
    })
}

impl Store {
    /// Stores a new API key's hash.
    #[expect(clippy::too_many_arguments, reason = "one column each")]
    pub async fn insert_api_key(
        &self,
        id: &str,
        org_id: &OrgId,
        token_hash: &str,
        role: Role,
        user_id: Option<&UserId>,
        label: Option<&str>,
        expires_at: Option<i64>,
    ) -> Result<(), StoreError> {
        self.timed(async move {
            self.execute_write(
                sqlx::query(
                    "INSERT INTO api_keys (id, org_id, token_hash, role, user_id, label, created_at, expires_at, \
                 token_format) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'v2')",
                )
                .bind(id)
                .bind(org_id)
                .bind(token_hash)
                .bind(role.as_str())
                .bind(user_id)
                .bind(label)
                .bind(self.now())
                .bind(expires_at),
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// The key a token hash belongs to, unless it was revoked or expired.
    pub async fn api_key_by_hash(&self, token_hash: &str) -> Result<Option<ApiKeyRow>, StoreError> {
        self.timed(async move {
            let row: Option<KeyColumns> = sqlx::query_as(
                "SELECT id, org_id, role, user_id, expires_at FROM api_keys WHERE token_hash = $1 \
             AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(token_hash)
            .bind(self.now())
            .fetch_optional(&self.pool)
            .await?;
            let Some(row) = row else { return Ok(None) };
            Ok(Some(ApiKeyRow {
                role: role(&row.id, &row.role)?,
                id: row.id,
                org_id: row.org_id,
                user_id: row.user_id,
                expires_at: row.expires_at,
            }))
        })
        .await
    }

    /// An organization's keys, newest first.
    pub async fn list_api_keys(&self, org_id: &OrgId) -> Result<Vec<ApiKeyInfo>, StoreError> {
        self.timed(async move {
            let rows: Vec<ListedKeyColumns> = sqlx::query_as(
                "SELECT id, role, user_id, label, created_at, last_used_at, expires_at, revoked_at \
             FROM api_keys WHERE org_id = $1 ORDER BY created_at DESC, id",
            )
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(ApiKeyInfo {
                        role: role(&r.id, &r.role)?,
                        id: r.id,
                        user_id: r.user_id,
                        label: r.label,
                        created_at: r.created_at,
                        last_used_at: r.last_used_at,
                        expires_at: r.expires_at,
                        revoked_at: r.revoked_at,
                    })
                })
                .collect()
        })
        .await
    }

    /// Revokes a key, named by its id or by its token's hash, and ends the
    /// page sessions it opened, audited, in one transaction; returns its id
    /// and organization, `None` when there is no such unrevoked key.
    pub async fn revoke_api_key(&self, key: KeyRef<'_>, actor: &str) -> Result<Option<(String, OrgId)>, StoreError> {
        self.timed(async move {
            let (column, value) = match key {
                KeyRef::Id(id) => ("id", id),
                KeyRef::TokenHash(hash) => ("token_hash", hash),
            };
            let mut tx = self.begin_write().await?;
            let t = self.now();
            let row: Option<RevokedColumns> = sqlx::query_as(&format!(
                "UPDATE api_keys SET revoked_at = $2 WHERE {column} = $1 AND revoked_at IS NULL RETURNING id, org_id"
            ))
            .bind(value)
            .bind(t)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(RevokedColumns { id, org_id }) = row else {
                return Ok(None);
            };
            let sessions = sqlx::query("DELETE FROM page_sessions WHERE api_key_id = $1")
                .bind(&id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            let event = AuditEvent::for_org(&org_id, "api_key.revoke", actor)
                .with_detail(json!({"key_id": id, "page_sessions_ended": sessions}));
            audit::insert(&mut tx, &event, t).await?;
            tx.commit().await?;
            Ok(Some((id, org_id)))
        })
        .await
    }

    /// The hashes of unrevoked keys made before tokens had a checksum.
    pub async fn legacy_api_key_hashes(&self) -> Result<Vec<String>, StoreError> {
        self.timed(async move {
            Ok(
                sqlx::query_scalar("SELECT token_hash FROM api_keys WHERE token_format IS NULL AND revoked_at IS NULL")
                    .fetch_all(&self.pool)
                    .await?,
            )
        })
        .await
    }

    /// The installation's value `name`: the one stored, or `candidate`,
    /// stored now when there was none (the first of racing writers wins).
    pub async fn install_value(&self, name: &str, candidate: &str) -> Result<String, StoreError> {
        self.timed(async move {
            let found: Option<String> = sqlx::query_scalar("SELECT value FROM install_values WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(value) = found {
                return Ok(value);
            }
            self.execute_write(
                sqlx::query(
                    "INSERT INTO install_values (name, value, created_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO NOTHING",
                )
                .bind(name)
                .bind(candidate)
                .bind(self.now()),
            )
            .await?;
            Ok(sqlx::query_scalar("SELECT value FROM install_values WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?)
        })
        .await
    }

    /// Records a key's use (callers coalesce: at most once a minute).
    pub async fn touch_api_key(&self, id: &str, at: i64) -> Result<(), StoreError> {
        self.timed(async move {
            self.execute_write(
            sqlx::query(
                "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $2)",
            )
            .bind(id)
            .bind(at),
        )
        .await?;
            Ok(())
        })
        .await
    }
}
