//! This process's refresh bookkeeping, which the refresh driver
//! (`oauth::refresh`) uses for one refresh per credential at a time: the
//! replica's lease owner id, an in-process lock per credential (callers in
//! this process queue and share the outcome), and a rate limit per provider.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// Per-process refresh state.
pub struct Refresher {
    /// This replica's lease owner id.
    pub owner: String,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    per_provider: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    rate: NonZeroU32,
    /// Refreshes in flight at once in the worker.
    pub concurrency: usize,
    /// Token requests that requests started (refreshes, callbacks' code
    /// exchanges), running on tasks of their own.
    detached: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Refresher {
    /// `rate` refreshes per second per provider, `concurrency` at once.
    pub fn new(rate: u32, concurrency: usize) -> Self {
        Self {
            owner: format!("credgate-{}", uuid::Uuid::new_v4().simple()),
            inflight: Mutex::new(HashMap::new()),
            per_provider: Mutex::new(HashMap::new()),
            rate: NonZeroU32::new(rate.max(1)).expect("at least 1"),
            concurrency: concurrency.max(1),
            detached: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Counts a token request (a refresh, a callback's code exchange) that
    /// runs on a task of its own until the returned guard is dropped (see
    /// [`Self::finished`]).
    pub(crate) fn detach(self: &Arc<Self>) -> Detached {
        self.detached.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Detached(self.clone())
    }

    /// Waits, at most `within`, until the token requests that requests
    /// started are finished (their callers may have gone); whether they all
    /// are. A stopping server calls it, so that no token a provider issued
    /// is lost with the process.
    pub async fn finished(&self, within: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while self.detached.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        true
    }

    /// The in-process lock of one credential.
    pub(crate) fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().expect("not poisoned");
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(id.to_owned()).or_default().clone()
    }

    /// The rate limiter of one provider.
    pub(crate) fn limiter(&self, provider: &str) -> Arc<DefaultDirectRateLimiter> {
        let mut map = self.per_provider.lock().expect("not poisoned");
        map.entry(provider.to_owned())
            .or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_second(self.rate))))
            .clone()
    }
}

/// A token request on a task of its own, counted until dropped.
pub(crate) struct Detached(Arc<Refresher>);

impl Drop for Detached {
    fn drop(&mut self) {
        self.0.detached.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}
