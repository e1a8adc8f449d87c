//! Idempotency keys of creates: kept 24 hours per organization, each
//! written in the transaction of the create it names, so that a retry
//! whose first answer was lost (or was a 503 after the commit landed) finds
//! that create instead of making another.

use super::{Store, StoreError};

use crate::ids::{CredentialId, OrgId};

/// How long a key is kept.
pub const IDEMPOTENCY_TTL_SECS: i64 = 86_400;

/// A key to keep with a create: the request it came with, sealed.
#[derive(Debug, Clone)]
pub struct IdempotencyRecord {
    pub key: String,
    /// The request's fingerprint, sealed under the organization's data key.
    pub request_ct: String,
    pub key_version: i64,
}

/// What a key, used within the last 24 hours, was used for.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeptRequest {
    pub credential_id: CredentialId,
    pub request_ct: String,
    pub key_version: i64,
}

impl Store {
    /// The create `key` named in `org_id` within the last 24 hours, if any.
    pub async fn kept_request(&self, org_id: &OrgId, key: &str) -> Result<Option<KeptRequest>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(
                "SELECT credential_id, request_ct, key_version FROM idempotency_keys \
                 WHERE org_id = $1 AND idem_key = $2 AND created_at > $3",
            )
            .bind(org_id)
            .bind(key)
            .bind(self.now() - IDEMPOTENCY_TTL_SECS)
            .fetch_optional(&self.pool)
            .await?)
        })
        .await
    }

    /// Deletes the keys older than 24 hours before `now`; returns how many.
    pub async fn purge_idempotency_keys(&self, now: i64) -> Result<u64, StoreError> {
        self.execute_write(
            sqlx::query("DELETE FROM idempotency_keys WHERE created_at <= $1").bind(now - IDEMPOTENCY_TTL_SECS),
        )
        .await
    }
}

/// Keeps `record` for the create of `credential_id`, in its transaction. A
/// key still kept for another create is `IdempotencyKeyTaken`; an expired
/// one is replaced.
pub(super) async fn keep(
    conn: &mut sqlx::AnyConnection,
    org_id: &OrgId,
    credential_id: &CredentialId,
    record: &IdempotencyRecord,
    t: i64,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM idempotency_keys WHERE org_id = $1 AND idem_key = $2 AND created_at <= $3")
        .bind(org_id)
        .bind(&record.key)
        .bind(t - IDEMPOTENCY_TTL_SECS)
        .execute(&mut *conn)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO idempotency_keys (org_id, idem_key, request_ct, key_version, credential_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(org_id)
    .bind(&record.key)
    .bind(&record.request_ct)
    .bind(record.key_version)
    .bind(credential_id)
    .bind(t)
    .execute(&mut *conn)
    .await;
    match inserted {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => Err(StoreError::IdempotencyKeyTaken),
        Err(e) => Err(e.into()),
    }
}
