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
    /// there is none); callers using the same `kept` take turns.
    pub(super) async fn on_kept<T>(
        &self,
        kept: &Kept,
        statements: impl AsyncFnOnce(&mut AnyConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut slot = kept.0.lock().await;
        if slot.as_ref().is_some_and(|(_, since)| since.elapsed() >= KEPT_FOR) {
            slot.take();
        }
        let (conn, _) = match &mut *slot {
            Some(held) => held,
            None => slot.insert((self.pool.acquire().await?, Instant::now())),
        };
        let outcome = statements(conn).await;
        if matches!(outcome, Err(StoreError::Unavailable(_))) {
            // Maybe broken: back to the pool, which tests it.
            slot.take();
        }
        outcome
    }
}
