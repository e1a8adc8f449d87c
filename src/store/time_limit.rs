//! Each store operation's time limit, and what a timeout leaves behind: a
//! connection abandoned mid-statement is checked before the pool keeps it.

use std::time::Duration;

use super::{Store, StoreError};

/// When a store operation last passed its time limit (milliseconds since
/// the first store of the process; `0`: never).
#[derive(Debug, Default)]
pub(super) struct Abandoned(std::sync::atomic::AtomicU64);

/// How long after an abandoned operation the connections given back are
/// checked before sqlx pings them.
const ABANDONED_WATCH: Duration = Duration::from_secs(120);

impl Abandoned {
    fn since_start() -> u64 {
        static START: std::sync::LazyLock<std::time::Instant> = std::sync::LazyLock::new(std::time::Instant::now);
        START.elapsed().as_millis() as u64 + 1
    }

    fn now(&self) {
        self.0.store(Self::since_start(), std::sync::atomic::Ordering::Relaxed);
    }

    fn recently(&self) -> bool {
        let at = self.0.load(std::sync::atomic::Ordering::Relaxed);
        at != 0 && Self::since_start().saturating_sub(at) < ABANDONED_WATCH.as_millis() as u64
    }

    /// May a connection given back to the pool stay there (sqlx then pings
    /// it as usual)? Within [`ABANDONED_WATCH`] of an abandoned operation,
    /// only one that answers a ping within a second.
    pub(super) async fn may_keep(&self, conn: &mut sqlx::AnyConnection) -> bool {
        if !self.recently() {
            return true;
        }
        let answered = tokio::time::timeout(Duration::from_secs(1), sqlx::Connection::ping(conn)).await;
        matches!(answered, Ok(Ok(())))
    }
}

/// How long one store operation may take unless configured
/// (`CREDGATE_DB_TIMEOUT_SECS`).
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

impl StoreError {
    /// Whether the operation was given up at the store's time limit (or the
    /// connection itself timed out): one that asks less of the database may
    /// still pass.
    pub fn passed_time_limit(&self) -> bool {
        matches!(self, Self::Unavailable(sqlx::Error::Io(e)) if e.kind() == std::io::ErrorKind::TimedOut)
    }
}

impl Store {
    /// The same store with another limit on each operation.
    pub fn with_op_timeout(self, limit: Duration) -> Self {
        Self {
            op_timeout: limit,
            ..self
        }
    }

    /// Runs one store operation within the store's time limit. A database
    /// that stops answering without closing the connection (a dead peer, a
    /// firewall that drops) would otherwise hold the request, and the group
    /// writers behind it, for as long as TCP takes to notice: past the
    /// limit it is `Unavailable` (503 with Retry-After). What the operation
    /// had begun is dropped: its transaction is rolled back, or its
    /// connection closed.
    pub(crate) async fn timed<T>(
        &self,
        operation: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.op_timeout, operation).await {
            Ok(outcome) => outcome,
            Err(_) => {
                self.abandoned.now();
                tracing::warn!(
                    limit_secs = self.op_timeout.as_secs_f32(),
                    "a store operation took longer than its limit"
                );
                Err(StoreError::Unavailable(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the database did not answer within the store's time limit",
                ))))
            }
        }
    }
}
