//! This process's refresh worker, if it runs one: whether it runs and when
//! it last finished a step (`/readyz` and a metric read it; the worker loop
//! in `oauth::worker` writes it).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// A worker that has not finished a step for this long is stuck.
pub const STUCK_AFTER_SECS: i64 = 120;

/// Whether this process runs a worker, and when it last finished a step.
#[derive(Debug, Default)]
pub struct WorkerHealth {
    running: AtomicBool,
    last_step: AtomicI64,
}

impl WorkerHealth {
    /// Is a worker of this process running but stuck (per `now`)?
    pub fn stuck(&self, now: i64) -> bool {
        self.running.load(Ordering::SeqCst) && now - self.last_step.load(Ordering::SeqCst) > STUCK_AFTER_SECS
    }

    /// The worker starts or stops.
    pub(crate) fn set_running(&self, running: bool) {
        self.running.store(running, Ordering::SeqCst);
    }

    /// Unix seconds of the last finished step (0: none yet).
    pub fn last_step(&self) -> i64 {
        self.last_step.load(Ordering::SeqCst)
    }

    /// The worker finished a step at `now`.
    pub(crate) fn beat(&self, now: i64) {
        self.last_step.store(now, Ordering::SeqCst);
    }
}
