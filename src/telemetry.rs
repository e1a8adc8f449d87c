//! Logging: `tracing` with an `EnvFilter` (`CREDGATE_LOG`), text or JSON
//! lines (`CREDGATE_LOG_FORMAT=json`). No secret ever reaches a log line:
//! secrets are `SecretString`, and request spans carry the matched route,
//! never a URI with its query.
//!
//! Lines go to stderr from a thread of their own, through a queue of
//! [`QUEUED_LINES`]: a reader of stderr that stalls (a full pipe, a log
//! shipper that went away) never stalls a request. Once the queue is full,
//! new lines are dropped and counted ([`dropped_lines`]), never waited for.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::{fmt, EnvFilter};

/// Lines waiting for stderr at the most; more are dropped.
pub const QUEUED_LINES: usize = 8192;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the logging thread: dropping it writes out every line still
/// queued (before the process exits, or they are lost).
#[must_use = "dropping it at once stops the log"]
pub struct Logging {
    _writer: WorkerGuard,
}

/// Installs the global subscriber, writing to stderr: JSON lines or text.
/// `filter` was checked with the settings; should it not parse, `info`.
pub fn init(filter: &str, json: bool) -> Logging {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never in a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(QUEUED_LINES)
        .lossy(true)
        .thread_name("credgate-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    let builder = fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    if json {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
    Logging { _writer: guard }
}

/// Log lines dropped so far because stderr did not take them in time (0
/// where [`init`] did not run).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}

/// How often [`report_dropped`] looks.
pub const DROPPED_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Says in the log, every [`DROPPED_REPORT_EVERY`] that dropped any, how
/// many lines were dropped since it last said so (that line may be
/// dropped too, while stderr still stalls: the count carries over, and
/// `credgate_log_lines_dropped_total` has it all). Runs until aborted.
pub async fn report_dropped() {
    let mut said = dropped_lines();
    let mut every = tokio::time::interval(DROPPED_REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let dropped = dropped_lines();
        if dropped > said {
            tracing::warn!(
                dropped = dropped - said,
                "log lines were dropped: stderr did not take them in time"
            );
            // Counted as said only once this line is queued, not dropped.
            if dropped_lines() == dropped {
                said = dropped;
            }
        }
    }
}
