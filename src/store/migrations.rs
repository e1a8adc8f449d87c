//! This release's migrations, applied tolerantly, and what can be read of
//! a schema before they run.

use std::sync::LazyLock;

use sqlx::migrate::Migrator;
use sqlx::Executor;

use super::{Dialect, Store, StoreError};

/// This release's migrations. Applied ones it does not know (a newer
/// release's, during a rolling upgrade or after a rollback) are left alone:
/// no migration drops or renames a table or column (indexes and triggers
/// are replaced), so an older release runs on the newer schema.
static PG_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| tolerant(sqlx::migrate!("./migrations/postgres")));
static SQLITE_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| tolerant(sqlx::migrate!("./migrations/sqlite")));

fn tolerant(mut migrator: Migrator) -> Migrator {
    migrator.set_ignore_missing(true);
    migrator
}

impl Store {
    /// This release's migrations that the database has not applied (all of
    /// them for a database that never was migrated).
    pub async fn pending_migrations(&self) -> Result<Vec<i64>, StoreError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &*SQLITE_MIGRATIONS,
            Dialect::Postgres => &*PG_MIGRATIONS,
        };
        let applied: Vec<i64> = if self.has_table("_sqlx_migrations").await? {
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        Ok(migrator
            .iter()
            .map(|m| m.version)
            .filter(|v| !applied.contains(v))
            .collect())
    }

    /// Whether the schema has table `name` (before migrating, a database
    /// may be new).
    pub async fn has_table(&self, name: &str) -> Result<bool, StoreError> {
        let sql = match self.dialect {
            Dialect::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = $1",
            Dialect::Postgres => {
                "SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema() AND tablename = $1"
            }
        };
        let n: i64 = sqlx::query_scalar(sql).bind(name).fetch_one(&self.pool).await?;
        Ok(n > 0)
    }

    /// Every wrapped data key, read with a statement every release's schema
    /// answers (before migrating); empty for a new database.
    pub async fn wrapped_keys_any_release(&self) -> Result<Vec<crate::crypto::WrappedKey>, StoreError> {
        if !self.has_table("org_keys").await? {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT wrapped_key, master_kid FROM org_keys WHERE wrapped_key <> ''")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(token, kid)| crate::crypto::WrappedKey { token, kid })
            .collect())
    }

    /// Applies pending migrations for this dialect.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self.dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await,
            // The migrations wait as long as another replica's migrations
            // run (they take a lock for that), not the lock timeout: on a
            // connection of their own without it, closed afterwards.
            // (`run_direct`: `run` on a connection makes the future fail to
            // be `Send`, sqlx's known lifetime limitation.)
            Dialect::Postgres => {
                let mut conn = self.pool.acquire().await?.detach();
                conn.execute("SET lock_timeout = 0").await?;
                let outcome = PG_MIGRATIONS.run_direct(&mut conn).await;
                let _ = sqlx::Connection::close(conn).await;
                outcome
            }
        }
    }
}
