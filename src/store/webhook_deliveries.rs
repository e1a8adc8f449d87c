//! Webhook endpoints' deliveries (migration 0024). A notification becomes
//! one delivery per matching endpoint in the transaction that writes it
//! ([`fan_out`]); deliveries go out in id order per endpoint, at least
//! once, one holder at a time (a lease), and are kept for the delivery log
//! as long as events.

use super::webhooks::EndpointRow;
use super::{Dialect, Store, StoreError};
use crate::ids::{OrgId, WebhookId};

/// One notification to one endpoint, and where its delivery stands.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: i64,
    pub endpoint_id: WebhookId,
    /// The notification's id (`webhook-id`, the same on every attempt).
    pub event_id: String,
    pub kind: String,
    /// The body sent (JSON text, never a secret).
    pub payload: String,
    pub created_at: i64,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub failed_at: Option<i64>,
    /// The endpoint's last HTTP status (`None`: never answered).
    pub last_status: Option<i64>,
    pub last_error: Option<String>,
}

/// A leased delivery with what sending it needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueDelivery {
    #[sqlx(flatten)]
    pub delivery: DeliveryRow,
    pub org_id: OrgId,
    pub url: String,
    pub secret_ct: String,
    pub key_version: i64,
    pub previous_until: Option<i64>,
}

/// How an attempt ended, as the holder records it.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    /// The endpoint's HTTP status, if it answered.
    pub status: Option<i64>,
    /// `None`: delivered; else why not, and the next attempt (`None`: given up).
    pub failure: Option<(&'a str, Option<i64>)>,
}

/// A delivery's columns, as an `INSERT … RETURNING` names them.
const RETURNED: &str = "id, endpoint_id, event_id, kind, payload, created_at, attempts, next_attempt_at, \
     delivered_at, failed_at, last_status, last_error";

/// The same, of `webhook_deliveries d`.
const DELIVERY_COLUMNS: &str = "d.id, d.endpoint_id, d.event_id, d.kind, d.payload, d.created_at, d.attempts, \
     d.next_attempt_at, d.delivered_at, d.failed_at, d.last_status, d.last_error";

/// Writes one delivery per endpoint that takes them for each of the
/// notifications `event_ids` just written on `conn` (inside their
/// transaction), in the notifications' order.
pub(crate) async fn fan_out(conn: &mut sqlx::AnyConnection, event_ids: &[String]) -> Result<(), sqlx::Error> {
    if event_ids.is_empty() {
        return Ok(());
    }
    let marks: Vec<String> = (1..=event_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "INSERT INTO webhook_deliveries (endpoint_id, org_id, event_id, kind, payload, created_at, next_attempt_at) \
         SELECT e.id, o.org_id, o.event_id, o.kind, o.payload, o.created_at, o.created_at \
         FROM outbox o JOIN webhook_endpoints e ON e.org_id = o.org_id \
         AND (e.events = '' OR e.events LIKE '%,' || o.kind || ',%') \
         WHERE o.event_id IN ({}) ORDER BY o.id, e.id",
        marks.join(", ")
    );
    let mut query = sqlx::query(&sql);
    for id in event_ids {
        query = query.bind(id);
    }
    query.execute(&mut *conn).await?;
    Ok(())
}

impl Store {
    /// Is any delivery due? A read, so that idle dispatchers on every
    /// replica cost no write transaction.
    pub async fn deliveries_due(&self) -> Result<bool, StoreError> {
        self.timed(async move {
            let due: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM webhook_deliveries WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $1 LIMIT 1",
            )
            .bind(self.now())
            .fetch_optional(&self.pool)
            .await?;
            Ok(due.is_some())
        })
        .await
    }

    /// Leases up to `limit` deliveries due to `owner` until `until`: of each
    /// endpoint only its oldest delivery still pending, so an endpoint gets
    /// its notifications one at a time, in order; none of an organization
    /// being deleted (its keys are gone: they could not be signed).
    pub async fn claim_deliveries(&self, owner: &str, limit: i64, until: i64) -> Result<Vec<DueDelivery>, StoreError> {
        self.timed(async move {
            let lock = match self.dialect {
                Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
                Dialect::Sqlite => "",
            };
            let mut tx = self.begin_write().await?;
            let ids: Vec<i64> = sqlx::query_scalar(&format!(
                "UPDATE webhook_deliveries SET lease_owner = $1, lease_until = $2 WHERE id IN (\
                 SELECT d.id FROM webhook_deliveries d WHERE d.next_attempt_at IS NOT NULL \
                 AND d.next_attempt_at <= $3 AND (d.lease_until IS NULL OR d.lease_until < $3) \
                 AND NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = d.org_id AND o.deleted_at IS NOT NULL) \
                 AND NOT EXISTS (SELECT 1 FROM webhook_deliveries p WHERE p.endpoint_id = d.endpoint_id \
                 AND p.next_attempt_at IS NOT NULL AND p.id < d.id) \
                 ORDER BY d.next_attempt_at, d.id LIMIT $4 {lock}) RETURNING id"
            ))
            .bind(owner)
            .bind(until)
            .bind(self.now())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let mut due = Vec::with_capacity(ids.len());
            for id in ids {
                let row: DueDelivery = sqlx::query_as(&format!(
                    "SELECT {DELIVERY_COLUMNS}, e.org_id, e.url, e.secret_ct, e.key_version, e.previous_until \
                     FROM webhook_deliveries d JOIN webhook_endpoints e ON e.id = d.endpoint_id WHERE d.id = $1"
                ))
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                due.push(row);
            }
            tx.commit().await?;
            due.sort_by_key(|d| d.delivery.id);
            Ok(due)
        })
        .await
    }

    /// Writes a test delivery of `endpoint`, already leased to `owner`
    /// (never claimed by the dispatcher: it is sent at once).
    pub async fn insert_test_delivery(
        &self,
        endpoint: &EndpointRow,
        (event_id, payload): (&str, &str),
        (owner, until): (&str, i64),
    ) -> Result<DeliveryRow, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let row = sqlx::query_as(&format!(
                "INSERT INTO webhook_deliveries (endpoint_id, org_id, event_id, kind, payload, created_at, \
                 lease_owner, lease_until) VALUES ($1, $2, $3, 'webhook.test', $4, $5, $6, $7) RETURNING {RETURNED}"
            ))
            .bind(&endpoint.id)
            .bind(&endpoint.org_id)
            .bind(event_id)
            .bind(payload)
            .bind(self.now())
            .bind(owner)
            .bind(until)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(row)
        })
        .await
    }

    /// Records an attempt by the lease holder.
    pub async fn record_webhook_attempt(&self, id: i64, owner: &str, attempt: Attempt<'_>) -> Result<(), StoreError> {
        self.timed(async move {
            let t = self.now();
            let query = match attempt.failure {
                None => sqlx::query(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, delivered_at = $3, next_attempt_at = NULL, \
                     last_status = $4, last_error = NULL, lease_owner = NULL, lease_until = NULL \
                     WHERE id = $1 AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(t)
                .bind(attempt.status),
                Some((error, next)) => sqlx::query(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, next_attempt_at = $3, last_error = $4, \
                     failed_at = CASE WHEN $3 IS NULL THEN $5 ELSE NULL END, last_status = $6, \
                     lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(next)
                .bind(error.to_owned())
                .bind(t)
                .bind(attempt.status),
            };
            self.execute_write(query).await?;
            Ok(())
        })
        .await
    }

    /// An endpoint's deliveries, newest first, at most `limit`.
    pub async fn webhook_deliveries(
        &self,
        org_id: &OrgId,
        id: &WebhookId,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d \
                 WHERE d.endpoint_id = $1 AND d.org_id = $2 ORDER BY d.id DESC LIMIT $3"
            ))
            .bind(id)
            .bind(org_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// One delivery of the organization.
    pub async fn webhook_delivery(&self, org_id: &OrgId, id: i64) -> Result<Option<DeliveryRow>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d WHERE d.id = $1 AND d.org_id = $2"
            ))
            .bind(id)
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await?)
        })
        .await
    }
}
