//! The one way the store writes: a transaction that, on SQLite, holds this
//! process's writer slot and is driven by hand (`BEGIN IMMEDIATE` … `COMMIT`)
//! so that a failed commit (a full disk, a read-only file) can never hand a
//! half-open connection back to the pool: the connection is rolled back, or
//! closed when even that fails.

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor, Transaction};
use tokio::sync::OwnedMutexGuard;

enum Inner {
    Postgres(Transaction<'static, Any>),
    Sqlite(PoolConnection<Any>),
}

/// A write transaction; dropped without [`WriteTx::commit`], it rolls back.
pub(crate) struct WriteTx {
    inner: Option<Inner>,
    queue: Option<OwnedMutexGuard<()>>,
}

impl WriteTx {
    /// A Postgres transaction.
    pub(super) async fn postgres(pool: &AnyPool) -> Result<Self, sqlx::Error> {
        Ok(Self {
            inner: Some(Inner::Postgres(pool.begin().await?)),
            queue: None,
        })
    }

    /// A SQLite transaction that takes the file's write lock at once, so
    /// writers never deadlock on upgrade; `queue` is this process's slot.
    ///
    /// The transaction is this value from before `BEGIN` is sent: `BEGIN`
    /// can wait for the file's lock (another process holds it) past the
    /// store's time limit, which drops this future, yet SQLite still
    /// begins once the lock is free. Dropped, the value rolls back what
    /// was begun; a connection back in the pool inside a transaction would
    /// hold the write lock, and fail every write, for good.
    pub(super) async fn sqlite(pool: &AnyPool, queue: OwnedMutexGuard<()>) -> Result<Self, sqlx::Error> {
        let mut tx = Self {
            inner: Some(Inner::Sqlite(pool.acquire().await?)),
            queue: Some(queue),
        };
        tx.execute("BEGIN IMMEDIATE").await?;
        Ok(tx)
    }

    /// Commits, then gives up the writer slot.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        match self.inner.take().expect("open until commit or drop") {
            Inner::Postgres(tx) => tx.commit().await,
            Inner::Sqlite(mut conn) => match conn.execute("COMMIT").await {
                Ok(_) => Ok(()),
                Err(e) => {
                    rollback_or_close(conn).await;
                    Err(e)
                }
            },
        }
    }
}

/// Rolls a SQLite connection back (SQLite may already have: fine), or
/// closes it rather than return it to the pool inside a transaction.
async fn rollback_or_close(mut conn: PoolConnection<Any>) {
    if let Err(e) = conn.execute("ROLLBACK").await {
        if !e.to_string().contains("no transaction is active") {
            tracing::warn!(error = %e, "a failed SQLite transaction could not be rolled back; closing its connection");
            let _ = sqlx::Connection::close(conn.detach()).await;
        }
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if let Some(Inner::Sqlite(conn)) = self.inner.take() {
            // The writer slot is released only after the rollback, so the
            // next writer finds the file unlocked.
            let queue = self.queue.take();
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    rollback_or_close(conn).await;
                    drop(queue);
                });
            }
        }
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        match self.inner.as_ref().expect("open until commit or drop") {
            Inner::Postgres(tx) => tx,
            Inner::Sqlite(conn) => conn,
        }
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        match self.inner.as_mut().expect("open until commit or drop") {
            Inner::Postgres(tx) => tx,
            Inner::Sqlite(conn) => conn,
        }
    }
}
