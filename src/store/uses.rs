//! Writing many uses (resolves) in one transaction: the group commit behind
//! `crate::group_commit::UseLog`. Each use adds its audit event and sets
//! its credential's `last_used_at` (to the minute); all of a batch commit
//! together or not at all. On Postgres a batch is one statement (one round
//! trip, one statement shape whatever the batch's size); on SQLite, whose
//! statements cost no round trip, a transaction of two per 200 uses.
//! A gateway call's outcome, known after its use was written, is kept
//! beside the use's event (`use_outcomes`), never written over it.
//! A use decided on an earlier read of its credential ([`ReadAt`]) is
//! written only while that read is still current, in the same statement.

use serde::Serialize;
use serde_json::Value;

use crate::ids::{CredentialId, OrgId, UserId};
use crate::model::Access;

use super::audit::Usage;
use super::audit::{self, AuditEvent};
use super::{Dialect, Store, StoreError};

/// One use to record.
#[derive(Debug, Clone)]
pub struct UseRecord {
    /// The audit event (its `credential_id` is set).
    pub event: AuditEvent,
    pub usage: Usage,
    /// The earlier read the use was decided on, if not a read of its own:
    /// it is written only while that read is current.
    pub read_at: Option<ReadAt>,
}

/// What a use's access decision saw of its credential, when it was made on
/// an earlier read: the row's version (raised by every change to the row
/// but its use time and refresh lease) and, when the decision weighed a
/// user's own grant, that user and the grant (`None`: none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAt {
    pub row_version: i64,
    pub grant: Option<(UserId, Option<Access>)>,
}

/// What became of a recorded use (a gateway call, whose outcome is known
/// only once the service has answered): the service's status (`None`: no
/// answer) or what went wrong, and how long it took.
#[derive(Debug, Clone)]
pub struct UseOutcome {
    /// The use's event, as [`Store::record_uses`] returned it.
    pub event_id: i64,
    /// The event's organization.
    pub org_id: OrgId,
    /// The detail the use was recorded with; the outcome's facts are added
    /// to it.
    pub detail: Option<Value>,
    pub status: Option<u16>,
    /// `unreachable`, `timeout`, `egress_denied`, `body_too_large`,
    /// `body_incomplete`, `unreadable_encoding` (an answer that could not
    /// be searched for the secrets placed, not returned), `partial_answer`
    /// (a part of an answer, which cannot be searched whole, not
    /// returned), `not_proxyable`,
    /// `abandoned` (the engine went away before the service answered).
    pub error: Option<&'static str>,
    pub latency_ms: u64,
}

impl UseOutcome {
    /// `success` for a 1xx to 3xx answer that was returned, else
    /// `failure`.
    fn outcome(&self) -> &'static str {
        match self.status {
            // An answer credgate did not return (see `error`) failed too.
            Some(s) if s < 400 && self.error.is_none() => "success",
            _ => "failure",
        }
    }

    /// The use's detail with the outcome's facts added.
    fn detail(&self) -> OutcomeDetail<'_> {
        OutcomeDetail {
            recorded: match &self.detail {
                Some(Value::Object(d)) => Some(d),
                _ => None,
            },
            status: self.status,
            latency_ms: self.latency_ms,
            error: self.error,
        }
    }
}

/// A use's detail with its outcome's facts, written as it is serialized
/// (no copy of the use's detail).
#[derive(Serialize)]
struct OutcomeDetail<'a> {
    #[serde(flatten)]
    recorded: Option<&'a serde_json::Map<String, Value>>,
    status: Option<u16>,
    latency_ms: u64,
    error: Option<&'static str>,
}

impl OutcomeDetail<'_> {
    fn text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Uses per statement (SQLite).
const CHUNK: usize = 200;

/// A batch of uses on Postgres, in one statement: the uses come as one JSON
/// array (`$1`), each with its place `n`; a use decided on an earlier read
/// is kept only while its credential's row version and its user's grant
/// are what that read saw (each looked up by its key, a subplan per use);
/// each use kept gets its event id from the sequence; the credentials'
/// `last_used_at` is set in id order (the order every batch, on every
/// replica, locks them in), and the events are inserted, all in the
/// statement's own transaction. Answers each place kept with its event's
/// id.
const RECORD_USES_POSTGRES: &str = "WITH u AS MATERIALIZED (\
        SELECT nextval('audit_events_id_seq') AS id, x.* FROM json_to_recordset(CAST($1 AS json)) AS x(n BIGINT, \
        org_id TEXT, credential_id TEXT, action TEXT, outcome TEXT, actor TEXT, detail JSON, workflow_id TEXT, \
        run_id TEXT, row_version BIGINT, grant_user TEXT, grant_access TEXT) \
        WHERE x.row_version IS NULL OR (x.row_version = (SELECT c.row_version FROM credentials c \
            WHERE c.id = x.credential_id AND c.org_id = x.org_id) \
        AND (x.grant_user IS NULL OR (SELECT g.access FROM credential_grants g \
            WHERE g.credential_id = x.credential_id AND g.user_id = x.grant_user) IS NOT DISTINCT FROM x.grant_access))), \
    touched AS (UPDATE credentials c SET last_used_at = $2 \
        FROM (SELECT DISTINCT credential_id FROM u WHERE credential_id IS NOT NULL ORDER BY credential_id) d \
        WHERE c.id = d.credential_id AND (c.last_used_at IS NULL OR c.last_used_at <= $3)), \
    inserted AS (INSERT INTO audit_events (id, org_id, credential_id, action, outcome, actor, detail, at, \
        workflow_id, run_id) \
        SELECT id, org_id, credential_id, action, outcome, actor, detail::text, $2, workflow_id, run_id FROM u) \
    SELECT n, id FROM u";

/// Outcomes on Postgres, in one statement: each is kept beside its event
/// (`use_outcomes`), when that event exists; once only.
const RECORD_OUTCOMES_POSTGRES: &str = "INSERT INTO use_outcomes (event_id, org_id, outcome, detail) \
    SELECT x.id, x.org_id, x.outcome, x.detail::text FROM json_to_recordset(CAST($1 AS json)) \
        AS x(id BIGINT, org_id TEXT, outcome TEXT, detail JSON) \
    WHERE EXISTS (SELECT 1 FROM audit_events a WHERE a.id = x.id) \
    ON CONFLICT (event_id) DO NOTHING";

/// One outcome on SQLite.
const RECORD_OUTCOME_SQLITE: &str = "INSERT INTO use_outcomes (event_id, org_id, outcome, detail) \
    SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM audit_events WHERE id = $1) \
    ON CONFLICT (event_id) DO NOTHING";

/// For the rest of the transaction (`SET LOCAL`), joins by index lookups
/// only: no hash or merge join, no sequential scan.
const NESTED_LOOP_ONLY: &str = "SELECT set_config('enable_hashjoin', 'off', true), \
    set_config('enable_mergejoin', 'off', true), set_config('enable_seqscan', 'off', true)";

#[derive(Serialize)]
struct OutcomeJson<'a> {
    id: i64,
    org_id: &'a OrgId,
    outcome: &'a str,
    /// Nested as JSON, kept as its text.
    detail: OutcomeDetail<'a>,
}

/// One use as an element of [`RECORD_USES_POSTGRES`]'s array.
#[derive(Serialize)]
struct UseJson<'a> {
    n: usize,
    org_id: &'a OrgId,
    credential_id: Option<&'a CredentialId>,
    action: &'a str,
    outcome: &'a str,
    actor: &'a str,
    /// Nested as JSON, kept as its text.
    detail: Option<&'a Value>,
    workflow_id: Option<&'a str>,
    run_id: Option<&'a str>,
    row_version: Option<i64>,
    grant_user: Option<&'a UserId>,
    grant_access: Option<&'static str>,
}

impl<'a> UseJson<'a> {
    fn new(n: usize, u: &'a UseRecord) -> Self {
        let grant = u.read_at.as_ref().and_then(|r| r.grant.as_ref());
        Self {
            n,
            org_id: &u.event.org_id,
            credential_id: u.event.credential_id.as_ref(),
            action: u.event.action,
            outcome: u.event.outcome,
            actor: &u.event.actor,
            detail: u.event.detail.as_ref(),
            workflow_id: u.usage.workflow_id.as_deref(),
            run_id: u.usage.run_id.as_deref(),
            row_version: u.read_at.as_ref().map(|r| r.row_version),
            grant_user: grant.map(|(user, _)| user),
            grant_access: grant.and_then(|(_, level)| level.map(Access::as_str)),
        }
    }
}

/// Whether the read `at` saw is still current (SQLite, in the write
/// transaction: nothing changes it before the commit).
const STILL_CURRENT_SQLITE: &str = "SELECT CASE WHEN \
    (SELECT row_version FROM credentials WHERE id = $1 AND org_id = $2) = $3 \
    AND ($4 IS NULL OR (SELECT access FROM credential_grants WHERE credential_id = $1 AND user_id = $4) IS $5) \
    THEN 1 ELSE 0 END";

/// A credential's `last_used_at` is kept to this many seconds: rewritten
/// only once it is this old (the audit log has every use, to the second),
/// so a credential resolved all the time is not rewritten by every batch.
pub const LAST_USED_EVERY_SECS: i64 = 60;

impl Store {
    /// Records `uses` durably, in one transaction; returns their events'
    /// ids, in order (`None`: a use decided on a read no longer current,
    /// not written).
    pub async fn record_uses(&self, uses: &[UseRecord]) -> Result<Vec<Option<i64>>, StoreError> {
        self.timed(async move {
            if uses.is_empty() {
                return Ok(Vec::new());
            }
            let t = self.now();
            if self.dialect == Dialect::Postgres {
                let batch: Vec<UseJson> = uses.iter().enumerate().map(|(n, u)| UseJson::new(n, u)).collect();
                let batch =
                    serde_json::to_string(&batch).map_err(|e| StoreError::Database(sqlx::Error::Encode(e.into())))?;
                let query = sqlx::query_as::<_, (i64, i64)>(RECORD_USES_POSTGRES)
                    .bind(batch)
                    .bind(t)
                    .bind(t - LAST_USED_EVERY_SECS);
                let placed = self
                    .on_kept(&self.kept_uses, async |conn| Ok(query.fetch_all(conn).await?))
                    .await?;
                let mut ids = vec![None; uses.len()];
                for (n, id) in placed {
                    if let Some(slot) = usize::try_from(n).ok().and_then(|n| ids.get_mut(n)) {
                        *slot = Some(id);
                    }
                }
                return Ok(ids);
            }
            let mut tx = self.begin_write().await?;
            let mut current = Vec::with_capacity(uses.len());
            for u in uses {
                let Some(at) = &u.read_at else {
                    current.push(true);
                    continue;
                };
                let grant = at.grant.as_ref();
                let still: i64 = sqlx::query_scalar(STILL_CURRENT_SQLITE)
                    .bind(u.event.credential_id.as_deref())
                    .bind(&u.event.org_id)
                    .bind(at.row_version)
                    .bind(grant.map(|(user, _)| user.as_str()))
                    .bind(grant.and_then(|(_, level)| level.map(Access::as_str)))
                    .fetch_one(&mut *tx)
                    .await?;
                current.push(still == 1);
            }
            // The write lock is held (`BEGIN IMMEDIATE`): the ids after the
            // highest ever given are this transaction's to give.
            let mut next: i64 = sqlx::query_scalar(
                "SELECT MAX(n) FROM (SELECT COALESCE(MAX(id), 0) AS n FROM audit_events \
                 UNION ALL SELECT seq FROM sqlite_sequence WHERE name = 'audit_events')",
            )
            .fetch_one(&mut *tx)
            .await?;
            let kept: Vec<&UseRecord> = uses.iter().zip(&current).filter(|(_, c)| **c).map(|(u, _)| u).collect();
            let mut ids = Vec::with_capacity(kept.len());
            for chunk in kept.chunks(CHUNK) {
                let mut credentials: Vec<&str> =
                    chunk.iter().filter_map(|u| u.event.credential_id.as_deref()).collect();
                credentials.sort_unstable();
                credentials.dedup();
                let marks: Vec<String> = (0..credentials.len()).map(|i| format!("${}", i + 3)).collect();
                let update = format!(
                    "UPDATE credentials SET last_used_at = $1 WHERE id IN ({}) AND (last_used_at IS NULL OR last_used_at <= $2)",
                    marks.join(", ")
                );
                let mut query = sqlx::query(&update).bind(t).bind(t - LAST_USED_EVERY_SECS);
                for id in &credentials {
                    query = query.bind(*id);
                }
                query.execute(&mut *tx).await?;

                let events: Vec<_> = chunk
                    .iter()
                    .map(|u| {
                        next += 1;
                        ids.push(next);
                        (next, &u.event, &u.usage)
                    })
                    .collect();
                audit::insert_numbered(&mut tx, &events, t).await?;
            }
            tx.commit().await?;
            let mut ids = ids.into_iter();
            Ok(current.into_iter().map(|c| if c { ids.next() } else { None }).collect())
        })
        .await
    }

    /// Keeps each outcome beside its use's event (readers of the event see
    /// the outcome's `outcome` and `detail`), in one transaction. An
    /// outcome whose event is gone (its organization deleted) changes
    /// nothing; an event's second outcome neither.
    pub async fn record_outcomes(&self, outcomes: &[UseOutcome]) -> Result<(), StoreError> {
        self.timed(async move {
            if outcomes.is_empty() {
                return Ok(());
            }
            if self.dialect == Dialect::Postgres {
                let batch: Vec<OutcomeJson> = outcomes
                    .iter()
                    .map(|o| OutcomeJson {
                        id: o.event_id,
                        org_id: &o.org_id,
                        outcome: o.outcome(),
                        detail: o.detail(),
                    })
                    .collect();
                let batch =
                    serde_json::to_string(&batch).map_err(|e| StoreError::Database(sqlx::Error::Encode(e.into())))?;
                // Each id is one index lookup, whatever the statistics say:
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
                sqlx::query(RECORD_OUTCOME_SQLITE)
                    .bind(o.event_id)
                    .bind(&o.org_id)
                    .bind(o.outcome())
                    .bind(o.detail().text())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
