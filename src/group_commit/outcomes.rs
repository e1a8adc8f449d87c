//! The gateway calls' outcomes' writer: groups of whatever came in 25 ms,
//! written again through an outage, and in halves when too slow.

use std::time::Duration;

use super::Writer;
use crate::store::{Store, StoreError, UseOutcome};

/// What became of gateway calls, kept beside their uses' events; nobody
/// waits for them, so the writer waits a moment for more (one commit for
/// every call of the last 25 ms, not one for every few). A group the store
/// cannot take (an outage, a lock held past its limit) waits for it and is
/// written again (in halves, when it is too slow for the store's time
/// limit), its calls' answers already on their way (once the queue
/// is full, later calls wait for room before they answer); only the
/// process's end loses what is still queued, never the uses.
#[derive(Debug)]
pub struct Outcomes(pub Store);

/// The first pause before a group of outcomes is written again after the
/// store could not take it; each next one twice as long, up to
/// [`OUTCOMES_RETRY_MAX`].
const OUTCOMES_RETRY_FIRST: Duration = Duration::from_millis(100);
const OUTCOMES_RETRY_MAX: Duration = Duration::from_secs(2);

impl Outcomes {
    /// Writes `outcomes` once the store takes them: again, after a pause,
    /// while it is unavailable or gives the write up (a lock not granted in
    /// time); a group given up at the store's time limit is written in two
    /// halves, each halved again while it is too slow, so that no group is
    /// too large ever to be written. The store's refusal is returned (some
    /// parts may be written by then: outcomes are written once only, so
    /// the group can be written again).
    async fn record(&self, outcomes: &[UseOutcome]) -> Result<(), StoreError> {
        let mut pause = OUTCOMES_RETRY_FIRST;
        // The parts still to write, the next on top.
        let mut parts = vec![outcomes];
        while let Some(part) = parts.pop() {
            match self.0.record_outcomes(part).await {
                Ok(()) => pause = OUTCOMES_RETRY_FIRST,
                Err(e) if e.passed_time_limit() && part.len() > 1 => {
                    tracing::warn!(error = %e, outcomes = part.len(), "gateway calls' outcomes are written in halves");
                    let (first, second) = part.split_at(part.len() / 2);
                    parts.extend([second, first]);
                }
                Err(StoreError::Unavailable(e) | StoreError::GaveWay(e)) => {
                    tracing::warn!(error = %e, outcomes = part.len(), "gateway calls' outcomes wait for the store");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(OUTCOMES_RETRY_MAX);
                    parts.push(part);
                }
                Err(refused) => return Err(refused),
            }
        }
        Ok(())
    }
}

impl Writer for Outcomes {
    type Item = UseOutcome;
    type Output = ();
    const MAX_BATCH: usize = 4096;
    const LINGER: Duration = Duration::from_millis(25);
    // Never failed for a group that found the store unavailable: each
    // group waits for the store (`record`).
    const SHARES_OUTAGE: bool = false;

    async fn write(&self, outcomes: Vec<UseOutcome>) -> Vec<Result<(), StoreError>> {
        let written = match self.record(&outcomes).await {
            // The database refused one of them (an organization purged
            // meanwhile): each is written again alone, so it fails alone.
            Err(StoreError::Database(e)) if outcomes.len() > 1 => {
                tracing::warn!(error = %e, outcomes = outcomes.len(), "a group of outcomes was refused; writing them one by one");
                let mut each = Vec::with_capacity(outcomes.len());
                for one in &outcomes {
                    each.push(self.record(std::slice::from_ref(one)).await);
                }
                return each;
            }
            written => written,
        };
        if let Err(e) = &written {
            tracing::warn!(error = %e, outcomes = outcomes.len(), "gateway calls' outcomes were refused");
        }
        outcomes
            .iter()
            .map(|_| written.as_ref().map(|_| ()).map_err(StoreError::duplicate))
            .collect()
    }
}
