//! Time as the domain sees it: unix seconds from the system clock, or, in
//! tests, from a clock they move by hand (no SQL to fake time).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The source of "now" for the store, the refresher and the worker.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// Seconds added to the system time; only a manual clock moves.
    offset: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that follows the system clock until [`Clock::advance`] moves it.
    pub fn manual() -> Self {
        Self {
            offset: Some(Arc::default()),
        }
    }

    /// Unix seconds now.
    pub fn now(&self) -> i64 {
        let system = chrono::Utc::now().timestamp();
        system + self.offset.as_ref().map_or(0, |o| o.load(Ordering::SeqCst))
    }

    /// Moves a manual clock forward (a no-op on the system clock).
    pub fn advance(&self, secs: i64) {
        if let Some(offset) = &self.offset {
            offset.fetch_add(secs, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_and_the_system_clock_does_not() {
        let manual = Clock::manual();
        let before = manual.now();
        manual.advance(3600);
        assert!(manual.now() >= before + 3600);
        let system = Clock::system();
        system.advance(3600);
        assert!(system.now() < before + 3600);
    }
}
