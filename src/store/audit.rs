//! Audit events: who did what to which credential (or named secret),
//! written in the same transaction as the change they record.

use sqlx::AnyConnection;

use crate::ids::{CredentialId, OrgId};

use super::{Dialect, Store, StoreError};

/// The workflow and run a use was for (free strings, at most 200 characters).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub workflow_id: Option<String>,
    pub run_id: Option<String>,
}

/// An event to record.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Organization.
    pub org_id: OrgId,
    /// Credential, when the event concerns one.
    pub credential_id: Option<CredentialId>,
    /// `credential.create`, `credential.resolve`, `access.denied`, …
    pub action: &'static str,
    /// `success`, `denied`, `failure`.
    pub outcome: &'static str,
    /// `api_key:{id}` or `user:{id}`.
    pub actor: String,
    /// Extra facts (never a secret).
    pub detail: Option<serde_json::Value>,
}

impl AuditEvent {
    /// A successful action by `actor` on one credential.
    pub fn success(org_id: &OrgId, credential_id: &CredentialId, action: &'static str, actor: &str) -> Self {
        Self {
            org_id: org_id.to_owned(),
            credential_id: Some(credential_id.to_owned()),
            action,
            outcome: "success",
            actor: actor.to_owned(),
            detail: None,
        }
    }

    /// A successful action by `actor` on one named secret: no credential,
    /// the name in `detail`.
    pub fn for_secret(org_id: &OrgId, name: &str, action: &'static str, actor: &str) -> Self {
        Self::for_org(org_id, action, actor).with_detail(serde_json::json!({ "name": name }))
    }

    /// A successful action by `actor` on the organization itself (no
    /// credential).
    pub fn for_org(org_id: &OrgId, action: &'static str, actor: &str) -> Self {
        Self {
            org_id: org_id.to_owned(),
            credential_id: None,
            action,
            outcome: "success",
            actor: actor.to_owned(),
            detail: None,
        }
    }

    /// Adds facts to the event.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// A stored event, its `detail` parsed (a malformed one is
/// [`StoreError::Corrupt`], never silently dropped).
#[derive(Debug, Clone)]
pub struct AuditRow {
    /// Sequence number.
    pub id: i64,
    /// Credential, if any.
    pub credential_id: Option<CredentialId>,
    /// What happened.
    pub action: String,
    /// How it ended.
    pub outcome: String,
    /// Who did it.
    pub actor: String,
    /// Facts.
    pub detail: Option<serde_json::Value>,
    /// When (unix seconds).
    pub at: i64,
}

/// The event as the database returns it.
#[derive(sqlx::FromRow)]
struct RawAuditRow {
    id: i64,
    credential_id: Option<CredentialId>,
    action: String,
    outcome: String,
    actor: String,
    detail: Option<String>,
    at: i64,
}

impl TryFrom<RawAuditRow> for AuditRow {
    type Error = StoreError;

    fn try_from(r: RawAuditRow) -> Result<Self, StoreError> {
        let detail = match r.detail.as_deref().map(serde_json::from_str) {
            None => None,
            Some(Ok(value)) => Some(value),
            Some(Err(_)) => {
                tracing::error!(
                    audit_event = r.id,
                    column = "detail",
                    "a stored audit event column is malformed"
                );
                return Err(StoreError::Corrupt {
                    id: format!("audit event {}", r.id),
                    column: "detail",
                });
            }
        };
        Ok(Self {
            id: r.id,
            credential_id: r.credential_id,
            action: r.action,
            outcome: r.outcome,
            actor: r.actor,
            detail,
            at: r.at,
        })
    }
}

/// Writes one event on `conn` (usually inside the change's transaction);
/// returns its id.
pub(crate) async fn insert(conn: &mut AnyConnection, event: &AuditEvent, at: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "INSERT INTO audit_events (org_id, credential_id, action, outcome, actor, detail, at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&event.org_id)
    .bind(&event.credential_id)
    .bind(event.action)
    .bind(event.outcome)
    .bind(&event.actor)
    .bind(event.detail.as_ref().map(|d| d.to_string()))
    .bind(at)
    .fetch_one(conn)
    .await
}

/// Events per statement of [`insert_many`] (ten values each at most, well
/// under SQLite's limit).
const EVENTS_PER_STATEMENT: usize = 200;

/// Writes many events on `conn`, a statement per 200: each with the
/// workflow and run it was for, if any.
pub(crate) async fn insert_many(
    conn: &mut AnyConnection,
    events: &[(&AuditEvent, Option<&Usage>)],
    at: i64,
) -> Result<(), sqlx::Error> {
    insert_rows(conn, events, None, at).await
}

/// [`insert_many`], each event with its id given (SQLite, inside a write
/// transaction that chose the ids).
pub(crate) async fn insert_numbered(
    conn: &mut AnyConnection,
    events: &[(i64, &AuditEvent, &Usage)],
    at: i64,
) -> Result<(), sqlx::Error> {
    let ids: Vec<i64> = events.iter().map(|(id, _, _)| *id).collect();
    let rows: Vec<_> = events.iter().map(|(_, e, u)| (*e, Some(*u))).collect();
    insert_rows(conn, &rows, Some(&ids), at).await
}

async fn insert_rows(
    conn: &mut AnyConnection,
    events: &[(&AuditEvent, Option<&Usage>)],
    ids: Option<&[i64]>,
    at: i64,
) -> Result<(), sqlx::Error> {
    let (id_column, width) = if ids.is_some() { ("id, ", 10) } else { ("", 9) };
    for (c, chunk) in events.chunks(EVENTS_PER_STATEMENT).enumerate() {
        let sql = format!(
            "INSERT INTO audit_events ({id_column}org_id, credential_id, action, outcome, actor, detail, at, \
             workflow_id, run_id) VALUES {}",
            super::values(chunk.len(), width)
        );
        let mut query = sqlx::query(&sql);
        for (i, (event, usage)) in chunk.iter().enumerate() {
            if let Some(ids) = ids {
                query = query.bind(ids[c * EVENTS_PER_STATEMENT + i]);
            }
            query = query
                .bind(&event.org_id)
                .bind(event.credential_id.as_deref())
                .bind(event.action)
                .bind(event.outcome)
                .bind(&event.actor)
                .bind(event.detail.as_ref().map(ToString::to_string))
                .bind(at)
                .bind(usage.and_then(|u| u.workflow_id.as_deref()))
                .bind(usage.and_then(|u| u.run_id.as_deref()));
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

impl Store {
    /// Records an event on its own (for events with no accompanying change).
    pub async fn audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            insert(&mut tx, event, self.now()).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Records `event` once per `coalesce_key`: the first time as a new row
    /// (its detail's `count` 1), every later time by raising that row's
    /// `count` by one, in the same single statement, so however many arrive
    /// at once (on however many replicas) each is counted exactly once.
    pub async fn audit_counted(&self, event: &AuditEvent, coalesce_key: &str) -> Result<(), StoreError> {
        self.timed(async move {
            let raised = match self.dialect {
                Dialect::Sqlite => {
                    "json_set(audit_events.detail, '$.count', \
                 COALESCE(json_extract(audit_events.detail, '$.count'), 1) + 1)"
                }
                Dialect::Postgres => {
                    "jsonb_set(audit_events.detail::jsonb, '{count}', \
                 to_jsonb(COALESCE((audit_events.detail::jsonb ->> 'count')::bigint, 1) + 1))::text"
                }
            };
            let sql = format!(
                "INSERT INTO audit_events (org_id, credential_id, action, outcome, actor, detail, at, coalesce_key) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (coalesce_key) WHERE coalesce_key IS NOT NULL DO UPDATE SET detail = {raised}"
            );
            self.execute_write(
                sqlx::query(&sql)
                    .bind(&event.org_id)
                    .bind(&event.credential_id)
                    .bind(event.action)
                    .bind(event.outcome)
                    .bind(&event.actor)
                    .bind(event.detail.as_ref().map(|d| d.to_string()))
                    .bind(self.now())
                    .bind(coalesce_key),
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// Deletes up to `batch` of the oldest audit events (by id) that were
    /// written before `before`, with the gateway calls' outcomes kept beside
    /// them, in one short transaction; returns how many events went (fewer
    /// than `batch`: none is left, or an event written a moment out of order
    /// holds the older ones behind it back until it is old enough too).
    pub async fn purge_audit_events(&self, before: i64, batch: i64) -> Result<u64, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let gone = match self.dialect {
                // One statement: the outcomes go with exactly the events
                // that went, whatever another purge took meanwhile.
                Dialect::Postgres => {
                    sqlx::query_scalar::<_, i64>(
                        "WITH gone AS (DELETE FROM audit_events WHERE at < $1 \
                             AND id IN (SELECT id FROM audit_events ORDER BY id LIMIT $2) RETURNING id), \
                         outcomes AS (DELETE FROM use_outcomes WHERE event_id IN (SELECT id FROM gone)) \
                         SELECT COUNT(*) FROM gone",
                    )
                    .bind(before)
                    .bind(batch)
                    .fetch_one(&mut *tx)
                    .await?
                }
                // The write lock is held: both statements see the same events.
                Dialect::Sqlite => {
                    let oldest = "SELECT id FROM audit_events WHERE at < $1 \
                                  AND id IN (SELECT id FROM audit_events ORDER BY id LIMIT $2)";
                    sqlx::query(&format!("DELETE FROM use_outcomes WHERE event_id IN ({oldest})"))
                        .bind(before)
                        .bind(batch)
                        .execute(&mut *tx)
                        .await?;
                    let gone = sqlx::query(&format!("DELETE FROM audit_events WHERE id IN ({oldest})"))
                        .bind(before)
                        .bind(batch)
                        .execute(&mut *tx)
                        .await?;
                    i64::try_from(gone.rows_affected()).unwrap_or(i64::MAX)
                }
            };
            tx.commit().await?;
            Ok(u64::try_from(gone).unwrap_or(0))
        })
        .await
    }

    /// Was this credential deleted (is there a `credential.delete` event)?
    pub async fn was_deleted(&self, org_id: &OrgId, credential_id: &CredentialId) -> Result<bool, StoreError> {
        self.timed(async move {
            let row = sqlx::query(
                "SELECT 1 FROM audit_events WHERE org_id = $1 AND credential_id = $2 AND action = 'credential.delete'",
            )
            .bind(org_id)
            .bind(credential_id)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.is_some())
        })
        .await
    }

    /// A credential's events, newest first (at most `limit`); a gateway
    /// call's with its outcome, once written.
    pub async fn audit_events(
        &self,
        org_id: &OrgId,
        credential_id: &CredentialId,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        self.timed(async move {
            let rows: Vec<RawAuditRow> = sqlx::query_as(
                "SELECT e.id, e.credential_id, e.action, COALESCE(o.outcome, e.outcome) AS outcome, e.actor, \
                 COALESCE(o.detail, e.detail) AS detail, e.at \
             FROM audit_events e LEFT JOIN use_outcomes o ON o.event_id = e.id \
             WHERE e.org_id = $1 AND e.credential_id = $2 ORDER BY e.id DESC LIMIT $3",
            )
            .bind(org_id)
            .bind(credential_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter().map(AuditRow::try_from).collect()
        })
        .await
    }
}
