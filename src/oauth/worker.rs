//! The background refresh worker: one step at a time ([`try_refresh_due`],
//! which tests call directly) in a loop that sleeps when idle and stops,
//! without abandoning a refresh, on shutdown.

use std::time::Duration;

use futures::StreamExt;
use rand::Rng;

use super::refresh::{refresh_credential, Mode, RefreshError, LEASE_SECS};
use crate::http::AppState;
use crate::store::now;

/// What one worker step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub claimed: usize,
    pub refreshed: usize,
    pub failed: usize,
}

/// One worker step: claims due credentials and refreshes them with bounded
/// concurrency. Tests call it directly; [`run_worker`] loops over it.
pub async fn try_refresh_due(state: &AppState, batch: i64) -> Result<Step, RefreshError> {
    let lead = state.config.refresh_lead_secs as i64;
    if let Ok(backlog) = state.store.due_count(lead).await {
        state.metrics.refresh_backlog.set(backlog);
    }
    let claimed = state
        .store
        .claim_due(&state.refresher.owner, lead, batch, now() + LEASE_SECS)
        .await?;
    let mut step = Step {
        claimed: claimed.len(),
        ..Step::default()
    };
    let results: Vec<_> = futures::stream::iter(claimed)
        .map(|(org, id)| async move { refresh_credential(state, &org, &id, Mode::Claimed).await })
        .buffer_unordered(state.refresher.concurrency)
        .collect()
        .await;
    for r in results {
        match r {
            Ok(_) => step.refreshed += 1,
            Err(RefreshError::Internal(e)) => return Err(RefreshError::Internal(e)),
            Err(_) => step.failed += 1,
        }
    }
    Ok(step)
}

/// The background worker: steps until `stop` turns true. A step in progress
/// is finished, not cancelled, so no lease is left behind on shutdown.
pub async fn run_worker(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    tracing::info!(owner = %state.refresher.owner, "token refresh worker started");
    while !*stop.borrow() {
        let idle = match try_refresh_due(&state, 256).await {
            Ok(step) => step.claimed == 0,
            Err(e) => {
                tracing::error!(error = %e, "token refresh step failed");
                true
            }
        };
        if idle {
            let pause = Duration::from_millis(rand::thread_rng().gen_range(2_000..5_000));
            let _ = tokio::time::timeout(pause, stop.changed()).await;
        }
    }
    tracing::info!("token refresh worker stopped");
}
