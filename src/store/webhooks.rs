//! An organization's webhook endpoints (migration 0024). An endpoint's
//! signing secrets are sealed, like a named secret, under the
//! organization's current data key; its deliveries are in
//! `webhook_deliveries`.

use super::audit::{self, AuditEvent};
use super::quota::lock_org;
use super::{check_key, Store, StoreError};
use crate::ids::{OrgId, WebhookId};

/// An endpoint as stored. `secret_ct` is sealed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRow {
    pub id: WebhookId,
    pub org_id: OrgId,
    pub url: String,
    /// `,type,type,`, or empty for every type.
    pub events: String,
    pub description: String,
    pub secret_ct: String,
    pub key_version: i64,
    /// Until when the previous secret (sealed beside the current one) signs too.
    pub previous_until: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
}

/// A sealed endpoint to store.
#[derive(Debug, Clone)]
pub struct EndpointPut<'a> {
    pub id: &'a WebhookId,
    pub url: &'a str,
    pub events: &'a str,
    pub description: &'a str,
    pub secret_ct: &'a str,
    pub key_version: i64,
    pub actor: &'a str,
    /// Most endpoints the organization may hold.
    pub limit: i64,
}

const ENDPOINT_COLUMNS: &str =
    "id, org_id, url, events, description, secret_ct, key_version, previous_until, created_by, created_at";

impl Store {
    /// Stores a new endpoint. Serialized per organization (the limit holds
    /// on every replica); `KeyRotated` when the data key changed since the
    /// secret was sealed. Audited (`webhook.create`, never the secret).
    pub async fn create_webhook(&self, org_id: &OrgId, put: &EndpointPut<'_>) -> Result<EndpointRow, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            lock_org(&mut tx, org_id).await?;
            check_key(&mut tx, self.dialect, org_id, put.key_version).await?;
            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_endpoints WHERE org_id = $1")
                .bind(org_id)
                .fetch_one(&mut *tx)
                .await?;
            if count >= put.limit {
                return Err(StoreError::QuotaExceeded {
                    limit: put.limit,
                    count,
                });
            }
            let t = self.now();
            sqlx::query(
                "INSERT INTO webhook_endpoints (id, org_id, url, events, description, secret_ct, key_version, \
                 created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(put.id)
            .bind(org_id)
            .bind(put.url)
            .bind(put.events)
            .bind(put.description)
            .bind(put.secret_ct)
            .bind(put.key_version)
            .bind(put.actor)
            .bind(t)
            .execute(&mut *tx)
            .await?;
            let event = AuditEvent::for_org(org_id, "webhook.create", put.actor)
                .with_detail(serde_json::json!({"webhook_id": put.id, "url": put.url}));
            audit::insert(&mut tx, &event, t).await?;
            let row = sqlx::query_as(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1"
            ))
            .bind(put.id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(row)
        })
        .await
    }

    /// The organization's endpoints, oldest first.
    pub async fn webhooks(&self, org_id: &OrgId) -> Result<Vec<EndpointRow>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE org_id = $1 ORDER BY created_at, id"
            ))
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// One endpoint of the organization.
    pub async fn webhook(&self, org_id: &OrgId, id: &WebhookId) -> Result<Option<EndpointRow>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE org_id = $1 AND id = $2"
            ))
            .bind(org_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?)
        })
        .await
    }

    /// Deletes an endpoint and its deliveries; `false` when the organization
    /// has no such endpoint. Audited (`webhook.delete`).
    pub async fn delete_webhook(&self, org_id: &OrgId, id: &WebhookId, actor: &str) -> Result<bool, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let found: Option<String> =
                sqlx::query_scalar("SELECT url FROM webhook_endpoints WHERE org_id = $1 AND id = $2")
                    .bind(org_id)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(url) = found else { return Ok(false) };
            sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let event = AuditEvent::for_org(org_id, "webhook.delete", actor)
                .with_detail(serde_json::json!({"webhook_id": id, "url": url}));
            audit::insert(&mut tx, &event, self.now()).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Sets an endpoint's URL, types (`events` as stored) and description,
    /// each when given; `false` when the organization has no such
    /// endpoint. Audited (`webhook.update`, with what changed).
    pub async fn update_webhook(
        &self,
        org_id: &OrgId,
        id: &WebhookId,
        (url, events, description): (Option<&str>, Option<&str>, Option<&str>),
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query(
                "UPDATE webhook_endpoints SET url = COALESCE($3, url), events = COALESCE($4, events), \
                 description = COALESCE($5, description) WHERE org_id = $1 AND id = $2",
            )
            .bind(org_id)
            .bind(id)
            .bind(url)
            .bind(events)
            .bind(description)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            let changed: Vec<&str> = [("url", url), ("events", events), ("description", description)]
                .into_iter()
                .filter_map(|(name, value)| value.map(|_| name))
                .collect();
            let event = AuditEvent::for_org(org_id, "webhook.update", actor)
                .with_detail(serde_json::json!({"webhook_id": id, "url": url, "changed": changed}));
            audit::insert(&mut tx, &event, self.now()).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// Replaces an endpoint's sealed secrets (a rotation), only if its
    /// ciphertext is still `old_ct`; the previous secret signs too until
    /// `previous_until`. `KeyRotated` when the data key changed since
    /// sealing. Audited (`webhook.rotate`).
    pub async fn rotate_webhook(
        &self,
        org_id: &OrgId,
        id: &WebhookId,
        (old_ct, new_ct): (&str, &str),
        (key_version, previous_until): (i64, i64),
        actor: &str,
    ) -> Result<bool, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            check_key(&mut tx, self.dialect, org_id, key_version).await?;
            let done = sqlx::query(
                "UPDATE webhook_endpoints SET secret_ct = $1, key_version = $2, previous_until = $3 \
                 WHERE org_id = $4 AND id = $5 AND secret_ct = $6",
            )
            .bind(new_ct)
            .bind(key_version)
            .bind(previous_until)
            .bind(org_id)
            .bind(id)
            .bind(old_ct)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if done {
                let event = AuditEvent::for_org(org_id, "webhook.rotate", actor)
                    .with_detail(serde_json::json!({"webhook_id": id}));
                audit::insert(&mut tx, &event, self.now()).await?;
            }
            tx.commit().await?;
            Ok(done)
        })
        .await
    }

    /// Endpoints of an organization sealed under a key older than `version`.
    pub async fn webhooks_below_key(
        &self,
        org_id: &OrgId,
        version: i64,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<EndpointRow>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(&format!(
                "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints \
                 WHERE org_id = $1 AND key_version < $2 AND id > $4 ORDER BY id LIMIT $3"
            ))
            .bind(org_id)
            .bind(version)
            .bind(limit)
            .bind(after_id)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// Re-seals one endpoint's secrets under a new data key (rotation), only
    /// if its ciphertext is still the one that was read.
    pub async fn reseal_webhook(
        &self,
        org_id: &OrgId,
        id: &WebhookId,
        old_ct: &str,
        new_ct: &str,
        key_version: i64,
    ) -> Result<bool, StoreError> {
        self.reseal(
            "UPDATE webhook_endpoints SET secret_ct = $1, key_version = $2 WHERE org_id = $3 AND id = $4 \
             AND secret_ct = $5",
            (org_id, id.as_str()),
            (old_ct, new_ct),
            key_version,
        )
        .await
    }
}
