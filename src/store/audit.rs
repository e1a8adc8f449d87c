//! Audit events: who did what to which credential (or named secret),
//! written in the same transaction as the change they record.

use sqlx::AnyConnection;

use super::{Store, StoreError};

/// An event to record.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// Organization.
    pub org_id: String,
    /// Credential, when the event concerns one.
    pub credential_id: Option<String>,
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
    pub fn success(org_id: &str, credential_id: &str, action: &'static str, actor: &str) -> Self {
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
    pub fn for_secret(org_id: &str, name: &str, action: &'static str, actor: &str) -> Self {
        Self {
            org_id: org_id.to_owned(),
            credential_id: None,
            action,
            outcome: "success",
            actor: actor.to_owned(),
            detail: Some(serde_json::json!({ "name": name })),
        }
    }

    /// Adds facts to the event.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// A stored event.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    /// Sequence number.
    pub id: i64,
    /// Credential, if any.
    pub credential_id: Option<String>,
    /// What happened.
    pub action: String,
    /// How it ended.
    pub outcome: String,
    /// Who did it.
    pub actor: String,
    /// JSON facts.
    pub detail: Option<String>,
    /// When (unix seconds).
    pub at: i64,
}

/// Writes one event on `conn` (usually inside the change's transaction);
/// returns its id.
pub(crate) async fn insert(conn: &mut AnyConnection, event: &AuditEvent, at: i64) -> Result<i64, sqlx::Error> {
    let row = sqlx::query(
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
    .await?;
    sqlx::Row::try_get(&row, 0)
}

impl Store {
    /// Records an event on its own (for events with no accompanying change).
    pub async fn audit(&self, event: &AuditEvent) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        insert(&mut tx, event, self.now()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records an event on its own; returns its id.
    pub async fn audit_returning_id(&self, event: &AuditEvent) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let id = insert(&mut tx, event, self.now()).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// Replaces an event's detail (a denial's running count).
    pub async fn update_audit_detail(&self, id: i64, detail: &serde_json::Value) -> Result<(), StoreError> {
        self.execute_write(
            sqlx::query("UPDATE audit_events SET detail = $2 WHERE id = $1")
                .bind(id)
                .bind(detail.to_string()),
        )
        .await?;
        Ok(())
    }

    /// Was this credential deleted (is there a `credential.delete` event)?
    pub async fn was_deleted(&self, org_id: &str, credential_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query(
            "SELECT 1 FROM audit_events WHERE org_id = $1 AND credential_id = $2 AND action = 'credential.delete'",
        )
        .bind(org_id)
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }

    /// A credential's events, newest first (at most `limit`).
    pub async fn audit_events(
        &self,
        org_id: &str,
        credential_id: &str,
        limit: i64,
    ) -> Result<Vec<AuditRow>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, credential_id, action, outcome, actor, detail, at FROM audit_events \
             WHERE org_id = $1 AND credential_id = $2 ORDER BY id DESC LIMIT $3",
        )
        .bind(org_id)
        .bind(credential_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }
}
