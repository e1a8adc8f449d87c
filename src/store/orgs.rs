//! Organizations, their wrapped data keys, per-provider limits and API keys.

use super::{Dialect, Store, StoreError};
use crate::crypto::WrappedKey;
use crate::ids::OrgId;

/// One wrapped data key of an organization.
#[derive(Debug, Clone)]
pub struct OrgKeyRow {
    /// Organization.
    pub org_id: OrgId,
    /// Key version (1, 2, … after each `rotate-org`).
    pub version: i64,
    /// The wrapped key.
    pub wrapped: WrappedKey,
}

/// A wrapped data key's columns.
#[derive(sqlx::FromRow)]
struct WrappedColumns {
    wrapped_key: String,
    master_kid: String,
}

/// An `org_keys` row's columns.
#[derive(sqlx::FromRow)]
struct OrgKeyColumns {
    org_id: OrgId,
    version: i64,
    #[sqlx(flatten)]
    wrapped: WrappedColumns,
}

impl Store {
    /// Creates an organization with its first data key.
    pub async fn insert_org(&self, id: &OrgId, name: &str, key: &WrappedKey) -> Result<(), StoreError> {
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

    /// Does the store hold any organization (and so data keys that only the
    /// master key they were wrapped under can open)?
    pub async fn holds_organizations(&self) -> Result<bool, StoreError> {
        self.timed(async move {
            let any = sqlx::query("SELECT 1 FROM organizations WHERE deleted_at IS NULL LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
            Ok(any.is_some())
        })
        .await
    }

    /// Does the organization exist (and is it not being deleted)?
    pub async fn org_exists(&self, id: &OrgId) -> Result<bool, StoreError> {
        self.timed(async move {
            let row = sqlx::query("SELECT 1 FROM organizations WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.is_some())
        })
        .await
    }

    /// Marks an organization deleted, in one short transaction: its data
    /// keys are destroyed (crypto-shredding: what it stored cannot be
    /// decrypted from here on), its API keys revoked, its page sessions and
    /// pending flows ended. The organization row is locked first, as every
    /// write of the organization locks it first, so writes in flight finish
    /// before and later ones find no organization. Its rows are removed
    /// after, in batches ([`Store::purge_deleted_org`]). `NotFound` when there
    /// is no such organization (or it is already marked).
    pub async fn mark_org_deleted(&self, id: &OrgId) -> Result<(), StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let t = self.now();
            let marked = sqlx::query("UPDATE organizations SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL")
                .bind(id)
                .bind(t)
                .execute(&mut *tx)
                .await?;
            if marked.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            for sql in [
                "UPDATE org_keys SET wrapped_key = '' WHERE org_id = $1",
                "UPDATE api_keys SET revoked_at = $2 WHERE org_id = $1 AND revoked_at IS NULL",
                "DELETE FROM page_sessions WHERE org_id = $1 AND $2 = $2",
                "DELETE FROM oauth_states WHERE org_id = $1 AND $2 = $2",
            ] {
                sqlx::query(sql).bind(id).bind(t).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// The organizations marked deleted whose rows are not all removed yet.
    pub async fn deleted_orgs(&self) -> Result<Vec<OrgId>, StoreError> {
        self.timed(async move {
            Ok(
                sqlx::query_scalar("SELECT id FROM organizations WHERE deleted_at IS NOT NULL ORDER BY deleted_at")
                    .fetch_all(&self.pool)
                    .await?,
            )
        })
        .await
    }

    /// Removes up to `batch` rows of an organization marked deleted, in one
    /// short transaction: the next table's rows while any are left, and at
    /// last the organization itself. Returns how many rows went; `0` once
    /// nothing is left (or the organization is not marked deleted).
    pub async fn purge_deleted_org(&self, id: &OrgId, batch: i64) -> Result<u64, StoreError> {
        self.timed(async move {
            let row_id = match self.dialect {
                Dialect::Postgres => "ctid",
                Dialect::Sqlite => "rowid",
            };
            let mut tx = self.begin_write().await?;
            let marked: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM organizations WHERE id = $1 AND deleted_at IS NOT NULL")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if marked.is_none() {
                return Ok(0);
            }
            // Credentials go with their grants (a cascade); what refers to
            // the data keys goes before them.
            for table in [
                "use_outcomes",
                "audit_events",
                "outbox",
                "idempotency_keys",
                "credentials",
                "named_secrets",
                "oauth_apps",
                "webhook_deliveries",
                "webhook_endpoints",
                "api_keys",
                "page_sessions",
                "oauth_states",
                "org_limits",
                "credential_counts",
                "listing_versions",
                "org_keys",
            ] {
                let gone = sqlx::query(&format!(
                    "DELETE FROM {table} WHERE {row_id} IN (SELECT {row_id} FROM {table} WHERE org_id = $1 LIMIT $2)"
                ))
                .bind(id)
                .bind(batch)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if gone > 0 {
                    tx.commit().await?;
                    return Ok(gone);
                }
            }
            let gone = sqlx::query("DELETE FROM organizations WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            Ok(gone)
        })
        .await
    }

    /// Sets the per-organization override of one provider's credential limit.
    pub async fn set_org_limit(&self, org_id: &OrgId, provider: &str, max: i64) -> Result<(), StoreError> {
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
    pub async fn org_key_version(&self, org_id: &OrgId) -> Result<i64, StoreError> {
        self.timed(async move {
            sqlx::query_scalar("SELECT key_version FROM organizations WHERE id = $1 AND deleted_at IS NULL")
                .bind(org_id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or(StoreError::NotFound)
        })
        .await
    }

    /// One wrapped data key.
    pub async fn org_key(&self, org_id: &OrgId, version: i64) -> Result<OrgKeyRow, StoreError> {
        self.timed(async move {
            // A destroyed key (its organization deleted) is no key at all.
            let row: WrappedColumns = sqlx::query_as(
                "SELECT wrapped_key, master_kid FROM org_keys WHERE org_id = $1 AND version = $2 AND wrapped_key <> ''",
            )
            .bind(org_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
            Ok(OrgKeyRow {
                org_id: org_id.to_owned(),
                version,
                wrapped: WrappedKey {
                    token: row.wrapped_key,
                    kid: row.master_kid,
                },
            })
        })
        .await
    }

    /// The ids of the master keys that wrap the stored data keys.
    pub async fn master_kids_in_use(&self) -> Result<Vec<String>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_scalar(
                "SELECT DISTINCT master_kid FROM org_keys WHERE wrapped_key <> '' ORDER BY master_kid",
            )
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// Every wrapped data key, optionally only those not wrapped by `except_kid`.
    pub async fn org_keys(&self, except_kid: Option<&str>) -> Result<Vec<OrgKeyRow>, StoreError> {
        self.timed(async move {
            let rows: Vec<OrgKeyColumns> = sqlx::query_as(
                "SELECT org_id, version, wrapped_key, master_kid FROM org_keys \
             WHERE ($1 IS NULL OR master_kid <> $1) AND wrapped_key <> '' ORDER BY org_id, version",
            )
            .bind(except_kid)
            .fetch_all(&self.pool)
            .await?;
            Ok(rows
                .into_iter()
                .map(|r| OrgKeyRow {
                    org_id: r.org_id,
                    version: r.version,
                    wrapped: WrappedKey {
                        token: r.wrapped.wrapped_key,
                        kid: r.wrapped.master_kid,
                    },
                })
                .collect())
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
    pub async fn add_org_key(&self, org_id: &OrgId, key: &WrappedKey) -> Result<i64, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let version: i64 = sqlx::query_scalar(
                "UPDATE organizations SET key_version = key_version + 1 WHERE id = $1 RETURNING key_version",
            )
            .bind(org_id)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
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
    /// credential, named secret, OAuth app or OAuth state uses any more; returns how many went.
    pub async fn prune_org_keys(&self, org_id: &OrgId, current: i64) -> Result<u64, StoreError> {
        self.timed(async move {
        let done = self.execute_write(
            sqlx::query(
            "DELETE FROM org_keys WHERE org_id = $1 AND version < $2 \
             AND NOT EXISTS (SELECT 1 FROM credentials c WHERE c.org_id = org_keys.org_id AND c.key_version = org_keys.version) \
             AND NOT EXISTS (SELECT 1 FROM named_secrets n WHERE n.org_id = org_keys.org_id AND n.key_version = org_keys.version) \
             AND NOT EXISTS (SELECT 1 FROM oauth_apps a WHERE a.org_id = org_keys.org_id AND a.key_version = org_keys.version) \
             AND NOT EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.org_id = org_keys.org_id AND w.key_version = org_keys.version) \
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

    /// How many credentials, named secrets and OAuth apps of an organization are sealed
    /// under a key older than `version`.
    pub async fn count_below_key(&self, org_id: &OrgId, version: i64) -> Result<i64, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM credentials WHERE org_id = $1 AND key_version < $2) \
             + (SELECT COUNT(*) FROM named_secrets WHERE org_id = $1 AND key_version < $2) \
             + (SELECT COUNT(*) FROM oauth_apps WHERE org_id = $1 AND key_version < $2) \
             + (SELECT COUNT(*) FROM webhook_endpoints WHERE org_id = $1 AND key_version < $2)",
            )
            .bind(org_id)
            .bind(version)
            .fetch_one(&self.pool)
            .await?)
        })
        .await
    }
}
