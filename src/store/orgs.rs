//! Organizations, their wrapped data keys, per-provider limits and API keys.

use sqlx::Row;

use super::{Store, StoreError};
use crate::crypto::WrappedKey;

/// One wrapped data key of an organization.
#[derive(Debug, Clone)]
pub struct OrgKeyRow {
    /// Organization.
    pub org_id: String,
    /// Key version (1, 2, … after each `rotate-org`).
    pub version: i64,
    /// The wrapped key.
    pub wrapped: WrappedKey,
}

impl Store {
    /// Creates an organization with its first data key.
    pub async fn insert_org(&self, id: &str, name: &str, key: &WrappedKey) -> Result<(), StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let t = self.now();
            sqlx::query("INSERT INTO organizations (id, name, key_version, created_at) VALUES ($1, $2, 1, $3)")
                .bind(id)
                .bind(name)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
            "INSERT INTO org_keys (org_id, version, wrapped_key, master_kid, created_at) VALUES ($1, 1, $2, $3, $4)",
        )
        .bind(id)
        .bind(&key.token)
        .bind(&key.kid)
        .bind(t)
        .execute(&mut *tx)
        .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Does the organization exist?
    /// Does the store hold any organization (and so data keys that only the
    /// master key they were wrapped under can open)?
    pub async fn holds_organizations(&self) -> Result<bool, StoreError> {
        self.timed(async move {
            let any = sqlx::query("SELECT 1 FROM organizations LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
            Ok(any.is_some())
        })
        .await
    }

    pub async fn org_exists(&self, id: &str) -> Result<bool, StoreError> {
        self.timed(async move {
            let row = sqlx::query("SELECT 1 FROM organizations WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.is_some())
        })
        .await
    }

    /// Deletes an organization with everything it owns, its data keys included.
    pub async fn delete_org(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        // Children first: a cascade would work too, but explicit deletes make
        // the crypto-shredding order obvious (ciphertexts, then their keys).
        for sql in [
            "DELETE FROM oauth_states WHERE org_id = $1",
            "DELETE FROM outbox WHERE org_id = $1",
            "DELETE FROM credentials WHERE org_id = $1",
            "DELETE FROM named_secrets WHERE org_id = $1",
            "DELETE FROM audit_events WHERE org_id = $1",
            "DELETE FROM api_keys WHERE org_id = $1",
            "DELETE FROM org_limits WHERE org_id = $1",
            "DELETE FROM credential_counts WHERE org_id = $1",
            "DELETE FROM org_keys WHERE org_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await?;
        }
        let done = sqlx::query("DELETE FROM organizations WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Sets the per-organization override of one provider's credential limit.
    pub async fn set_org_limit(&self, org_id: &str, provider: &str, max: i64) -> Result<(), StoreError> {
        self.timed(async move {
            self.execute_write(
                sqlx::query(
                    "INSERT INTO org_limits (org_id, provider, max_count) VALUES ($1, $2, $3) \
             ON CONFLICT (org_id, provider) DO UPDATE SET max_count = excluded.max_count",
                )
                .bind(org_id)
                .bind(provider)
                .bind(max),
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// The organization's current data key version.
    pub async fn org_key_version(&self, org_id: &str) -> Result<i64, StoreError> {
        self.timed(async move {
            let row = sqlx::query("SELECT key_version FROM organizations WHERE id = $1")
                .bind(org_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
            Ok(row.try_get(0)?)
        })
        .await
    }

    /// One wrapped data key.
    pub async fn org_key(&self, org_id: &str, version: i64) -> Result<OrgKeyRow, StoreError> {
        self.timed(async move {
            let row = sqlx::query("SELECT wrapped_key, master_kid FROM org_keys WHERE org_id = $1 AND version = $2")
                .bind(org_id)
                .bind(version)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)?;
            Ok(OrgKeyRow {
                org_id: org_id.to_owned(),
                version,
                wrapped: WrappedKey {
                    token: row.try_get(0)?,
                    kid: row.try_get(1)?,
                },
            })
        })
        .await
    }

    /// The ids of the master keys that wrap the stored data keys.
    pub async fn master_kids_in_use(&self) -> Result<Vec<String>, StoreError> {
        self.timed(async move {
            Ok(
                sqlx::query_scalar("SELECT DISTINCT master_kid FROM org_keys ORDER BY master_kid")
                    .fetch_all(&self.pool)
                    .await?,
            )
        })
        .await
    }

    /// Every wrapped data key, optionally only those not wrapped by `except_kid`.
    pub async fn org_keys(&self, except_kid: Option<&str>) -> Result<Vec<OrgKeyRow>, StoreError> {
        self.timed(async move {
            let rows = sqlx::query(
                "SELECT org_id, version, wrapped_key, master_kid FROM org_keys \
             WHERE $1 IS NULL OR master_kid <> $1 ORDER BY org_id, version",
            )
            .bind(except_kid)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(OrgKeyRow {
                        org_id: r.try_get(0)?,
                        version: r.try_get(1)?,
                        wrapped: WrappedKey {
                            token: r.try_get(2)?,
                            kid: r.try_get(3)?,
                        },
                    })
                })
                .collect()
        })
        .await
    }

    /// Replaces one wrapped key, only if it is still the one that was read.
    pub async fn rewrap_org_key(&self, row: &OrgKeyRow, new: &WrappedKey) -> Result<bool, StoreError> {
        self.timed(async move {
            let done = self
                .execute_write(
                    sqlx::query(
                        "UPDATE org_keys SET wrapped_key = $1, master_kid = $2 \
             WHERE org_id = $3 AND version = $4 AND wrapped_key = $5",
                    )
                    .bind(&new.token)
                    .bind(&new.kid)
                    .bind(&row.org_id)
                    .bind(row.version)
                    .bind(&row.wrapped.token),
                )
                .await?;
            Ok(done == 1)
        })
        .await
    }

    /// Adds a new data key version and makes it current; returns the version.
    pub async fn add_org_key(&self, org_id: &str, key: &WrappedKey) -> Result<i64, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let row = sqlx::query(
                "UPDATE organizations SET key_version = key_version + 1 WHERE id = $1 RETURNING key_version",
            )
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            let version: i64 = row.try_get(0)?;
            sqlx::query(
            "INSERT INTO org_keys (org_id, version, wrapped_key, master_kid, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(org_id)
        .bind(version)
        .bind(&key.token)
        .bind(&key.kid)
        .bind(self.now())
        .execute(&mut *tx)
        .await?;
            tx.commit().await?;
            Ok(version)
        })
        .await
    }

    /// Deletes the organization's data keys older than `current` that no
    /// credential, named secret or OAuth state uses any more; returns how many went.
    pub async fn prune_org_keys(&self, org_id: &str, current: i64) -> Result<u64, StoreError> {
        self.timed(async move {
        let done = self.execute_write(
            sqlx::query(
            "DELETE FROM org_keys WHERE org_id = $1 AND version < $2 \
             AND NOT EXISTS (SELECT 1 FROM credentials c WHERE c.org_id = org_keys.org_id AND c.key_version = org_keys.version) \
             AND NOT EXISTS (SELECT 1 FROM named_secrets n WHERE n.org_id = org_keys.org_id AND n.key_version = org_keys.version) \
             AND NOT EXISTS (SELECT 1 FROM oauth_states s WHERE s.org_id = org_keys.org_id AND s.key_version = org_keys.version)",
        )
        .bind(org_id)
        .bind(current),
        )
        .await?;
        Ok(done)
    })
        .await
    }

    /// How many credentials and named secrets of an organization are sealed
    /// under a key older than `version`.
    pub async fn count_below_key(&self, org_id: &str, version: i64) -> Result<i64, StoreError> {
        self.timed(async move {
            let row = sqlx::query(
                "SELECT (SELECT COUNT(*) FROM credentials WHERE org_id = $1 AND key_version < $2) \
             + (SELECT COUNT(*) FROM named_secrets WHERE org_id = $1 AND key_version < $2)",
            )
            .bind(org_id)
            .bind(version)
            .fetch_one(&self.pool)
            .await?;
            Ok(row.try_get(0)?)
        })
        .await
    }
}
