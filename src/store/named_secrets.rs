//! Secrets by name: one sealed value per organization and name. Writes are
//! conditional on the organization's current data key (as credentials are)
//! and serialized per organization, so the per-organization limit holds on
//! every replica; every change and every use is audited in its transaction.

use super::audit::{self, AuditEvent};
use super::quota::lock_org;
use super::{check_key, Store, StoreError};

use crate::ids::OrgId;

/// A named secret's metadata (what listings show; never the value).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SecretMeta {
    pub name: String,
    /// `api_key:{id}` or `user:{id}` of the first writer.
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
    pub last_used_at: Option<i64>,
}

/// A named secret's sealed value, as read for opening.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedSecret {
    pub name: String,
    /// The sealed value (see `crypto`).
    pub value_ct: String,
    /// The data key version that sealed it.
    pub key_version: i64,
}

/// A sealed value to store under `name`.
#[derive(Debug, Clone)]
pub struct SecretPut<'a> {
    pub name: &'a str,
    pub value_ct: &'a str,
    pub key_version: i64,
    /// `api_key:{id}` or `user:{id}`.
    pub actor: &'a str,
    /// Most secrets the organization may hold.
    pub limit: i64,
}

const META_COLUMNS: &str = "name, created_by, created_at, updated_at, last_used_at";

/// `$first, $first+1, …` for `n` bound values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// Creates or replaces a named secret; `true` when it was created. The
    /// organization row is locked first, so concurrent writers count exactly
    /// (`QuotaExceeded` past `limit`); `KeyRotated` when the data key changed
    /// since the value was sealed. Audited (`secret.put`) in the same
    /// transaction.
    pub async fn put_named_secret(
        &self,
        org_id: &OrgId,
        put: &SecretPut<'_>,
    ) -> Result<(bool, SecretMeta), StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            lock_org(&mut tx, org_id).await?;
            check_key(&mut tx, self.dialect, org_id, put.key_version).await?;
            let t = self.now();
            let replaced = sqlx::query(
                "UPDATE named_secrets SET value_ct = $3, key_version = $4, updated_at = $5 \
             WHERE org_id = $1 AND name = $2",
            )
            .bind(org_id)
            .bind(put.name)
            .bind(put.value_ct)
            .bind(put.key_version)
            .bind(t)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !replaced {
                let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM named_secrets WHERE org_id = $1")
                    .bind(org_id)
                    .fetch_one(&mut *tx)
                    .await?;
                if count >= put.limit {
                    return Err(StoreError::QuotaExceeded {
                        limit: put.limit,
                        count,
                    });
                }
                sqlx::query(
                "INSERT INTO named_secrets (org_id, name, value_ct, key_version, created_by, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6)",
            )
            .bind(org_id)
            .bind(put.name)
            .bind(put.value_ct)
            .bind(put.key_version)
            .bind(put.actor)
            .bind(t)
            .execute(&mut *tx)
            .await?;
            }
            let event = AuditEvent::for_secret(org_id, put.name, "secret.put", put.actor)
                .with_detail(serde_json::json!({"name": put.name, "created": !replaced}));
            audit::insert(&mut tx, &event, t).await?;
            let meta: SecretMeta = sqlx::query_as(&format!(
                "SELECT {META_COLUMNS} FROM named_secrets WHERE org_id = $1 AND name = $2"
            ))
            .bind(org_id)
            .bind(put.name)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok((!replaced, meta))
        })
        .await
    }

    /// An organization's named secrets, by name (at most `limit`).
    pub async fn named_secrets(&self, org_id: &OrgId, limit: i64) -> Result<Vec<SecretMeta>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(&format!(
                "SELECT {META_COLUMNS} FROM named_secrets WHERE org_id = $1 ORDER BY name LIMIT $2"
            ))
            .bind(org_id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// Deletes a named secret (audited, `secret.delete`); `false` if there was none.
    pub async fn delete_named_secret(&self, org_id: &OrgId, name: &str, actor: &str) -> Result<bool, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let done = sqlx::query("DELETE FROM named_secrets WHERE org_id = $1 AND name = $2")
                .bind(org_id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            if done.rows_affected() == 0 {
                return Ok(false);
            }
            let event = AuditEvent::for_secret(org_id, name, "secret.delete", actor);
            audit::insert(&mut tx, &event, self.now()).await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    /// The sealed values of those of `names` that exist, in one read.
    pub async fn sealed_secrets(&self, org_id: &OrgId, names: &[String]) -> Result<Vec<SealedSecret>, StoreError> {
        self.timed(async move {
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let sql = format!(
            "SELECT name, value_ct, key_version FROM named_secrets WHERE org_id = $1 AND name IN ({}) ORDER BY name",
            placeholders(2, names.len())
        );
            let mut query = sqlx::query_as(&sql).bind(org_id);
            for name in names {
                query = query.bind(name);
            }
            Ok(query.fetch_all(&self.pool).await?)
        })
        .await
    }

    /// Records uses of named secrets: `last_used_at` and one `secret.resolve`
    /// event per name, in one transaction. Returns the names recorded (those
    /// that still exist): only their values may be handed out.
    pub async fn record_secret_uses(
        &self,
        org_id: &OrgId,
        names: &[String],
        actor: &str,
    ) -> Result<Vec<String>, StoreError> {
        self.timed(async move {
            if names.is_empty() {
                return Ok(Vec::new());
            }
            let mut tx = self.begin_write().await?;
            let t = self.now();
            let sql = format!(
                "UPDATE named_secrets SET last_used_at = $2 WHERE org_id = $1 AND name IN ({}) RETURNING name",
                placeholders(3, names.len())
            );
            let mut query = sqlx::query_scalar(&sql).bind(org_id).bind(t);
            for name in names {
                query = query.bind(name);
            }
            let mut used: Vec<String> = query.fetch_all(&mut *tx).await?;
            used.sort();
            for name in &used {
                audit::insert(
                    &mut tx,
                    &AuditEvent::for_secret(org_id, name, "secret.resolve", actor),
                    t,
                )
                .await?;
            }
            tx.commit().await?;
            Ok(used)
        })
        .await
    }

    /// Named secrets of an organization sealed under a key older than `version`.
    pub async fn secrets_below_key(
        &self,
        org_id: &OrgId,
        version: i64,
        after_name: &str,
        limit: i64,
    ) -> Result<Vec<SealedSecret>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(
                "SELECT name, value_ct, key_version FROM named_secrets \
             WHERE org_id = $1 AND key_version < $2 AND name > $4 ORDER BY name LIMIT $3",
            )
            .bind(org_id)
            .bind(version)
            .bind(limit)
            .bind(after_name)
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// Re-seals one named secret under a new data key (rotation), only if its
    /// ciphertext is still the one that was read.
    pub async fn reseal_secret(
        &self,
        org_id: &OrgId,
        name: &str,
        old_ct: &str,
        new_ct: &str,
        key_version: i64,
    ) -> Result<bool, StoreError> {
        self.timed(async move {
        self.reseal(
            "UPDATE named_secrets SET value_ct = $1, key_version = $2 WHERE org_id = $3 AND name = $4 AND value_ct = $5",
            (org_id, name),
            (old_ct, new_ct),
            key_version,
        )
        .await
    })
        .await
    }
}
