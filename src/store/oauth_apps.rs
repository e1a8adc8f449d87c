//! An organization's own OAuth clients (migration 0021): its own app for a
//! provider, and credgate's registrations at MCP authorization servers. One
//! row per organization and app; the client secret sealed, like a named
//! secret, under the organization's current data key; every change audited
//! in its transaction.

use super::audit::{self, AuditEvent};
use super::quota::lock_org;
use super::{check_key, Store, StoreError};
use crate::ids::OrgId;

/// An app as stored. `secret_ct` is sealed; `settings` is non-secret JSON.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OAuthAppRow {
    /// The provider id, or `mcp:{issuer}` for an MCP registration.
    pub app: String,
    pub provider: String,
    pub client_id: String,
    pub secret_ct: String,
    pub key_version: i64,
    pub settings: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Credentials connected through this app with its current client id
    /// (listings only; 0 elsewhere).
    pub credentials: i64,
}

/// A sealed app to store.
#[derive(Debug, Clone)]
pub struct AppPut<'a> {
    pub app: &'a str,
    pub provider: &'a str,
    pub client_id: &'a str,
    pub secret_ct: &'a str,
    pub key_version: i64,
    pub settings: &'a str,
    /// When the client secret expires (an app an admin entered).
    pub secret_expires_at: Option<i64>,
    pub actor: &'a str,
    /// Most apps (and registrations) the organization may hold.
    pub limit: i64,
    /// Keep an app already stored under this key (a registration made by a
    /// concurrent flow wins; this one is dropped and the stored one returned).
    pub keep_existing: bool,
}

/// What a delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppDeletion {
    Deleted,
    NotFound,
    /// Credentials connected through it exist (and `force` was not given).
    InUse(i64),
}

const COLUMNS: &str = "app, provider, client_id, secret_ct, key_version, settings, created_by, created_at, updated_at";

/// Credentials connected through app `a` with its current client id.
const IN_USE: &str = "(SELECT COUNT(*) FROM credentials c WHERE c.org_id = a.org_id AND c.oauth_app = a.app \
     AND c.oauth_client_id = a.client_id)";

impl Store {
    /// Creates or replaces an app; `true` when it was created. Serialized per
    /// organization (the limit holds on every replica); `KeyRotated` when the
    /// data key changed since the secret was sealed. Audited
    /// (`oauth_app.put`, with the client id, never the secret).
    pub async fn put_oauth_app(&self, org_id: &OrgId, put: &AppPut<'_>) -> Result<(bool, OAuthAppRow), StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            lock_org(&mut tx, org_id).await?;
            check_key(&mut tx, self.dialect, org_id, put.key_version).await?;
            let t = self.now();
            if put.keep_existing {
                let existing: Option<OAuthAppRow> = sqlx::query_as(&format!(
                    "SELECT {COLUMNS}, {IN_USE} AS credentials FROM oauth_apps a WHERE org_id = $1 AND app = $2"
                ))
                .bind(org_id)
                .bind(put.app)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(row) = existing {
                    return Ok((false, row));
                }
            }
            let replaced = sqlx::query(
                "UPDATE oauth_apps SET provider = $3, client_id = $4, secret_ct = $5, key_version = $6, \
                 settings = $7, updated_at = $8, secret_expires_at = $9 WHERE org_id = $1 AND app = $2",
            )
            .bind(org_id)
            .bind(put.app)
            .bind(put.provider)
            .bind(put.client_id)
            .bind(put.secret_ct)
            .bind(put.key_version)
            .bind(put.settings)
            .bind(t)
            .bind(put.secret_expires_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !replaced {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oauth_apps WHERE org_id = $1")
                    .bind(org_id)
                    .fetch_one(&mut *tx)
                    .await?;
                if count >= put.limit {
                    return Err(StoreError::QuotaExceeded {
                        limit: put.limit,
                        count,
                    });
                }
                sqlx::query(
                    "INSERT INTO oauth_apps (org_id, app, provider, client_id, secret_ct, key_version, settings, \
                     created_by, created_at, updated_at, secret_expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, \
                     $9, $10)",
                )
                .bind(org_id)
                .bind(put.app)
                .bind(put.provider)
                .bind(put.client_id)
                .bind(put.secret_ct)
                .bind(put.key_version)
                .bind(put.settings)
                .bind(put.actor)
                .bind(t)
                .bind(put.secret_expires_at)
                .execute(&mut *tx)
                .await?;
            }
            let event = AuditEvent::for_org(org_id, "oauth_app.put", put.actor)
                .with_detail(serde_json::json!({"app": put.app, "client_id": put.client_id, "created": !replaced}));
            audit::insert(&mut tx, &event, t).await?;
            let row: OAuthAppRow = sqlx::query_as(&format!(
                "SELECT {COLUMNS}, {IN_USE} AS credentials FROM oauth_apps a WHERE org_id = $1 AND app = $2"
            ))
            .bind(org_id)
            .bind(put.app)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((!replaced, row))
        })
        .await
    }

    /// One app of an organization, with its sealed secret.
    pub async fn oauth_app(&self, org_id: &OrgId, app: &str) -> Result<Option<OAuthAppRow>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(&format!(
                "SELECT {COLUMNS}, CAST(0 AS BIGINT) AS credentials FROM oauth_apps WHERE org_id = $1 AND app = $2"
            ))
            .bind(org_id)
            .bind(app)
            .fetch_optional(&self.pool)
            .await?)
        })
        .await
    }

    /// The organization's own apps (not its MCP registrations), by provider,
    /// each with how many credentials it connected.
    pub async fn oauth_apps(&self, org_id: &OrgId) -> Result<Vec<OAuthAppRow>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(&format!(
                "SELECT {COLUMNS}, {IN_USE} AS credentials FROM oauth_apps a \
                 WHERE org_id = $1 AND app NOT LIKE 'mcp:%' ORDER BY app"
            ))
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// Deletes an app, unless credentials connected through it exist and
    /// `force` is false. Audited (`oauth_app.delete`).
    pub async fn delete_oauth_app(
        &self,
        org_id: &OrgId,
        app: &str,
        force: bool,
        actor: &str,
    ) -> Result<AppDeletion, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            // Under the organization's lock: a callback storing a credential
            // through this app either came first (and is counted) or finds
            // the app gone.
            lock_org(&mut tx, org_id).await?;
            let in_use: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT {IN_USE} FROM oauth_apps a WHERE org_id = $1 AND app = $2"
            ))
            .bind(org_id)
            .bind(app)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(in_use) = in_use else {
                return Ok(AppDeletion::NotFound);
            };
            if in_use > 0 && !force {
                return Ok(AppDeletion::InUse(in_use));
            }
            sqlx::query("DELETE FROM oauth_apps WHERE org_id = $1 AND app = $2")
                .bind(org_id)
                .bind(app)
                .execute(&mut *tx)
                .await?;
            let event = AuditEvent::for_org(org_id, "oauth_app.delete", actor)
                .with_detail(serde_json::json!({"app": app, "credentials": in_use}));
            audit::insert(&mut tx, &event, self.now()).await?;
            tx.commit().await?;
            Ok(AppDeletion::Deleted)
        })
        .await
    }

    /// Apps of an organization sealed under a key older than `version`.
    pub async fn apps_below_key(
        &self,
        org_id: &OrgId,
        version: i64,
        after_app: &str,
        limit: i64,
    ) -> Result<Vec<OAuthAppRow>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(&format!(
                "SELECT {COLUMNS}, CAST(0 AS BIGINT) AS credentials FROM oauth_apps \
                 WHERE org_id = $1 AND key_version < $2 AND app > $4 ORDER BY app LIMIT $3"
            ))
            .bind(org_id)
            .bind(version)
            .bind(limit)
            .bind(after_app)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// Re-seals one app's secret under a new data key (rotation), only if its
    /// ciphertext is still the one that was read.
    pub async fn reseal_app(
        &self,
        org_id: &OrgId,
        app: &str,
        old_ct: &str,
        new_ct: &str,
        key_version: i64,
    ) -> Result<bool, StoreError> {
        self.reseal(
            "UPDATE oauth_apps SET secret_ct = $1, key_version = $2 WHERE org_id = $3 AND app = $4 AND secret_ct = $5",
            (org_id, app),
            (old_ct, new_ct),
            key_version,
        )
        .await
    }
}
