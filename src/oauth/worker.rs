//! The background refresh worker: one step at a time ([`try_refresh_due`],
//! which tests call directly) in a loop that sleeps when idle and stops,
//! without abandoning a refresh, on shutdown. It runs on the domain context.

use std::time::Duration;

use futures::StreamExt;
use rand::Rng;

use super::refresh::{refresh_credential, Mode};
use super::single_flight::LEASE_SECS;
use crate::context::Context;
use crate::error::Error;

/// What one worker step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub claimed: usize,
    pub refreshed: usize,
    pub failed: usize,
}

/// One worker step: claims due credentials and refreshes them with bounded
/// concurrency. Tests call it directly; [`run_worker`] loops over it.
pub async fn try_refresh_due(ctx: &Context, batch: i64) -> Result<Step, Error> {
    let lead = ctx.config.refresh_lead_secs as i64;
    if let Ok(backlog) = ctx.store.due_count(lead).await {
        ctx.metrics.refresh_backlog.set(backlog);
    }
    let claimed = ctx
        .store
        .claim_due(&ctx.refresher.owner, lead, batch, ctx.now() + LEASE_SECS)
        .await?;
    let mut step = Step {
        claimed: claimed.len(),
        ..Step::default()
    };
    let results: Vec<_> = futures::stream::iter(claimed)
        .map(|(org, id)| async move { refresh_credential(ctx, &org, &id, Mode::Claimed).await })
        .buffer_unordered(ctx.refresher.concurrency)
        .collect()
        .await;
    for r in results {
        match r {
            Ok(_) => step.refreshed += 1,
            Err(Error::Internal(e)) => return Err(Error::Internal(e)),
            Err(_) => step.failed += 1,
        }
    }
    Ok(step)
}

/// The background worker: steps until `stop` turns true. A step in progress
/// is finished, not cancelled, so no lease is left behind on shutdown.
pub async fn run_worker(ctx: Context, mut stop: tokio::sync::watch::Receiver<bool>) {
    tracing::info!(owner = %ctx.refresher.owner, "token refresh worker started");
    while !*stop.borrow() {
        let idle = match try_refresh_due(&ctx, 256).await {
            Ok(step) => step.claimed == 0,
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "token refresh step failed");
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
