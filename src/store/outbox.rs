//! The outbox: notifications written in the same transaction as the change
//! they report, then delivered (at least once) by any replica, one holder
//! at a time per event (a lease), and read back by the events API.

use serde_json::{json, Value};

use crate::ids::{CredentialId, OrgId};

use super::{Dialect, Store, StoreError};

/// A notification to write beside a change.
#[derive(Debug, Clone)]
pub struct Notification {
    /// `credential.created`, `credential.deleted`, …
    pub kind: &'static str,
    pub org_id: OrgId,
    /// `None`: about the organization (its OAuth app).
    pub credential_id: Option<CredentialId>,
    pub provider: String,
    /// Extra facts (never a secret).
    pub detail: Value,
}

impl Notification {
    /// A notification about one credential.
    pub fn new(
        kind: &'static str,
        org_id: &OrgId,
        credential_id: &CredentialId,
        provider: &str,
        detail: Value,
    ) -> Self {
        Self {
            kind,
            org_id: org_id.to_owned(),
            credential_id: Some(credential_id.to_owned()),
            provider: provider.to_owned(),
            detail,
        }
    }

    /// A notification about the organization's `provider` app.
    pub fn for_org(kind: &'static str, org_id: &OrgId, provider: &str, detail: Value) -> Self {
        Self {
            kind,
            org_id: org_id.to_owned(),
            credential_id: None,
            provider: provider.to_owned(),
            detail,
        }
    }
}

/// A stored notification and its delivery state.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    /// Sequence number (the events API's cursor).
    pub id: i64,
    /// Stable id, sent as `webhook-id` on every attempt.
    pub event_id: String,
    pub org_id: OrgId,
    pub kind: String,
    pub credential_id: Option<CredentialId>,
    /// The JSON body delivered (an object, parsed here once).
    pub payload: Value,
    pub created_at: i64,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub delivered_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub last_error: Option<String>,
}

const COLUMNS: &str = "id, event_id, org_id, kind, credential_id, payload, created_at, attempts, next_attempt_at, \
    delivered_at, failed_at, last_error";

/// One row as [`COLUMNS`] reads it.
#[derive(sqlx::FromRow)]
struct EventColumns {
    id: i64,
    event_id: String,
    org_id: OrgId,
    kind: String,
    credential_id: Option<CredentialId>,
    payload: String,
    created_at: i64,
    attempts: i64,
    next_attempt_at: Option<i64>,
    delivered_at: Option<i64>,
    failed_at: Option<i64>,
    last_error: Option<String>,
}

/// One row, typed; a payload that is not a JSON object is
/// [`StoreError::Corrupt`] (logged), never an empty body.
impl TryFrom<EventColumns> for OutboxEvent {
    type Error = StoreError;

    fn try_from(r: EventColumns) -> Result<Self, StoreError> {
        let payload = match serde_json::from_str(&r.payload) {
            Ok(payload @ Value::Object(_)) => payload,
            _ => {
                tracing::error!(event = r.id, column = "payload", "a stored outbox column is malformed");
                return Err(StoreError::Corrupt {
                    id: r.id.to_string(),
                    column: "payload",
                });
            }
        };
        Ok(Self {
            id: r.id,
            event_id: r.event_id,
            org_id: r.org_id,
            kind: r.kind,
            credential_id: r.credential_id,
            payload,
            created_at: r.created_at,
            attempts: r.attempts,
            next_attempt_at: r.next_attempt_at,
            delivered_at: r.delivered_at,
            failed_at: r.failed_at,
            last_error: r.last_error,
        })
    }
}

/// Writes one notification on `conn` (inside the change's transaction).
pub(crate) async fn insert(conn: &mut sqlx::AnyConnection, n: &Notification, at: i64) -> Result<(), sqlx::Error> {
    insert_many(conn, &[n], at).await
}

/// Notifications per statement of [`insert_many`] (seven values each).
const PER_STATEMENT: usize = 200;

/// Writes notifications on `conn`, a statement per 200.
pub(crate) async fn insert_many(
    conn: &mut sqlx::AnyConnection,
    ns: &[&Notification],
    at: i64,
) -> Result<(), sqlx::Error> {
    for chunk in ns.chunks(PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO outbox (event_id, org_id, kind, credential_id, payload, created_at, next_attempt_at) VALUES {}",
            super::values(chunk.len(), 7)
        );
        let mut query = sqlx::query(&sql);
        let mut event_ids = Vec::with_capacity(chunk.len());
        for n in chunk {
            let event_id = uuid::Uuid::new_v4().to_string();
            event_ids.push(event_id.clone());
            let payload = json!({
                "id": event_id,
                "type": n.kind,
                "org_id": n.org_id,
                "credential_id": n.credential_id,
                "provider": n.provider,
                "at": chrono::DateTime::from_timestamp(at, 0).unwrap_or_default(),
                "detail": n.detail,
            });
            query = query
                .bind(event_id)
                .bind(&n.org_id)
                .bind(n.kind)
                .bind(&n.credential_id)
                .bind(payload.to_string())
                .bind(at)
                .bind(at);
        }
        query.execute(&mut *conn).await?;
        super::webhook_deliveries::fan_out(conn, &event_ids).await?;
    }
    Ok(())
}

impl Store {
    /// Leases up to `limit` events due for delivery to `owner` until `until`.
    /// An event whose stored payload is malformed is given up on (failed,
    /// logged) rather than claimed again and again.
    pub async fn claim_events(&self, owner: &str, limit: i64, until: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        self.timed(async move {
            let lock = match self.dialect {
                Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
                Dialect::Sqlite => "",
            };
            let mut tx = self.begin_write().await?;
            let rows: Vec<EventColumns> = sqlx::query_as(&format!(
                "UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE id IN (\
               SELECT id FROM outbox WHERE next_attempt_at IS NOT NULL AND next_attempt_at <= $3 \
               AND (lease_until IS NULL OR lease_until < $3) ORDER BY next_attempt_at, id LIMIT $4 {lock}) \
             RETURNING {COLUMNS}"
            ))
            .bind(owner)
            .bind(until)
            .bind(self.now())
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let mut events = Vec::with_capacity(rows.len());
            for row in rows {
                let id = row.id;
                match OutboxEvent::try_from(row) {
                    Ok(e) => events.push(e),
                    Err(StoreError::Corrupt { .. }) => {
                        sqlx::query(
                            "UPDATE outbox SET next_attempt_at = NULL, failed_at = $2, \
                         last_error = 'the stored notification is malformed', lease_owner = NULL, lease_until = NULL \
                         WHERE id = $1",
                        )
                        .bind(id)
                        .bind(self.now())
                        .execute(&mut *tx)
                        .await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            tx.commit().await?;
            events.sort_by_key(|e| e.id);
            Ok(events)
        })
        .await
    }

    /// Records a delivery attempt by the lease holder: delivered, or failed
    /// with the next attempt at `next` (`None`: given up).
    pub async fn record_delivery(
        &self,
        id: i64,
        owner: &str,
        outcome: Result<(), (&str, Option<i64>)>,
    ) -> Result<(), StoreError> {
        self.timed(async move {
            let t = self.now();
            let query = match outcome {
                Ok(()) => sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, delivered_at = $3, next_attempt_at = NULL, \
                 last_error = NULL, lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(t),
                Err((error, next)) => sqlx::query(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $3, last_error = $4, \
                 failed_at = CASE WHEN $3 IS NULL THEN $5 ELSE NULL END, \
                 lease_owner = NULL, lease_until = NULL WHERE id = $1 AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(next)
                .bind(error.to_owned())
                .bind(t),
            };
            self.execute_write(query).await?;
            Ok(())
        })
        .await
    }

    /// An organization's events after sequence number `after`, oldest first.
    pub async fn events_after(&self, org_id: &OrgId, after: i64, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        self.timed(async move {
            let rows: Vec<EventColumns> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM outbox WHERE org_id = $1 AND id > $2 ORDER BY id LIMIT $3"
            ))
            .bind(org_id)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter().map(OutboxEvent::try_from).collect()
        })
        .await
    }

    /// Queues every event created at or after `since` for delivery again:
    /// to the operator's endpoint, and to each organization endpoint that
    /// had it (its deliveries, in their order). Returns how many events
    /// and how many endpoint deliveries.
    pub async fn replay_events(&self, since: i64, org: Option<&OrgId>) -> Result<(u64, u64), StoreError> {
        self.timed(async move {
            let org = org.map_or("", |o| o.as_str());
            let now = self.now();
            let mut tx = self.begin_write().await?;
            let events = sqlx::query(
                "UPDATE outbox SET next_attempt_at = $2, delivered_at = NULL, failed_at = NULL, attempts = 0, \
                 last_error = NULL, lease_owner = NULL, lease_until = NULL \
                 WHERE created_at >= $1 AND ($3 = '' OR org_id = $3)",
            )
            .bind(since)
            .bind(now)
            .bind(org)
            .execute(&mut *tx)
            .await?;
            let deliveries = sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = $2, delivered_at = NULL, failed_at = NULL, \
                 attempts = 0, last_status = NULL, last_error = NULL, lease_owner = NULL, lease_until = NULL \
                 WHERE created_at >= $1 AND ($3 = '' OR org_id = $3)",
            )
            .bind(since)
            .bind(now)
            .bind(org)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((events.rows_affected(), deliveries.rows_affected()))
        })
        .await
    }

    /// Deletes events, and endpoints' deliveries, created before `before`
    /// (retention); returns how many events went.
    pub async fn purge_events(&self, before: i64) -> Result<u64, StoreError> {
        self.execute_write(sqlx::query("DELETE FROM webhook_deliveries WHERE created_at < $1").bind(before))
            .await?;
        self.execute_write(sqlx::query("DELETE FROM outbox WHERE created_at < $1").bind(before))
            .await
    }
}
