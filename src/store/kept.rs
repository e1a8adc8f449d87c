//! Connections kept between statements by the group writers (one task
//! each, one group at a time). sqlx pings every connection handed back to
//! its pool (a round trip, to find one left mid-statement); a writer that
//! keeps its connection skips that for every group. Dropped after an outage
//! (the next group takes a fresh one) and renewed every minute, so a kept
//! connection lives no longer than the pool's would.

use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection};
use tokio::sync::Mutex;

use super::{Store, StoreError};

/// How long a kept connection is used before it goes back to the pool.
const KEPT_FOR: Duration = Duration::from_secs(60);

/// One kept connection (none until first used).
#[derive(Debug, Default)]
pub(super) struct Kept(Mutex<Option<(PoolConnection<Any>, Instant)>>);

impl Kept {
    /// Gives the connection back to the pool (before the pool closes).
    pub(super) async fn release(&self) {
        self.0.lock().await.take();
    }
}

impl Store {
    /// Runs `statements` on `kept`'s connection (taken from the pool when
    /// there is none); callers using the same `kept` take turns. The
    /// connection is out of the slot while they run: if their future is
    /// dropped mid-statement, it goes back to the pool (which tests it),
    /// never to the next caller.
    pub(super) async fn on_kept<T>(
        &self,
        kept: &Kept,
        statements: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.timed(async move {
            let mut slot = kept.0.lock().await;
            let (mut conn, since) = match slot.take() {
                Some((conn, since)) if since.elapsed() < KEPT_FOR => (conn, since),
                _ => (self.pool.acquire().await?, Instant::now()),
            };
            let outcome = statements(&mut conn).await;
            // After an outage the connection may be broken: it goes back to the
            // pool, and the next caller takes a fresh one.
            if !matches!(outcome, Err(StoreError::Unavailable(_))) {
                *slot = Some((conn, since));
            }
            outcome
        })
        .await
    }
}
