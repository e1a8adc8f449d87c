//! The background refresh worker: one step at a time ([`try_refresh_due`],
//! which tests call directly) in a loop that sleeps when idle, survives a
//! panicking step, reports its liveness, purges expired OAuth states on a
//! schedule, and stops, without abandoning a refresh, on shutdown. It runs
//! on the domain context.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rand::Rng;

use super::refresh::refresh_claimed;
use super::LEASE_SECS;
use crate::context::Context;
use crate::error::Error;

pub use crate::context::STUCK_AFTER_SECS;
/// Expired OAuth states are purged this often.
const PURGE_EVERY_SECS: i64 = 60;

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
        .map(|(org, id)| async move { refresh_claimed(ctx, &org, &id).await })
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

/// Housekeeping: deletes OAuth states, page sessions and idempotency keys
/// that expired, and notifications (and, when `CREDGATE_AUDIT_RETENTION_DAYS`
/// is set, audit events) past their retention; writes the expiry
/// notifications due; returns how many states went.
pub async fn housekeeping(ctx: &Context) -> Result<u64, Error> {
    ctx.store.purge_events(ctx.now() - EVENT_RETENTION_SECS).await?;
    ctx.store.purge_page_sessions(ctx.now()).await?;
    ctx.store.purge_idempotency_keys(ctx.now()).await?;
    if ctx
        .store
        .notify_expiring(&expiry_thresholds(ctx.config.expiry_warn_days))
        .await?
        > 0
    {
        ctx.webhooks.wake();
    }
    finish_deletions(ctx).await?;
    let states = ctx.store.purge_oauth_states(ctx.now()).await?;
    if let Some(days) = ctx.config.audit_retention_days {
        purge_audit(ctx, ctx.now() - i64::from(days) * 86_400).await?;
    }
    Ok(states)
}

/// Audit events one transaction deletes, and such batches per
/// housekeeping pass at most (a pass a minute: up to a million events).
const AUDIT_PURGE_BATCH: i64 = 5000;
const AUDIT_PURGE_BATCHES_PER_PASS: usize = 200;

/// Deletes the audit events written before `before`, oldest first, in
/// short transactions; what one pass leaves, the next takes.
async fn purge_audit(ctx: &Context, before: i64) -> Result<(), Error> {
    let mut gone = 0;
    for _ in 0..AUDIT_PURGE_BATCHES_PER_PASS {
        let batch = ctx.store.purge_audit_events(before, AUDIT_PURGE_BATCH).await?;
        gone += batch;
        if batch < AUDIT_PURGE_BATCH.unsigned_abs() {
            break;
        }
    }
    if gone > 0 {
        tracing::info!(events = gone, "audit events past their retention deleted");
    }
    Ok(())
}

/// The days before an end at which `credential.expiring` is sent (and 0,
/// its end: `credential.needs_reauth`): 1, 3 and `CREDGATE_EXPIRY_WARN_DAYS`.
pub fn expiry_thresholds(warn_days: u32) -> Vec<i64> {
    let warn = i64::from(warn_days);
    let mut days: Vec<i64> = [0, 1, 3, warn].into_iter().filter(|d| *d <= warn).collect();
    days.dedup();
    days
}

/// Batches of a deleted organization's rows one housekeeping pass removes.
const DELETION_BATCHES_PER_PASS: usize = 100;

/// Goes on removing the rows of organizations marked deleted whose removal
/// was interrupted (the command crashed, or was stopped): a bounded number
/// of small batches per pass, so the next pass finishes what is left.
async fn finish_deletions(ctx: &Context) -> Result<(), Error> {
    let mut batches = 0;
    for org in ctx.store.deleted_orgs().await? {
        while batches < DELETION_BATCHES_PER_PASS {
            batches += 1;
            if ctx.store.purge_deleted_org(&org, crate::vault::PURGE_BATCH).await? == 0 {
                tracing::info!(org = %org, "a deleted organization's rows are all removed");
                break;
            }
        }
    }
    Ok(())
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
                match housekeeping(&ctx).await {
                    Ok(n) if n > 0 => tracing::info!(purged = n, "expired OAuth states purged"),
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "housekeeping (expired states, sessions and keys, notifications, retention) failed"),
                }
            }
            try_refresh_due(&ctx, 256).await
        }
    })
    .await;
    tracing::info!("token refresh worker stopped");
}

/// How long the loop waits before its next step: not at all after a busy
/// step, 2–5 s after an idle one, and after failed steps in a row (the
/// store away, a bug) 2 s doubling to a minute, jittered, so that a
/// database coming back is not met by every replica at once. A step that
/// succeeds resets it.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

/// The longest pause after failed steps.
const MAX_FAILURE_PAUSE: Duration = Duration::from_secs(60);

impl Backoff {
    /// The pause after a step that did `Ok(claimed)` or failed (`Err`).
    pub fn after(&mut self, outcome: Result<usize, ()>, rng: &mut impl Rng) -> Option<Duration> {
        match outcome {
            Ok(claimed) => {
                self.failures = 0;
                (claimed == 0).then(|| Duration::from_millis(rng.gen_range(2_000..5_000)))
            }
            Err(()) => {
                self.failures = self.failures.saturating_add(1);
                let base = Duration::from_secs(2u64 << (self.failures - 1).min(6)).min(MAX_FAILURE_PAUSE);
                // Within the last quarter below the base: growing, never past a minute.
                Some(base.mul_f64(rng.gen_range(0.75..=1.0)))
            }
        }
    }
}

/// The loop around `step`: a panicking or failing step is logged and the
/// loop goes on after a pause that grows while steps keep failing (see
/// [`Backoff`]); each finished step is a heartbeat.
pub async fn run_loop<F, Fut>(ctx: &Context, mut stop: tokio::sync::watch::Receiver<bool>, mut step: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Step, Error>>,
{
    let health = &ctx.worker;
    health.set_running(true);
    health.beat(ctx.now());
    let mut backoff = Backoff::default();
    while !*stop.borrow() {
        let outcome = match AssertUnwindSafe(step()).catch_unwind().await {
            Ok(Ok(step)) => Ok(step.claimed),
            Ok(Err(e)) => {
                tracing::error!(error = %e, source = ?std::error::Error::source(&e), "token refresh step failed");
                Err(())
            }
            Err(_) => {
                tracing::error!("token refresh step panicked; the worker goes on");
                Err(())
            }
        };
        health.beat(ctx.now());
        ctx.metrics.worker_last_step.set(ctx.now());
        let pause = backoff.after(outcome, &mut rand::thread_rng());
        if let Some(pause) = pause {
            let _ = tokio::time::timeout(pause, stop.changed()).await;
        }
    }
    health.set_running(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(d: Option<Duration>) -> f64 {
        d.expect("a pause").as_secs_f64()
    }

    #[test]
    fn failed_steps_back_off_from_two_seconds_doubling_to_a_minute() {
        let mut rng = rand::thread_rng();
        let mut backoff = Backoff::default();

        let pauses: Vec<f64> = (0..10).map(|_| secs(backoff.after(Err(()), &mut rng))).collect();

        for (n, (pause, base)) in pauses.iter().zip([2.0, 4.0, 8.0, 16.0, 32.0, 60.0]).enumerate() {
            assert!((base * 0.75..=base).contains(pause), "failure {}: {pause} s", n + 1);
        }
        assert!(pauses[5..].iter().all(|p| (45.0..=60.0).contains(p)), "{pauses:?}");
    }

    #[test]
    fn the_backoff_is_jittered() {
        let mut rng = rand::thread_rng();
        let pauses: std::collections::HashSet<u128> = (0..20)
            .map(|_| {
                let mut backoff = Backoff::default();
                for _ in 0..6 {
                    backoff.after(Err(()), &mut rng);
                }
                backoff.after(Err(()), &mut rng).unwrap().as_millis()
            })
            .collect();

        assert!(pauses.len() > 1, "replicas failing together do not retry together");
    }

    #[test]
    fn a_successful_step_resets_the_backoff() {
        let mut rng = rand::thread_rng();
        let mut backoff = Backoff::default();
        for _ in 0..5 {
            backoff.after(Err(()), &mut rng);
        }

        let idle = secs(backoff.after(Ok(0), &mut rng));
        let busy = backoff.after(Ok(3), &mut rng);
        let next_failure = secs(backoff.after(Err(()), &mut rng));

        assert!((2.0..5.0).contains(&idle), "an idle step waits 2–5 s: {idle}");
        assert_eq!(busy, None, "a busy step goes on at once");
        assert!((1.5..=2.0).contains(&next_failure), "back to 2 s: {next_failure}");
    }
}
