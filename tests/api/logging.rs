//! The log never holds up a request: `credgate serve` whose stderr nobody
//! reads (a full pipe, a log shipper that stopped) keeps answering, drops
//! the lines stderr cannot take, counts them, says so once stderr takes
//! lines again, and still writes out what is queued when it stops.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use credgate::crypto::MasterKeyring;
use futures::StreamExt;
use secrecy::ExposeSecret;

use crate::helpers::{Backend, TestDb};

#[tokio::test]
async fn a_stalled_stderr_drops_log_lines_and_never_holds_up_a_request() {
    let db = TestDb::new(Backend::Sqlite).await;
    let keys = MasterKeyring::generate_key();
    let mut child = Command::new(env!("CARGO_BIN_EXE_credgate"))
        .arg("serve")
        .env("CREDGATE_DATABASE_URL", &db.url)
        .env("CREDGATE_MASTER_KEYS", keys.expose_secret())
        .env(
            "CREDGATE_PROVIDERS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
        )
        .env("CREDGATE_LISTEN", "127.0.0.1:0")
        .env("CREDGATE_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let base = loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "serve stopped before serving");
        if let Some(rest) = line.split("credgate is serving on ").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };

    // From here nobody reads stderr: its pipe fills after a few hundred
    // lines, then the queue; every request still gets its answer, until
    // the server counts lines it dropped.
    let client = reqwest::Client::new();
    let dropped_now = || async {
        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("credgate_log_lines_dropped_total "))
            .expect("the dropped lines' counter is exported")
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let mut calls = 0;
    let mut dropped = 0;
    while dropped == 0 && calls < 100_000 {
        let answered = tokio::time::timeout(
            Duration::from_secs(60),
            futures::stream::iter(0..2000)
                .map(|_| {
                    let client = client.clone();
                    let url = format!("{base}/healthz");
                    async move { client.get(url).send().await.map(|r| r.status().as_u16()) }
                })
                .buffer_unordered(16)
                .collect::<Vec<_>>(),
        )
        .await
        .expect("requests were held up behind a stderr nobody read");
        assert!(
            answered.iter().all(|s| matches!(s, Ok(200))),
            "{:?}",
            answered.iter().find(|s| !matches!(s, Ok(200)))
        );
        calls += answered.len();
        dropped = dropped_now().await;
    }
    // Never before the queue was full: at least its bytes were lines.
    assert!(dropped > 0, "no line dropped after {calls} requests");
    assert!(
        calls > credgate::telemetry::QUEUED_BYTES / 200,
        "dropped after {calls} requests"
    );

    // stderr is read again: the log says lines were dropped.
    let (lines, read) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut said = None;
    while said.is_none() && Instant::now() < deadline {
        if let Ok(line) = read.recv_timeout(Duration::from_millis(200)) {
            if line.contains("log lines were dropped") {
                said = Some(line);
            }
        }
    }
    let said = said.expect("the log said nothing of the lines it dropped");
    let count: u64 = said
        .split("dropped=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {said:?}"));
    assert!(count > 0 && count <= dropped + 100, "{said}");

    // Stopping writes out every line still queued.
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let rest: Vec<String> = read.try_iter().collect();
    assert!(status.success(), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("token refresh worker stopped")),
        "the last lines were not written out: {rest:?}"
    );
}

#[tokio::test]
async fn a_log_setting_credgate_cannot_read_stops_it_before_it_starts_naming_the_setting() {
    let db = TestDb::new(Backend::Sqlite).await;
    let keys = MasterKeyring::generate_key();
    for (name, value) in [
        ("CREDGATE_LOG_FORMAT", "jsn"),
        ("CREDGATE_LOG", "info,sqlx=loud"),
        ("CREDGATE_LOG", "info,credgate[{"),
    ] {
        let mut serve = Command::new(env!("CARGO_BIN_EXE_credgate"))
            .args(["serve"])
            .env("CREDGATE_DATABASE_URL", &db.url)
            .env("CREDGATE_MASTER_KEYS", keys.expose_secret())
            .env("CREDGATE_LISTEN", "127.0.0.1:0")
            .env(name, value)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(15);
        while serve.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                serve.kill().unwrap();
                panic!("serve started with {name}={value}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = serve.wait_with_output().unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {err}");
        assert_eq!(err.lines().count(), 1, "{name}={value}: {err:?}");
        assert!(
            err.starts_with("credgate: ") && err.contains(name) && err.contains(value),
            "{err:?}"
        );
    }
    // Every level is a filter; so are a target's.
    for value in ["warn", "WARN", "off", "credgate=debug,sqlx=warn"] {
        let out = Command::new(env!("CARGO_BIN_EXE_credgate"))
            .args(["keys", "generate"])
            .env("CREDGATE_LOG", value)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{value}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
