//! The background refresh worker: one step at a time ([`try_refresh_due`],
//! which tests call directly) in a loop that sleeps when idle, survives a
//! panicking step, reports its liveness, purges expired OAuth states on a
//! schedule, and stops, without abandoning a refresh, on shutdown. It runs
//! on the domain context.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rand::Rng;

use super::refresh::{refresh_credential, Mode};
use super::LEASE_SECS;
use crate::context::Context;
use crate::error::Error;

/// A worker that has not finished a step for this long is stuck.
pub const STUCK_AFTER_SECS: i64 = 120;
/// Expired OAuth states are purged this often.
const PURGE_EVERY_SECS: i64 = 60;

/// What one worker step did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub claimed: usize,
    pub refreshed: usize,
    pub failed: usize,
}

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

    /// Unix seconds of the last finished step (0: none yet).
    pub fn last_step(&self) -> i64 {
        self.last_step.load(Ordering::SeqCst)
    }

    fn beat(&self, now: i64) {
        self.last_step.store(now, Ordering::SeqCst);
    }
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

/// Notifications are kept (for the events API) this long.
pub const EVENT_RETENTION_SECS: i64 = 7 * 86_400;

/// Housekeeping: deletes OAuth states that expired, and notifications past
/// their retention; returns how many states went.
pub async fn purge_expired_states(ctx: &Context) -> Result<u64, Error> {
    ctx.store.purge_events(ctx.now() - EVENT_RETENTION_SECS).await?;
    ctx.store.purge_page_sessions(ctx.now()).await?;
    Ok(ctx.store.purge_oauth_states(ctx.now()).await?)
}

/// The background worker: steps until `stop` turns true. A step in progress
/// is finished, not cancelled, so no lease is left behind on shutdown.
pub async fn run_worker(ctx: Context, stop: tokio::sync::watch::Receiver<bool>) {
    tracing::info!(owner = %ctx.refresher.owner, "token refresh worker started");
    let mut last_purge = 0;
    let step_ctx = ctx.clone();
    run_loop(&ctx, stop, move || {
        let ctx = step_ctx.clone();
        let purge = ctx.now() - last_purge >= PURGE_EVERY_SECS;
        if purge {
            last_purge = ctx.now();
        }
        async move {
            if purge {
                match purge_expired_states(&ctx).await {
                    Ok(n) if n > 0 => tracing::info!(purged = n, "expired OAuth states purged"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "purging expired OAuth states failed"),
                }
            }
            try_refresh_due(&ctx, 256).await
        }
    })
    .await;
    tracing::info!("token refresh worker stopped");
}

/// The loop around `step`: a panicking or failing step is logged and the
/// loop goes on after a pause; each finished step is a heartbeat.
pub async fn run_loop<F, Fut>(ctx: &Context, mut stop: tokio::sync::watch::Receiver<bool>, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Step, Error>>,
{
    let health = &ctx.worker;
    health.running.store(true, Ordering::SeqCst);
    health.beat(ctx.now());
    while !*stop.borrow() {
        let idle = match AssertUnwindSafe(step()).catch_unwind().await {
            Ok(Ok(step)) => step.claimed == 0,
            Ok(Err(e)) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "token refresh step failed");
                true
            }
            Err(_) => {
                tracing::error!("token refresh step panicked; the worker goes on");
                true
            }
        };
        health.beat(ctx.now());
        ctx.metrics.worker_last_step.set(ctx.now());
        if idle {
            let pause = Duration::from_millis(rand::thread_rng().gen_range(2_000..5_000));
            let _ = tokio::time::timeout(pause, stop.changed()).await;
        }
    }
    health.running.store(false, Ordering::SeqCst);
}
