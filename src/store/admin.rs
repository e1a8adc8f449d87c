//! What the operator's commands read and repair: organizations with their
//! counts, limit overrides, and the derived data (per-provider counters,
//! listing versions) checked against the rows they are derived from.

use super::quota::lock_org;
use super::{Store, StoreError};
use crate::ids::OrgId;

/// One organization as `org list` and `org delete` show it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrgSummary {
    pub id: OrgId,
    pub name: String,
    pub created_at: i64,
    pub credentials: i64,
    pub api_keys: i64,
    pub named_secrets: i64,
}

/// A per-provider counter that disagreed with the credentials it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CounterFix {
    pub org_id: OrgId,
    pub provider: String,
    /// What the counter said (`None`: it was missing).
    pub was: Option<i64>,
    /// How many credentials there are.
    pub is: i64,
}

/// What `repair` changed.
#[derive(Debug, Clone, Default)]
pub struct Repair {
    /// Counters set to the number of credentials.
    pub counters: Vec<CounterFix>,
    /// Organizations whose listing version was raised, so every replica
    /// counts their listings anew.
    pub listing_versions: u64,
}

#[derive(sqlx::FromRow)]
struct CountColumns {
    org_id: OrgId,
    provider: String,
    counted: Option<i64>,
    actual: i64,
}

impl Store {
    /// Organizations not being deleted (one, or all by creation), with
    /// their numbers of credentials, unrevoked API keys and named secrets.
    pub async fn org_summaries(&self, only: Option<&OrgId>) -> Result<Vec<OrgSummary>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(
                "SELECT o.id, o.name, o.created_at, \
                 (SELECT COUNT(*) FROM credentials c WHERE c.org_id = o.id) AS credentials, \
                 (SELECT COUNT(*) FROM api_keys k WHERE k.org_id = o.id AND k.revoked_at IS NULL) AS api_keys, \
                 (SELECT COUNT(*) FROM named_secrets s WHERE s.org_id = o.id) AS named_secrets \
                 FROM organizations o WHERE o.deleted_at IS NULL AND ($1 = '' OR o.id = $1) \
                 ORDER BY o.created_at, o.id",
            )
            .bind(only.map_or("", |o| o.as_str()))
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// How many stored data keys each master key id wraps.
    pub async fn data_keys_by_master_kid(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_as(
                "SELECT master_kid, COUNT(*) FROM org_keys WHERE wrapped_key <> '' GROUP BY master_kid ORDER BY master_kid",
            )
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// The organization's per-provider limit overrides, by provider.
    pub async fn org_limits(&self, org_id: &OrgId) -> Result<Vec<(String, i64)>, StoreError> {
        self.timed(async move {
            Ok(
                sqlx::query_as("SELECT provider, max_count FROM org_limits WHERE org_id = $1 ORDER BY provider")
                    .bind(org_id)
                    .fetch_all(&self.pool)
                    .await?,
            )
        })
        .await
    }

    /// Removes one override (the default applies again); whether there was one.
    pub async fn clear_org_limit(&self, org_id: &OrgId, provider: &str) -> Result<bool, StoreError> {
        self.timed(async move {
            let n = self
                .execute_write(
                    sqlx::query("DELETE FROM org_limits WHERE org_id = $1 AND provider = $2")
                        .bind(org_id)
                        .bind(provider),
                )
                .await?;
            Ok(n > 0)
        })
        .await
    }

    /// Checks the derived data against the rows it is derived from and
    /// fixes what drifted: each organization's per-provider counters (set to
    /// the number of its credentials, under the organization's lock, as a
    /// create takes it) and its listing version (raised, so no replica keeps
    /// a total counted before). Safe while credgate serves.
    pub async fn repair(&self) -> Result<Repair, StoreError> {
        let orgs: Vec<OrgId> = self
            .timed(async move {
                Ok(
                    sqlx::query_scalar("SELECT id FROM organizations WHERE deleted_at IS NULL ORDER BY id")
                        .fetch_all(&self.pool)
                        .await?,
                )
            })
            .await?;
        let mut repair = Repair::default();
        for org in &orgs {
            let fixed = self
                .timed(async move {
                    let mut tx = self.begin_write().await?;
                    match lock_org(&mut tx, org).await {
                        Err(StoreError::NotFound) => return Ok(Vec::new()),
                        other => other?,
                    }
                    let drifted: Vec<CountColumns> = sqlx::query_as(
                        "SELECT p.provider, $1 AS org_id, \
                         (SELECT n.count FROM credential_counts n WHERE n.org_id = $1 AND n.provider = p.provider) \
                           AS counted, \
                         (SELECT COUNT(*) FROM credentials c WHERE c.org_id = $1 AND c.provider = p.provider) AS actual \
                         FROM (SELECT provider FROM credentials WHERE org_id = $1 \
                               UNION SELECT provider FROM credential_counts WHERE org_id = $1) p \
                         ORDER BY p.provider",
                    )
                    .bind(org)
                    .fetch_all(&mut *tx)
                    .await?;
                    let mut fixed = Vec::new();
                    for row in drifted.into_iter().filter(|r| r.counted != Some(r.actual)) {
                        sqlx::query(
                            "INSERT INTO credential_counts (org_id, provider, count) VALUES ($1, $2, $3) \
                             ON CONFLICT (org_id, provider) DO UPDATE SET count = excluded.count",
                        )
                        .bind(org)
                        .bind(&row.provider)
                        .bind(row.actual)
                        .execute(&mut *tx)
                        .await?;
                        fixed.push(CounterFix {
                            org_id: row.org_id,
                            provider: row.provider,
                            was: row.counted,
                            is: row.actual,
                        });
                    }
                    sqlx::query(
                        "INSERT INTO listing_versions (org_id, version) VALUES ($1, 1) \
                         ON CONFLICT (org_id) DO UPDATE SET version = listing_versions.version + 1",
                    )
                    .bind(org)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    Ok(fixed)
                })
                .await?;
            repair.counters.extend(fixed);
            repair.listing_versions += 1;
        }
        Ok(repair)
    }
}
