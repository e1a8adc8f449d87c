//! Writing many uses (resolves) in one transaction: the group commit behind
//! `crate::group_commit::UseLog`. Each use adds its audit event and sets
//! its credential's `last_used_at` (to the minute); all of a batch commit
//! together or not at all. On Postgres a batch is one statement (one round
//! trip, one statement shape whatever the batch's size); on SQLite, whose
//! statements cost no round trip, a transaction of two per 200 uses.

use serde::Serialize;

use crate::ids::{CredentialId, OrgId};

use super::audit::Usage;
use super::audit::{self, AuditEvent};
use super::{Dialect, Store, StoreError};

/// One use to record.
#[derive(Debug, Clone)]
pub struct UseRecord {
    /// The audit event (its `credential_id` is set).
    pub event: AuditEvent,
    pub usage: Usage,
    /// Names the event for [`Store::record_outcomes`] (a gateway call,
    /// whose outcome is known only once the service has answered).
    pub key: Option<String>,
}

/// What became of a recorded use: the service's status (`None`: no
/// answer) or what went wrong, and how long it took.
#[derive(Debug, Clone)]
pub struct UseOutcome {
    /// The use's [`UseRecord::key`].
    pub key: String,
    pub status: Option<u16>,
    /// `unreachable`, `timeout`, `egress_denied`, `body_too_large`.
    pub error: Option<&'static str>,
    pub latency_ms: u64,
}

impl UseOutcome {
    /// `success` for a 1xx to 3xx answer, else `failure`.
    fn outcome(&self) -> &'static str {
        match self.status {
            Some(s) if s < 400 => "success",
            _ => "failure",
        }
    }

    /// The facts added to the event's detail.
    fn facts(&self) -> String {
        serde_json::json!({"status": self.status, "latency_ms": self.latency_ms, "error": self.error}).to_string()
    }
}

/// Uses per statement (SQLite).
const CHUNK: usize = 200;

/// A batch of uses on Postgres, in one statement: the uses come as one JSON
/// array (`$1`); the credentials' `last_used_at` is set in id order (the
/// order every batch, on every replica, locks them in), and the events are
/// inserted, all in the statement's own transaction.
const RECORD_USES_POSTGRES: &str = "WITH u AS (\
        SELECT * FROM json_to_recordset(CAST($1 AS json)) AS x(org_id TEXT, credential_id TEXT, action TEXT, \
        outcome TEXT, actor TEXT, detail TEXT, workflow_id TEXT, run_id TEXT, coalesce_key TEXT)), \
    touched AS (UPDATE credentials c SET last_used_at = $2 \
        FROM (SELECT DISTINCT credential_id FROM u WHERE credential_id IS NOT NULL ORDER BY credential_id) d \
        WHERE c.id = d.credential_id AND (c.last_used_at IS NULL OR c.last_used_at <= $3)) \
    INSERT INTO audit_events (org_id, credential_id, action, outcome, actor, detail, at, workflow_id, run_id, coalesce_key) \
    SELECT org_id, credential_id, action, outcome, actor, detail, $2, workflow_id, run_id, coalesce_key FROM u";

/// Outcomes on Postgres, in one statement: each adds its facts to the
/// detail of the event with its key.
const RECORD_OUTCOMES_POSTGRES: &str = "UPDATE audit_events a \
    SET outcome = x.outcome, detail = (COALESCE(CAST(a.detail AS jsonb), '{}'::jsonb) || CAST(x.facts AS jsonb))::text \
    FROM json_to_recordset(CAST($1 AS json)) AS x(key TEXT, outcome TEXT, facts TEXT) \
    WHERE a.coalesce_key = x.key";

/// For the rest of the transaction (`SET LOCAL`), joins by index lookups
/// only: no hash or merge join, no sequential scan.
const NESTED_LOOP_ONLY: &str = "SELECT set_config('enable_hashjoin', 'off', true), \
    set_config('enable_mergejoin', 'off', true), set_config('enable_seqscan', 'off', true)";

#[derive(Serialize)]
struct OutcomeJson<'a> {
    key: &'a str,
    outcome: &'a str,
    facts: String,
}

/// One use as an element of [`RECORD_USES_POSTGRES`]'s array.
#[derive(Serialize)]
struct UseJson<'a> {
    org_id: &'a OrgId,
    credential_id: Option<&'a CredentialId>,
    action: &'a str,
    outcome: &'a str,
    actor: &'a str,
    detail: Option<String>,
    workflow_id: Option<&'a str>,
    run_id: Option<&'a str>,
    coalesce_key: Option<&'a str>,
}

impl<'a> From<&'a UseRecord> for UseJson<'a> {
    fn from(u: &'a UseRecord) -> Self {
        Self {
            org_id: &u.event.org_id,
            credential_id: u.event.credential_id.as_ref(),
            action: u.event.action,
            outcome: u.event.outcome,
            actor: &u.event.actor,
            detail: u.event.detail.as_ref().map(ToString::to_string),
            workflow_id: u.usage.workflow_id.as_deref(),
            run_id: u.usage.run_id.as_deref(),
            coalesce_key: u.key.as_deref(),
        }
    }
}

/// A credential's `last_used_at` is kept to this many seconds: rewritten
/// only once it is this old (the audit log has every use, to the second),
/// so a credential resolved all the time is not rewritten by every batch.
pub const LAST_USED_EVERY_SECS: i64 = 60;

impl Store {
    /// Records `uses` durably, in one transaction.
    pub async fn record_uses(&self, uses: &[UseRecord]) -> Result<(), StoreError> {
        self.timed(async move {
        if uses.is_empty() {
            return Ok(());
        }
        let t = self.now();
        if self.dialect == Dialect::Postgres {
            let batch: Vec<UseJson> = uses.iter().map(UseJson::from).collect();
            let batch =
                serde_json::to_string(&batch).map_err(|e| StoreError::Database(sqlx::Error::Encode(e.into())))?;
            let query = sqlx::query(RECORD_USES_POSTGRES)
                .bind(batch)
                .bind(t)
                .bind(t - LAST_USED_EVERY_SECS);
            self.on_kept(&self.kept_uses, async |conn| Ok(query.execute(conn).await?))
                .await?;
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        for chunk in uses.chunks(CHUNK) {
            let mut ids: Vec<&str> = chunk.iter().filter_map(|u| u.event.credential_id.as_deref()).collect();
            ids.sort_unstable();
            ids.dedup();
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
            let update = format!(
                "UPDATE credentials SET last_used_at = $1 WHERE id IN ({}) AND (last_used_at IS NULL OR last_used_at <= $2)",
                marks.join(", ")
            );
            let mut query = sqlx::query(&update).bind(t).bind(t - LAST_USED_EVERY_SECS);
            for id in &ids {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;

            let events: Vec<_> = chunk
                .iter()
                .map(|u| (&u.event, Some(&u.usage), u.key.as_deref()))
                .collect();
            audit::insert_many(&mut tx, &events, t).await?;
        }
        tx.commit().await?;
        Ok(())
    })
        .await
    }

    /// Adds each outcome to its use's event (by key), in one transaction.
    /// An outcome whose event is gone (its organization deleted) changes
    /// nothing.
    pub async fn record_outcomes(&self, outcomes: &[UseOutcome]) -> Result<(), StoreError> {
        self.timed(async move {
            if outcomes.is_empty() {
                return Ok(());
            }
            if self.dialect == Dialect::Postgres {
                let batch: Vec<OutcomeJson> = outcomes
                    .iter()
                    .map(|o| OutcomeJson {
                        key: &o.key,
                        outcome: o.outcome(),
                        facts: o.facts(),
                    })
                    .collect();
                let batch =
                    serde_json::to_string(&batch).map_err(|e| StoreError::Database(sqlx::Error::Encode(e.into())))?;
                // Each key is one index lookup, whatever the statistics say:
                // a plan made while the table was small (a connection keeps
                // its generic plan until the next ANALYZE) would scan every
                // event for each group.
                let mut tx = self.begin_write().await?;
                sqlx::query(NESTED_LOOP_ONLY).execute(&mut *tx).await?;
                sqlx::query(RECORD_OUTCOMES_POSTGRES)
                    .bind(batch)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                return Ok(());
            }
            let mut tx = self.begin_write().await?;
            for o in outcomes {
                sqlx::query(
                    "UPDATE audit_events SET outcome = $1, detail = json_patch(COALESCE(detail, '{}'), $2) \
                     WHERE coalesce_key = $3",
                )
                .bind(o.outcome())
                .bind(o.facts())
                .bind(&o.key)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
