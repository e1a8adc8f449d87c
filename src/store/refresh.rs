//! Token refresh bookkeeping: leases so that one credential is refreshed by
//! one holder at a time, and the conditional writes of a refresh's outcome.

use super::audit::{self, AuditEvent};
use super::outbox::{self, Notification};
use super::{current_key, Dialect, LastError, Store, StoreError, Usage};
use crate::ids::{CredentialId, OrgId};
use crate::model::CredentialStatus;

/// New tokens from a successful refresh.
#[derive(Debug, Clone)]
pub struct RefreshedTokens {
    pub secret_ct: String,
    pub key_version: i64,
    pub expires_at: Option<i64>,
    /// When the worker should next look at it (jittered).
    pub refresh_after: Option<i64>,
    /// When the refresh token ends, where known.
    pub refresh_expires_at: Option<i64>,
    /// When the provider said.
    pub scopes: Option<Vec<String>>,
}

/// A refresh's new tokens to write over the secrets at version `expected`,
/// read under `owner`'s lease, with its audit event and notification.
#[derive(Debug, Clone)]
pub struct PendingRefresh {
    pub org_id: OrgId,
    pub id: CredentialId,
    pub expected: i64,
    pub owner: String,
    pub tokens: RefreshedTokens,
    pub event: AuditEvent,
    pub notify: Option<Notification>,
}

/// A failed refresh, as recorded.
#[derive(Debug, Clone)]
pub struct RefreshFailure {
    pub status: CredentialStatus,
    pub last_error: LastError,
    /// Next attempt not before (backoff); `None` stops retrying.
    pub refresh_after: Option<i64>,
}

/// A claimed credential.
#[derive(sqlx::FromRow)]
struct ClaimedColumns {
    org_id: OrgId,
    id: CredentialId,
}

impl Store {
    /// Claims one credential's refresh lease until `until`; false if another
    /// holder's lease is still running.
    pub async fn claim_refresh(
        &self,
        org_id: &OrgId,
        id: &CredentialId,
        owner: &str,
        until: i64,
    ) -> Result<bool, StoreError> {
        self.timed(async move {
            let done = self
                .execute_write(
                    sqlx::query(
                        "UPDATE credentials SET lease_owner = $3, lease_until = $4 \
                     WHERE org_id = $1 AND id = $2 AND (lease_until IS NULL OR lease_until < $5 OR lease_owner = $3)",
                    )
                    .bind(org_id)
                    .bind(id)
                    .bind(owner)
                    .bind(until)
                    .bind(self.now()),
                )
                .await?;
            Ok(done == 1)
        })
        .await
    }

    /// Claims up to `limit` OAuth credentials that are due: their jittered
    /// `refresh_after` passed (or, never scheduled, they expire within
    /// `lead` seconds), not given up on, and not leased by a live holder.
    /// Postgres skips rows other replicas are claiming (`SKIP LOCKED`);
    /// SQLite's single writer makes the statement atomic.
    pub async fn claim_due(
        &self,
        owner: &str,
        lead: i64,
        limit: i64,
        lease_until: i64,
    ) -> Result<Vec<(OrgId, CredentialId)>, StoreError> {
        self.timed(async move {
            let lock = match self.dialect {
                Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
                Dialect::Sqlite => "",
            };
            let t = self.now();
            let mut tx = self.begin_write().await?;
            let rows: Vec<ClaimedColumns> = sqlx::query_as(&format!(
                "UPDATE credentials SET lease_owner = $1, lease_until = $2 WHERE id IN (\
               SELECT id FROM credentials WHERE auth_type IN ('oauth2', 'oauth2_client_credentials', 'service_account') \
               AND status <> 'needs_reauth' \
               AND (expires_at IS NOT NULL OR refresh_after IS NOT NULL) \
               AND ((refresh_after IS NULL AND expires_at <= $3) OR refresh_after <= $4) \
               AND (lease_until IS NULL OR lease_until < $4) \
               AND NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = credentials.org_id \
                 AND o.deleted_at IS NOT NULL) \
               ORDER BY expires_at LIMIT $5 {lock}) \
             RETURNING org_id, id"
            ))
            .bind(owner)
            .bind(lease_until)
            .bind(t + lead)
            .bind(t)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(rows.into_iter().map(|r| (r.org_id, r.id)).collect())
        })
        .await
    }

    /// How many OAuth credentials are due now (the backlog).
    pub async fn due_count(&self, lead: i64) -> Result<i64, StoreError> {
        self.timed(async move {
            let t = self.now();
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM credentials WHERE auth_type IN ('oauth2', 'oauth2_client_credentials', 'service_account') \
             AND status <> 'needs_reauth' \
             AND (expires_at IS NOT NULL OR refresh_after IS NOT NULL) \
             AND ((refresh_after IS NULL AND expires_at <= $1) OR refresh_after <= $2)",
            )
            .bind(t + lead)
            .bind(t)
            .fetch_one(&self.pool)
            .await?)
        })
        .await
    }

    /// Writes each refresh's rotated tokens and audit event (and
    /// notification) and releases its lease, all of them in one
    /// transaction: each only if its owner still holds the lease and no one
    /// wrote secrets since the version it read. One outcome each, in order:
    /// `false`, the write lost (a re-authorization or another refresh got
    /// there first); `KeyRotated`, its tokens were sealed under a data key
    /// that is no longer the organization's. A group the database refuses
    /// for another reason is written again one by one, so a bad write fails
    /// alone; an outage or a transaction the database gave up fails the
    /// whole group (the callers write again).
    pub async fn store_refreshed(&self, refreshes: &[PendingRefresh]) -> Vec<Result<bool, StoreError>> {
        if refreshes.len() > 1 {
            match self.refreshed_together(refreshes).await {
                Ok(outcomes) => return outcomes,
                Err(e @ (StoreError::Unavailable(_) | StoreError::GaveWay(_))) => {
                    tracing::warn!(error = %e, refreshes = refreshes.len(), "a group of refreshed tokens was not written");
                    return refreshes.iter().map(|_| Err(e.duplicate())).collect();
                }
                Err(e) => {
                    tracing::info!(error = %e, refreshes = refreshes.len(), "a group of refreshed tokens failed; writing each alone");
                }
            }
        }
        let mut outcomes = Vec::with_capacity(refreshes.len());
        for refresh in refreshes {
            outcomes.push(
                self.refreshed_together(std::slice::from_ref(refresh))
                    .await
                    .and_then(|mut o| o.remove(0)),
            );
        }
        outcomes
    }

    /// One transaction for the group. Locks are taken in one order on every
    /// replica: organizations (share) by id, then credential rows by id.
    async fn refreshed_together(
        &self,
        refreshes: &[PendingRefresh],
    ) -> Result<Vec<Result<bool, StoreError>>, StoreError> {
        let mut order: Vec<usize> = (0..refreshes.len()).collect();
        order.sort_by(|a, b| {
            let (a, b) = (&refreshes[*a], &refreshes[*b]);
            (&a.org_id, &a.id).cmp(&(&b.org_id, &b.id))
        });
        let mut outcomes: Vec<Result<bool, StoreError>> = refreshes.iter().map(|_| Ok(false)).collect();
        let mut tx = self.begin_write().await?;
        let t = self.now();
        for org in order.chunk_by(|a, b| refreshes[*a].org_id == refreshes[*b].org_id) {
            let current = current_key(&mut tx, self.dialect, &refreshes[org[0]].org_id).await?;
            for &i in org {
                match current {
                    None => outcomes[i] = Err(StoreError::NotFound),
                    Some(v) if v != refreshes[i].tokens.key_version => outcomes[i] = Err(StoreError::KeyRotated),
                    Some(_) => {}
                }
            }
        }
        let admitted: Vec<usize> = order.into_iter().filter(|i| outcomes[*i].is_ok()).collect();
        for &i in &admitted {
            let r = &refreshes[i];
            let tokens = &r.tokens;
            let done = sqlx::query(
                "UPDATE credentials SET secret_ct = $3, key_version = $4, expires_at = $5, refresh_after = $6, \
                 scopes = COALESCE($7, scopes), status = $11, last_error = NULL, refresh_failures = 0, \
                 secret_version = secret_version + 1, refresh_expires_at = $12, \
                 last_refreshed_at = $8, updated_at = $8, lease_owner = NULL, lease_until = NULL \
                 WHERE org_id = $1 AND id = $2 AND secret_version = $9 AND lease_owner = $10",
            )
            .bind(&r.org_id)
            .bind(&r.id)
            .bind(&tokens.secret_ct)
            .bind(tokens.key_version)
            .bind(tokens.expires_at)
            .bind(tokens.refresh_after)
            .bind(
                tokens
                    .scopes
                    .as_ref()
                    .map(|s| serde_json::to_string(s).expect("serializes")),
            )
            .bind(t)
            .bind(r.expected)
            .bind(&r.owner)
            .bind(CredentialStatus::AFTER_REFRESH.as_str())
            .bind(tokens.refresh_expires_at)
            .execute(&mut *tx)
            .await?;
            outcomes[i] = Ok(done.rows_affected() == 1);
        }
        let written: Vec<&PendingRefresh> = admitted
            .into_iter()
            .filter(|i| matches!(outcomes[*i], Ok(true)))
            .map(|i| &refreshes[i])
            .collect();
        if written.is_empty() {
            return Ok(outcomes);
        }
        let events: Vec<(&AuditEvent, Option<&Usage>)> = written.iter().map(|r| (&r.event, None)).collect();
        audit::insert_many(&mut tx, &events, t).await?;
        let notes: Vec<&Notification> = written.iter().filter_map(|r| r.notify.as_ref()).collect();
        if !notes.is_empty() {
            outbox::insert_many(&mut tx, &notes, t).await?;
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    /// Records a failed refresh and releases the lease, under the same
    /// conditions as [`Store::store_refreshed`]; `None` when the verdict lost
    /// (someone wrote newer secrets, or the lease passed to another holder).
    pub async fn store_refresh_failure(
        &self,
        org_id: &OrgId,
        id: &CredentialId,
        (expected, owner): (i64, &str),
        failure: &RefreshFailure,
        (event, notify): (&AuditEvent, &[Notification]),
    ) -> Result<Option<i64>, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let t = self.now();
            let failures: Option<i64> = sqlx::query_scalar(
                "UPDATE credentials SET status = $3, last_error = $4, refresh_after = $5, \
             refresh_failures = refresh_failures + 1, lease_owner = NULL, lease_until = NULL, updated_at = $6 \
             WHERE org_id = $1 AND id = $2 AND secret_version = $7 AND lease_owner = $8 RETURNING refresh_failures",
            )
            .bind(org_id)
            .bind(id)
            .bind(failure.status.as_str())
            .bind(serde_json::to_string(&failure.last_error).expect("serializes"))
            .bind(failure.refresh_after)
            .bind(t)
            .bind(expected)
            .bind(owner)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(failures) = failures else { return Ok(None) };
            audit::insert(&mut tx, event, t).await?;
            let notes: Vec<&Notification> = notify.iter().collect();
            outbox::insert_many(&mut tx, &notes, t).await?;
            tx.commit().await?;
            Ok(Some(failures))
        })
        .await
    }

    /// Gives a lease back without changing anything else.
    pub async fn release_lease(&self, org_id: &OrgId, id: &CredentialId, owner: &str) -> Result<(), StoreError> {
        self.timed(async move {
            self.execute_write(
                sqlx::query(
                    "UPDATE credentials SET lease_owner = NULL, lease_until = NULL \
                 WHERE org_id = $1 AND id = $2 AND lease_owner = $3",
                )
                .bind(org_id)
                .bind(id)
                .bind(owner),
            )
            .await?;
            Ok(())
        })
        .await
    }
}
