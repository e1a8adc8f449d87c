//! Runs a test body in a process of its own, and reads that process's
//! threads, open file descriptors and memory from `/proc/self`.
//!
//! The test binary runs many tests at once in one process, so a count of
//! `/proc/self/task` or `/proc/self/fd` there sees every test's threads and
//! sockets. A test that asserts such a count re-runs itself alone: the
//! binary is started again with the test's exact name, one test thread, and
//! an environment variable telling the body it is the one to run.

use std::future::Future;
use std::process::Command;
use std::time::{Duration, Instant};

const VAR: &str = "CREDGATE_TEST_OWN_PROCESS";

/// Runs `body` in a new process of this test binary and asserts that it
/// passed there; in that process, runs `body` itself. `module` is
/// `module_path!()` of the test, `name` the test function's name.
pub fn in_own_process<F, Fut>(module: &str, name: &str, body: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    // libtest names tests by their path inside the crate, without it.
    let module = module.split_once("::").map_or("", |(_, rest)| rest);
    let test = format!("{module}::{name}");
    if std::env::var(VAR).as_deref() == Ok(test.as_str()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            // An idle blocking thread leaves at once, so a thread that is
            // still there is one still working.
            .thread_keep_alive(Duration::from_millis(50))
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(body());
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([test.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(VAR, &test)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The figures the body printed, for `cargo test -- --nocapture`.
    println!("{text}");
    assert!(
        out.status.success() && text.contains("1 passed"),
        "{test} in its own process:\n{text}"
    );
}

/// Threads of this process.
pub fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

/// Open file descriptors of this process (the directory listing's own
/// descriptor included, the same in every count).
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A `kB` field of `/proc/self/status`, such as `VmRSS` or `VmHWM` (the
/// peak of `VmRSS`), in KiB.
pub fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// Waits up to `limit` for `count()` to come back to `level`; returns the
/// last count seen.
pub async fn settles_to(level: usize, limit: Duration, count: impl Fn() -> usize) -> usize {
    let started = Instant::now();
    loop {
        let now = count();
        if now <= level || started.elapsed() >= limit {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
