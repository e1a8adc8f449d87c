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
    ///
    /// On SQLite `COMMIT` runs on the connection this value still holds:
    /// refused (a deferred constraint, a full disk), SQLite can leave the
    /// transaction open, and so can a `COMMIT` given up while it runs (the
    /// store's time limit drops this future). Either way the value is
    /// dropped holding the connection, and rolls it back (a no-op after a
    /// `COMMIT` that went through) before it or the slot is given back.
    pub(crate) async fn commit(mut self) -> Result<(), sqlx::Error> {
        if let Some(Inner::Postgres(tx)) = self.inner.take_if(|i| matches!(i, Inner::Postgres(_))) {
            return tx.commit().await;
        }
        self.execute("COMMIT").await?;
        // Committed: the connection goes back to the pool as it is.
        self.inner = None;
        Ok(())
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::Context;

    use sqlx::any::AnyPoolOptions;
    use sqlx::Executor;

    use super::WriteTx;

    /// A `COMMIT` dropped while it runs (the store's time limit gives up
    /// on it) and then refused by SQLite leaves its transaction open: here
    /// a deferred foreign key refuses it, as a full disk would. The
    /// connection must not go back to the pool inside that transaction.
    #[tokio::test]
    async fn a_commit_given_up_while_it_runs_leaves_no_transaction_open() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("w.db").display());
        let pool = AnyPoolOptions::new().max_connections(1).connect(&url).await.unwrap();
        pool.execute("PRAGMA foreign_keys = ON").await.unwrap();
        pool.execute(
            "CREATE TABLE parent (id INTEGER PRIMARY KEY); \
             CREATE TABLE child (p INTEGER REFERENCES parent(id) DEFERRABLE INITIALLY DEFERRED)",
        )
        .await
        .unwrap();
        let queue = Arc::new(tokio::sync::Mutex::new(()));

        // The commit must still be running when it is given up: SQLite's
        // worker thread may answer within the first poll (then nothing was
        // given up, the refusal came back as usual), so try again.
        let mut given_up = false;
        for _ in 0..100 {
            let mut tx = WriteTx::sqlite(&pool, queue.clone().lock_owned().await).await.unwrap();
            tx.execute("INSERT INTO child (p) VALUES (1)").await.unwrap();
            let mut commit = Box::pin(tx.commit());
            let first = commit
                .as_mut()
                .poll(&mut Context::from_waker(futures::task::noop_waker_ref()));
            drop(commit);
            if first.is_pending() {
                given_up = true;
                break;
            }
            assert!(matches!(first, std::task::Poll::Ready(Err(_))), "{first:?}");
        }
        assert!(given_up, "every commit was answered within its first poll");
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut tx = WriteTx::sqlite(&pool, queue.clone().lock_owned().await).await?;
            tx.execute("INSERT INTO parent (id) VALUES (7)").await?;
            tx.commit().await
        })
        .await
        .expect("the next write waited for ever");
        let orphans: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM child")
            .fetch_one(&pool)
            .await
            .unwrap();

        assert!(next.is_ok(), "the next write failed: {next:?}");
        assert_eq!(orphans, 0, "the refused commit's row was kept");
    }
}
