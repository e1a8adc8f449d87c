//! A gateway call's outcome, written once: as the call's way out says, or,
//! when the engine went away first (the request's future dropped while the
//! service was still being asked), as `abandoned`. An outcome settled but
//! not yet queued (its request dropped while it waited for room in a full
//! queue) is queued as it was settled.

use std::time::Instant;

use crate::group_commit::OutcomeLog;
use crate::store::UseOutcome;

/// The outcome still to be written for a recorded use.
pub struct Settlement {
    log: OutcomeLog,
    /// Not settled yet.
    pending: Option<UseOutcome>,
    /// Settled, and not yet in the queue.
    unqueued: Option<UseOutcome>,
    started: Instant,
}

impl Settlement {
    /// For the use `outcome` names (its status and error still unknown),
    /// from now.
    pub fn new(log: OutcomeLog, outcome: UseOutcome) -> Self {
        Self {
            log,
            pending: Some(outcome),
            unqueued: None,
            started: Instant::now(),
        }
    }

    /// When the call began (after its use was recorded).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Queues the outcome: the service's `status`, or what went wrong.
    pub async fn settle(&mut self, status: Option<u16>, error: Option<&'static str>) {
        if let Some(outcome) = self.outcome(status, error) {
            // Until the queue has taken it: an enqueue cut short sent
            // nothing, and the drop queues it instead.
            self.unqueued = Some(outcome.clone());
            self.log.enqueue(outcome).await;
            self.unqueued = None;
        }
    }

    fn outcome(&mut self, status: Option<u16>, error: Option<&'static str>) -> Option<UseOutcome> {
        let mut outcome = self.pending.take()?;
        outcome.status = status;
        outcome.error = error;
        outcome.latency_ms = self.started.elapsed().as_millis() as u64;
        Some(outcome)
    }
}

impl Drop for Settlement {
    fn drop(&mut self) {
        let Some(outcome) = self.unqueued.take().or_else(|| self.outcome(None, Some("abandoned"))) else {
            return;
        };
        // Dropped with its request, inside the runtime: the write cannot
        // be awaited here, so it is queued from a task of its own, which a
        // stopping server waits for.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let promised = self.log.promise();
            runtime.spawn(async move { promised.enqueue(outcome).await });
        }
    }
}
