//! All SQL lives here, behind methods. One schema, two dialects: the same
//! statements run on SQLite (embedded, default) and PostgreSQL (shared by
//! replicas) through sqlx's `Any` driver; ids are UUID text and times are
//! unix seconds so both dialects agree. Migrations live in
//! `migrations/{postgres,sqlite}`.

mod audit;
mod credentials;
mod oauth;
mod orgs;
mod refresh;

pub use audit::{AuditEvent, AuditRow};
pub use credentials::{CredentialFilter, CredentialRow, NewCredential, SecretUpdate};
pub use oauth::{GrantTarget, OAuthGrant, OAuthStateRow};
pub use orgs::{ApiKeyRow, OrgKeyRow};
pub use refresh::{RefreshFailure, RefreshedTokens};

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::{Any, Transaction};
use sqlx::{AnyPool, Executor};

static PG_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/postgres");
static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Which SQL server is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A store error: the database failed, or a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The per-provider credential limit is reached.
    #[error("the organization already has {limit} credentials of this provider")]
    QuotaExceeded {
        /// The limit in force.
        limit: i64,
    },
    /// Another writer changed the row first; read again and retry.
    #[error("the record changed while it was being written")]
    Conflict,
    /// The external account is already connected in another credential.
    #[error("this account is already connected in another credential")]
    AccountTaken,
    /// A row that must exist does not.
    #[error("not found")]
    NotFound,
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// The store: a connection pool and its dialect.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// Queue of this process's SQLite writers.
    sqlite_writer: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// A write transaction (and, with SQLite, this process's writer slot).
pub(crate) struct WriteTx {
    tx: Transaction<'static, Any>,
    _queue: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// Commits, then gives up the writer slot.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.tx.commit().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.tx
    }
}

/// Current time in unix seconds.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Store {
    /// Connects to `sqlite://…` (the file is created when missing) or `postgres://…`.
    pub async fn connect(url: &str) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(sqlx::Error::Configuration(
                "CREDGATE_DATABASE_URL must start with sqlite:// or postgres://".into(),
            ));
        };
        let (url, options) = match dialect {
            Dialect::Sqlite => {
                let url = if url.contains("mode=") {
                    url.to_owned()
                } else if url.contains('?') {
                    format!("{url}&mode=rwc")
                } else {
                    format!("{url}?mode=rwc")
                };
                let opts = AnyPoolOptions::new().max_connections(8).after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 15000;",
                        )
                        .await?;
                        Ok(())
                    })
                });
                (url, opts)
            }
            Dialect::Postgres => (url.to_owned(), AnyPoolOptions::new().max_connections(16)),
        };
        let _ = sqlx::any::AnyConnectOptions::from_str(&url)?;
        let pool = options.acquire_timeout(Duration::from_secs(10)).connect(&url).await?;
        Ok(Self {
            pool,
            dialect,
            sqlite_writer: Default::default(),
        })
    }

    /// Applies pending migrations for this dialect.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match self.dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await,
            Dialect::Postgres => PG_MIGRATIONS.run(&self.pool).await,
        }
    }

    /// Which dialect this store speaks.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Starts a transaction that will write. SQLite has one writer: this
    /// process's writers queue on a mutex (in order, instead of sleeping in
    /// SQLite's busy handler), and the transaction takes the file's write
    /// lock at once (`BEGIN IMMEDIATE`), so writers never deadlock on upgrade.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => {
                let guard = self.sqlite_writer.clone().lock_owned().await;
                let tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
                Ok(WriteTx {
                    tx,
                    _queue: Some(guard),
                })
            }
            Dialect::Postgres => Ok(WriteTx {
                tx: self.pool.begin().await?,
                _queue: None,
            }),
        }
    }

    /// The underlying pool (for tests and benchmarks that seed data).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
