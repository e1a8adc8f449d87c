//! Logging: `tracing` with an `EnvFilter` (`CREDGATE_LOG`), text or JSON
//! lines (`CREDGATE_LOG_FORMAT=json`). No secret ever reaches a log line:
//! secrets are `SecretString`, and request spans carry the matched route,
//! never a URI with its query.
//!
//! A line is formatted where it happens and queued; a thread of its own
//! writes what queued to stderr, many lines in one write, [`GATHER`] after
//! the first of them. A reader of stderr that stalls (a full pipe, a log
//! shipper that went away) never stalls a request: once [`QUEUED_BYTES`]
//! wait, new lines are dropped and counted ([`dropped_lines`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::{fmt, EnvFilter};

/// Bytes of lines waiting for stderr at the most; a line that does not fit
/// is dropped.
pub const QUEUED_BYTES: usize = 2 << 20;

/// How long the log thread lets lines gather after the first one queued,
/// before it writes them all at once (one system call, one wake-up, for
/// every line of those milliseconds, not one for each).
pub const GATHER: Duration = Duration::from_millis(5);

/// How long the process's end waits for stderr to take what is queued.
const LAST_WRITE: Duration = Duration::from_secs(2);

/// The lines waiting for the log thread.
#[derive(Debug, Default)]
struct Queue {
    lines: Mutex<Vec<u8>>,
    queued: Condvar,
    closed: AtomicBool,
    dropped: AtomicU64,
}

impl Queue {
    fn lines(&self) -> MutexGuard<'_, Vec<u8>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Queues each line written (the formatter writes a whole line at once).
#[derive(Debug)]
pub struct Queued(Arc<Queue>);

impl<'a> MakeWriter<'a> for Queued {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Line<'a> {
        Line(&self.0)
    }
}

/// One line's writer.
#[derive(Debug)]
pub struct Line<'a>(&'a Queue);

impl Write for Line<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut lines = self.0.lines();
        if lines.len() + line.len() > QUEUED_BYTES {
            drop(lines);
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
            return Ok(line.len());
        }
        let first = lines.is_empty();
        lines.extend_from_slice(line);
        drop(lines);
        if first {
            self.0.queued.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Keeps the log thread: dropping it writes out every line still queued
/// (waiting at most [`LAST_WRITE`] for a stderr that takes nothing).
#[must_use = "dropping it at once stops the log"]
#[derive(Debug)]
pub struct Logging {
    queue: Arc<Queue>,
    written: mpsc::Receiver<()>,
}

impl Drop for Logging {
    fn drop(&mut self) {
        {
            // Under the lock: the thread is waiting, or sees it closed.
            let _lines = self.queue.lines();
            self.queue.closed.store(true, Ordering::Relaxed);
        }
        self.queue.queued.notify_one();
        let _ = self.written.recv_timeout(LAST_WRITE);
    }
}

/// Starts a log thread writing to `out`: the writer that queues lines for
/// it, and the handle that stops it.
fn start(mut out: impl Write + Send + 'static) -> (Queued, Logging) {
    let queue = Arc::new(Queue::default());
    let (done, written) = mpsc::channel();
    let theirs = queue.clone();
    let spawned = std::thread::Builder::new().name("credgate-log".into()).spawn(move || {
        let mut batch = Vec::new();
        loop {
            let mut lines = theirs.lines();
            while lines.is_empty() && !theirs.closed.load(Ordering::Relaxed) {
                lines = theirs.queued.wait(lines).unwrap_or_else(PoisonError::into_inner);
            }
            if lines.is_empty() {
                break;
            }
            if !theirs.closed.load(Ordering::Relaxed) {
                drop(lines);
                std::thread::sleep(GATHER);
                lines = theirs.lines();
            }
            std::mem::swap(&mut *lines, &mut batch);
            drop(lines);
            // Nothing to be done about a stderr that refuses lines.
            let _ = out.write_all(&batch).and_then(|()| out.flush());
            batch.clear();
            batch.shrink_to(64 << 10);
        }
        let _ = done.send(());
    });
    if let Err(e) = spawned {
        // No thread: lines stay queued until the queue is full, then are
        // dropped and counted; nothing waits for them.
        eprintln!("credgate: the log thread did not start: {e}");
    }
    (Queued(queue.clone()), Logging { queue, written })
}

static DROPPED: OnceLock<Arc<Queue>> = OnceLock::new();

/// How log lines are written (`CREDGATE_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// `CREDGATE_LOG_FORMAT`: `text` or `json`, in any case.
pub fn parse_format(format: &str) -> Result<LogFormat, String> {
    match format.to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("CREDGATE_LOG_FORMAT is `text` or `json`".into()),
    }
}

/// `CREDGATE_LOG` as given, when `tracing` can read it as a filter.
pub fn parse_filter(filter: &str) -> Result<String, String> {
    EnvFilter::builder()
        .parse(filter)
        .map(|_| filter.to_owned())
        .map_err(|e| format!("CREDGATE_LOG is not a log filter: {e}"))
}

/// Installs the global subscriber, writing to stderr in `format`.
/// `filter` was checked with the settings; should it not parse, `info`.
pub fn init(filter: &str, format: LogFormat) -> Logging {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never in a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, logging) = start(std::io::stderr());
    let _ = DROPPED.set(writer.0.clone());
    let builder = fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    if format == LogFormat::Json {
        builder.json().flatten_event(true).with_current_span(true).init();
    } else {
        builder.init();
    }
    logging
}

/// Log lines dropped so far because stderr did not take them in time (0
/// where [`init`] did not run).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |q| q.dropped.load(Ordering::Relaxed))
}

/// How often [`report_dropped`] looks.
pub const DROPPED_REPORT_EVERY: Duration = Duration::from_secs(5);

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that takes nothing until `open` says so, then keeps all.
    struct Gate {
        open: mpsc::Receiver<()>,
        opened: bool,
        kept: Arc<Mutex<Vec<u8>>>,
        writes: Arc<AtomicU64>,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if !self.opened {
                let _ = self.open.recv();
                self.opened = true;
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.kept.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn gate() -> (Gate, mpsc::Sender<()>) {
        let (open, rx) = mpsc::channel();
        let gate = Gate {
            open: rx,
            opened: false,
            kept: Arc::default(),
            writes: Arc::default(),
        };
        (gate, open)
    }

    #[test]
    fn lines_queued_while_the_sink_stalls_are_kept_up_to_the_bound_then_dropped_and_counted() {
        let (sink, open) = gate();
        let kept = Arc::clone(&sink.kept);
        let (writer, logging) = start(sink);
        let line = [b'x'; 1023].iter().chain(b"\n").copied().collect::<Vec<_>>();
        // The first line (taken by the thread, which then stalls), a full
        // queue, and 100 lines more.
        writer.make_writer().write_all(&line).unwrap();
        for _ in 0..5000 {
            if writer.0.lines().is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        for _ in 0..QUEUED_BYTES / line.len() + 100 {
            writer.make_writer().write_all(&line).unwrap();
        }
        let dropped = writer.0.dropped.load(Ordering::Relaxed);
        open.send(()).unwrap();
        drop(logging);

        assert_eq!(dropped, 100);
        let kept = kept.lock().unwrap();
        assert_eq!(kept.len(), (1 + QUEUED_BYTES / line.len()) * line.len());
        assert!(kept.chunks(line.len()).all(|l| l == line.as_slice()));
    }

    #[test]
    fn lines_queued_together_are_written_at_once_and_in_order_and_all_at_the_end() {
        let (sink, open) = gate();
        let (kept, writes) = (Arc::clone(&sink.kept), Arc::clone(&sink.writes));
        open.send(()).unwrap();
        let (writer, logging) = start(sink);
        for n in 0..1000 {
            writeln!(writer.make_writer(), "line {n}").unwrap();
        }
        drop(logging);

        let text = String::from_utf8(kept.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|n| format!("line {n}\n")).collect();
        assert_eq!(text, expected);
        let writes = writes.load(Ordering::Relaxed);
        assert!(writes < 20, "{writes} writes for 1,000 lines");
    }
}
