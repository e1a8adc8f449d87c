//! Token refresh bookkeeping: leases so that one credential is refreshed by
//! one holder at a time, and the conditional writes of a refresh's outcome.

use sqlx::Row;

use super::audit::{self, AuditEvent};
use super::outbox::{self, Notification};
use super::{check_key, Dialect, LastError, Store, StoreError};
use crate::model::CredentialStatus;

/// New tokens from a successful refresh.
#[derive(Debug, Clone)]
pub struct RefreshedTokens {
    pub secret_ct: String,
    pub key_version: i64,
    pub expires_at: Option<i64>,
    /// When the worker should next look at it (jittered).
    pub refresh_after: Option<i64>,
    /// When the provider said.
    pub scopes: Option<Vec<String>>,
}

/// A failed refresh, as recorded.
#[derive(Debug, Clone)]
pub struct RefreshFailure {
    pub status: CredentialStatus,
    pub last_error: LastError,
    /// Next attempt not before (backoff); `None` stops retrying.
    pub refresh_after: Option<i64>,
}

impl Store {
    /// Claims one credential's refresh lease until `until`; false if another
    /// holder's lease is still running.
    pub async fn claim_refresh(&self, org_id: &str, id: &str, owner: &str, until: i64) -> Result<bool, StoreError> {
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
    ) -> Result<Vec<(String, String)>, StoreError> {
        let lock = match self.dialect {
            Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
            Dialect::Sqlite => "",
        };
        let t = self.now();
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(&format!(
            "UPDATE credentials SET lease_owner = $1, lease_until = $2 WHERE id IN (\
               SELECT id FROM credentials WHERE auth_type = 'oauth2' AND status <> 'needs_reauth' \
               AND expires_at IS NOT NULL \
               AND ((refresh_after IS NULL AND expires_at <= $3) OR refresh_after <= $4) \
               AND (lease_until IS NULL OR lease_until < $4) \
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
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// How many OAuth credentials are due now (the backlog).
    pub async fn due_count(&self, lead: i64) -> Result<i64, StoreError> {
        let t = self.now();
        let row = sqlx::query(
            "SELECT COUNT(*) FROM credentials WHERE auth_type = 'oauth2' AND status <> 'needs_reauth' \
             AND expires_at IS NOT NULL AND ((refresh_after IS NULL AND expires_at <= $1) OR refresh_after <= $2)",
        )
        .bind(t + lead)
        .bind(t)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// Writes rotated tokens and the audit event in one transaction and
    /// releases the lease — only if `owner` still holds the lease and no one
    /// wrote secrets since version `expected` was read. `false`: the write
    /// lost (a re-authorization or another refresh got there first).
    pub async fn store_refreshed(
        &self,
        org_id: &str,
        id: &str,
        (expected, owner): (i64, &str),
        tokens: &RefreshedTokens,
        (event, notify): (&AuditEvent, Option<&Notification>),
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        check_key(&mut tx, self.dialect, org_id, tokens.key_version).await?;
        let t = self.now();
        let done = sqlx::query(
            "UPDATE credentials SET secret_ct = $3, key_version = $4, expires_at = $5, refresh_after = $6, \
             scopes = COALESCE($7, scopes), status = $11, last_error = NULL, refresh_failures = 0, \
             secret_version = secret_version + 1, \
             last_refreshed_at = $8, updated_at = $8, lease_owner = NULL, lease_until = NULL \
             WHERE org_id = $1 AND id = $2 AND secret_version = $9 AND lease_owner = $10",
        )
        .bind(org_id)
        .bind(id)
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
        .bind(expected)
        .bind(owner)
        .bind(CredentialStatus::AFTER_REFRESH.as_str())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        audit::insert(&mut tx, event, t).await?;
        if let Some(n) = notify {
            outbox::insert(&mut tx, n, t).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Records a failed refresh and releases the lease, under the same
    /// conditions as [`Store::store_refreshed`]; `None` when the verdict lost
    /// (someone wrote newer secrets, or the lease passed to another holder).
    pub async fn store_refresh_failure(
        &self,
        org_id: &str,
        id: &str,
        (expected, owner): (i64, &str),
        failure: &RefreshFailure,
        (event, notify): (&AuditEvent, Option<&Notification>),
    ) -> Result<Option<i64>, StoreError> {
        let mut tx = self.begin_write().await?;
        let t = self.now();
        let row = sqlx::query(
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
        let Some(row) = row else { return Ok(None) };
        audit::insert(&mut tx, event, t).await?;
        if let Some(n) = notify {
            outbox::insert(&mut tx, n, t).await?;
        }
        tx.commit().await?;
        Ok(Some(row.try_get(0)?))
    }

    /// Gives a lease back without changing anything else.
    pub async fn release_lease(&self, org_id: &str, id: &str, owner: &str) -> Result<(), StoreError> {
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
    }
}
