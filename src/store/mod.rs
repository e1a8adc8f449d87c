//! All SQL lives here, behind methods. One schema, two dialects: the same
//! statements run on SQLite (embedded, default) and PostgreSQL (shared by
//! replicas) through sqlx's `Any` driver; ids are UUID text and times are
//! unix seconds so both dialects agree. Migrations live in
//! `migrations/{postgres,sqlite}`.
//!
//! Every write goes through [`Store::begin_write`] (SQLite's writers queue in
//! process there). Every write of sealed secrets is conditional on what its
//! writer read: the credential's `secret_version` (compare-and-swap), the
//! organization's current data key, and for refreshes the lease.

mod admin;
mod api_keys;
mod audit;
mod creates;
mod credentials;
mod error;
mod expiry;
mod idempotency;
mod ids;
mod kept;
mod key_check;
mod listing;
mod migrations;
mod named_secrets;
mod oauth;
mod oauth_apps;
mod orgs;
mod outbox;
mod quota;
mod reads;
mod refresh;
mod replicas;
mod row;
mod sessions;
mod sharing;
mod time_limit;
mod uses;
mod webhook_deliveries;
mod webhooks;
mod write_tx;

pub use admin::{CounterFix, OrgSummary, Repair};
pub use api_keys::{ApiKeyInfo, ApiKeyRow, KeyRef};
pub use audit::{AuditEvent, AuditRow, Usage};
pub use creates::PendingCreate;
pub use credentials::{MintedWrite, NewCredential, SecretWrite};
pub use error::StoreError;
pub use idempotency::{IdempotencyRecord, KeptRequest, IDEMPOTENCY_TTL_SECS};
pub(crate) use key_check::{check_key, current_key};
pub use listing::{CredentialFilter, CredentialPage, HealthFilter, ListedCredential, Served, Viewer};
pub use named_secrets::{SealedSecret, SecretMeta, SecretPut};
pub use oauth::{GrantTarget, OAuthGrant, OAuthStateRow};
pub use oauth_apps::{AppDeletion, AppPut, OAuthAppRow};
pub use orgs::OrgKeyRow;
pub use outbox::{Notification, OutboxEvent};
pub use reads::{CredentialRead, Found};
pub use refresh::{PendingRefresh, RefreshFailure, RefreshedTokens};
pub use row::{CredentialRow, LastError};
pub use sessions::{NewPageSession, PageSessionRow};
pub use sharing::{sharing_detail, UsageSummary, UserRemoval};
use time_limit::Abandoned;
pub use time_limit::OP_TIMEOUT;
pub use uses::{ReadAt, UseOutcome, UseRecord, LAST_USED_EVERY_SECS};
pub use webhook_deliveries::{Attempt, DeliveryRow, DueDelivery};
pub use webhooks::{EndpointPut, EndpointRow};

use std::str::FromStr;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{Any, AnyPool, Executor};
use write_tx::WriteTx;

use crate::clock::Clock;

/// SQLite's heap in this process (the page caches and prepared statements
/// of every connection) is kept under this many bytes: past it, SQLite
/// reuses cache pages rather than grow. Eight connections with their own
/// 2 MiB caches and statement caches otherwise held the server at 73 MiB
/// after the load benchmark; with it, 48 MiB, at the same speed.
pub const SQLITE_HEAP_LIMIT: i64 = 16 * 1024 * 1024;

/// Which SQL server is behind the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// `($1, …, $cols), (…), …`: the placeholders of a multi-row `VALUES` of
/// `rows` rows.
pub(crate) fn values(rows: usize, cols: usize) -> String {
    let row = |r: usize| {
        let marks: Vec<String> = (1..=cols).map(|c| format!("${}", r * cols + c)).collect();
        format!("({})", marks.join(", "))
    };
    (0..rows).map(row).collect::<Vec<_>>().join(", ")
}

/// How long a PostgreSQL statement waits for a lock another session holds
/// before it gives up (`lock_timeout`; then 503 with Retry-After): as long
/// as SQLite's busy timeout, and shorter than an operation's own limit
/// ([`OP_TIMEOUT`]), so that a wait for a lock ends as such. Without it, a
/// session that held a lock for ever kept every writer behind it, and its
/// pool connection, waiting.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(8);

/// The store: a connection pool, its dialect and the clock.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    clock: Clock,
    /// Queue of this process's SQLite writers.
    sqlite_writer: std::sync::Arc<tokio::sync::Mutex<()>>,
    /// Listing totals already counted, by listing version.
    totals: std::sync::Arc<listing::Totals>,
    /// Where numbered listing pages start, by listing version.
    page_starts: std::sync::Arc<listing::PageStarts>,
    /// Listing pages read, reused while unchanged.
    pages: std::sync::Arc<listing::Pages>,
    /// The listing pages and totals being read.
    flights: std::sync::Arc<listing::Flights>,
    /// The connections of the grouped credential reads and (Postgres) the
    /// grouped uses.
    kept_reads: std::sync::Arc<kept::Kept>,
    kept_uses: std::sync::Arc<kept::Kept>,
    /// How long one operation may take ([`Store::timed`]).
    op_timeout: Duration,
    /// When an operation last passed that limit.
    abandoned: std::sync::Arc<Abandoned>,
}

/// How a process opens its store.
#[derive(Debug, Clone, Copy)]
pub struct OpenOptions {
    /// Create a SQLite file that is missing (`serve`, `migrate`); other
    /// commands only open one that exists.
    pub create: bool,
    /// Connections in the pool (`CREDGATE_DB_MAX_CONNECTIONS`; `None`:
    /// [`DEFAULT_MAX_CONNECTIONS`] with PostgreSQL, [`SQLITE_MAX_CONNECTIONS`]
    /// with SQLite).
    pub max_connections: Option<u32>,
    /// How long a PostgreSQL statement waits for another session's lock.
    pub lock_timeout: Duration,
}

impl Default for OpenOptions {
    fn default() -> Self {
        Self {
            create: true,
            max_connections: None,
            lock_timeout: LOCK_TIMEOUT,
        }
    }
}

/// Connections in a PostgreSQL pool when `CREDGATE_DB_MAX_CONNECTIONS` is not set.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;
/// Connections in a SQLite pool when it is not set: one writer works at a
/// time, and each connection keeps its own caches (16 measured 9 MiB more
/// resident and slower deep pages than 8 in `load_bench`).
pub const SQLITE_MAX_CONNECTIONS: u32 = 8;

impl Store {
    /// Connects to `sqlite://…` (the file is created when missing) or `postgres://…`.
    pub async fn connect(url: &str, clock: Clock) -> Result<Self, sqlx::Error> {
        Self::open(url, clock, OpenOptions::default()).await
    }

    /// Connects with the options given. PostgreSQL connections name
    /// themselves `application_name=credgate` (unless the URL names
    /// another) and do not report notices below warnings.
    pub async fn open(url: &str, clock: Clock, how: OpenOptions) -> Result<Self, sqlx::Error> {
        let OpenOptions {
            create,
            max_connections,
            lock_timeout,
        } = how;
        let max_connections = max_connections.unwrap_or(match url.starts_with("sqlite:") {
            true => SQLITE_MAX_CONNECTIONS,
            false => DEFAULT_MAX_CONNECTIONS,
        });
        let max_connections = max_connections.max(1);
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
                let mode = if create { "rwc" } else { "rw" };
                let url = if url.contains("mode=") {
                    url.to_owned()
                } else if url.contains('?') {
                    format!("{url}&mode={mode}")
                } else {
                    format!("{url}?mode={mode}")
                };
                let opts = AnyPoolOptions::new()
                    .max_connections(max_connections)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                format!(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 8000; \
                                 PRAGMA soft_heap_limit = {SQLITE_HEAP_LIMIT};"
                                )
                                .as_str(),
                            )
                            .await?;
                            Ok(())
                        })
                    });
                (url, opts)
            }
            Dialect::Postgres => {
                let millis = lock_timeout.as_millis().max(1);
                let opts = AnyPoolOptions::new()
                    .max_connections(max_connections)
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                format!("SET lock_timeout = {millis}; SET client_min_messages = warning").as_str(),
                            )
                            .await?;
                            Ok(())
                        })
                    });
                let url = if url.contains("application_name=") {
                    url.to_owned()
                } else if url.contains('?') {
                    format!("{url}&application_name=credgate")
                } else {
                    format!("{url}?application_name=credgate")
                };
                (url, opts)
            }
        };
        let _ = sqlx::any::AnyConnectOptions::from_str(&url)?;
        // A store that cannot hand out a connection within 2 s is unavailable:
        // callers get a quick 503 rather than a long wait.
        // No ping before each acquire: a dead connection fails its statement,
        // which is classified as unavailable (503) and dropped by the pool,
        // instead of every request paying a round trip.
        // A connection whose operation passed its time limit goes back to
        // the pool mid-statement, and sqlx pings it there: to a peer that
        // stopped answering without closing, that ping never returns, and
        // the connection's slot is lost until TCP gives up (about 15
        // minutes; sqlx 0.8 offers no way to set TCP keepalive). For two
        // minutes after such a timeout, connections given back are first
        // pinged within a second, and closed when that fails (sqlx's own
        // ping is then never sent). Otherwise nothing is added.
        let abandoned = std::sync::Arc::new(Abandoned::default());
        let watched = abandoned.clone();
        let pool = options
            .acquire_timeout(Duration::from_secs(2))
            .test_before_acquire(false)
            .after_release(move |conn, _| {
                let watched = watched.clone();
                Box::pin(async move { Ok(watched.may_keep(conn).await) })
            })
            .connect(&url)
            .await?;
        Ok(Self {
            pool,
            dialect,
            clock,
            sqlite_writer: Default::default(),
            totals: Default::default(),
            page_starts: Default::default(),
            pages: Default::default(),
            flights: Default::default(),
            kept_reads: Default::default(),
            kept_uses: Default::default(),
            op_timeout: OP_TIMEOUT,
            abandoned,
        })
    }

    /// How commits are made durable, as the database says for one of the
    /// pool's connections: SQLite's `synchronous` (`2`: FULL, each commit
    /// synced, durable through a power loss), PostgreSQL's
    /// `synchronous_commit` (`off` may lose the last commits on a crash).
    pub async fn commit_durability(&self) -> Result<String, StoreError> {
        Ok(match self.dialect {
            Dialect::Sqlite => sqlx::query_scalar::<_, i64>("PRAGMA synchronous")
                .fetch_one(&self.pool)
                .await?
                .to_string(),
            Dialect::Postgres => {
                sqlx::query_scalar::<_, String>("SELECT current_setting('synchronous_commit')")
                    .fetch_one(&self.pool)
                    .await?
            }
        })
    }

    /// Which dialect this store speaks.
    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Unix seconds now, by the store's clock.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// Is the database reachable?
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }

    /// Refreshes the planner's statistics and, on Postgres, the visibility
    /// map (after bulk loads).
    pub async fn analyze(&self) -> Result<(), StoreError> {
        // VACUUM too: it sets the visibility map, without which Postgres
        // cannot answer counts and pages from the indexes alone.
        let sql = match self.dialect {
            Dialect::Postgres => "VACUUM ANALYZE",
            Dialect::Sqlite => "ANALYZE",
        };
        sqlx::query(sql).execute(&self.pool).await?;
        Ok(())
    }

    /// Starts a transaction that will write. SQLite has one writer: this
    /// process's writers queue on a mutex (in order, instead of sleeping in
    /// SQLite's busy handler), and the transaction takes the file's write
    /// lock at once (`BEGIN IMMEDIATE`), so writers never deadlock on upgrade.
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, sqlx::Error> {
        match self.dialect {
            Dialect::Sqlite => {
                let queue = self.sqlite_writer.clone().lock_owned().await;
                WriteTx::sqlite(&self.pool, queue).await
            }
            Dialect::Postgres => WriteTx::postgres(&self.pool).await,
        }
    }

    /// One statement on its own write transaction.
    pub(crate) async fn execute_write<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>>,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        let done = query.execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Closes the pool (its kept connections given back first: closing
    /// waits for every connection).
    pub async fn close(&self) {
        self.kept_reads.release().await;
        self.kept_uses.release().await;
        self.pool.close().await;
    }
}
