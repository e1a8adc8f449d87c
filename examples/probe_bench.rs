//! Probe latency beside the stock clients against the same local servers.
//!
//! Starts the test sshd and the scram-sha-256 PostgreSQL cluster (the same
//! harness as `tests/api`; run `scripts/install-test-deps.sh` first), then
//! times, interleaved, N runs of: the SFTP probe vs `sftp -b` listing the
//! same directory with the same key, and the PostgreSQL probe vs
//! `psql -c 'select version()'` with the same role and sslmode. Finally 50
//! concurrent SFTP probes, while a 1 ms ticker measures how late the
//! runtime wakes it (a stand-in for API latency meanwhile). Prints JSON.
//!
//! `cargo run --release --example probe_bench` (`BENCH_RUNS=N`, default 30).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use credgate::egress::EgressPolicy;
use credgate::probes::{postgres, sftp, ApiBaseUrls, ProbeContext, ProbeTimeouts};
use serde_json::json;

#[path = "../tests/api/ports.rs"]
#[allow(dead_code, reason = "shared with the tests, which use more of it")]
mod ports;

#[path = "../tests/api/probes/sshd.rs"]
#[allow(dead_code, reason = "shared with the tests, which use more of it")]
mod sshd;

#[path = "../tests/api/probes/pg_cluster.rs"]
#[allow(dead_code, reason = "shared with the tests, which use more of it")]
mod pg_cluster;

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(mut samples: Vec<f64>) -> serde_json::Value {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    json!({
        "runs": samples.len(),
        "median_ms": (at(0.5) * 100.0).round() / 100.0,
        "p90_ms": (at(0.9) * 100.0).round() / 100.0,
        "min_ms": (at(0.0) * 100.0).round() / 100.0,
    })
}

fn ratio(ours: &serde_json::Value, theirs: &serde_json::Value) -> f64 {
    let r = ours["median_ms"].as_f64().unwrap() / theirs["median_ms"].as_f64().unwrap();
    (r * 100.0).round() / 100.0
}

fn timed_command(cmd: &mut Command, stdin: &str) -> Duration {
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().expect("client");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(30);
    let ssh = sshd::sshd();
    let pg = pg_cluster::cluster();
    let policy = Arc::new(EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]));
    let ctx = ProbeContext::new(policy, ProbeTimeouts::default(), ApiBaseUrls::default()).unwrap();

    let key_path = ssh.key_path("id_ed25519");
    let sftp_req: sftp::SftpRequest = serde_json::from_value(json!({
        "host": "127.0.0.1", "port": ssh.port, "username": sshd::KEY_USER,
        "private_key": ssh.key("id_ed25519"), "host_key_sha256": ssh.fingerprint,
        "path": ssh.listing_dir(),
    }))
    .unwrap();
    let sftp_cli = || {
        let mut cmd = Command::new("sftp");
        cmd.args(["-q", "-b", "-", "-P", &ssh.port.to_string(), "-i"])
            .arg(&key_path)
            .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
            .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR"])
            .arg(format!("{}@127.0.0.1", sshd::KEY_USER));
        cmd
    };
    let pg_req: postgres::PostgresRequest = serde_json::from_value(json!({
        "host": "127.0.0.1", "port": pg.port, "database": pg_cluster::DATABASE,
        "username": pg_cluster::USER, "password": pg_cluster::PASSWORD, "sslmode": "prefer",
    }))
    .unwrap();
    let psql = || {
        let mut cmd = Command::new("psql");
        cmd.env("PGPASSWORD", pg_cluster::PASSWORD)
            .arg(format!(
                "host=127.0.0.1 port={} dbname={} user={} sslmode=prefer",
                pg.port,
                pg_cluster::DATABASE,
                pg_cluster::USER
            ))
            .args(["-X", "-q", "-c", "select version()"]);
        cmd
    };

    let listing = format!("ls -1 {}\n", ssh.listing_dir());
    let (mut sftp_probe, mut sftp_stock, mut pg_probe, mut pg_stock) = (vec![], vec![], vec![], vec![]);
    let bench = credgate::ids::OrgId::generate();
    for i in 0..runs + 2 {
        let started = Instant::now();
        let result = sftp::probe(&ctx, &bench, &sftp_req).await;
        let probe_time = started.elapsed();
        assert!(result.ok, "{result:?}");
        let stock_time = timed_command(&mut sftp_cli(), &listing);
        let started = Instant::now();
        let result = postgres::probe(&ctx, &bench, &pg_req).await;
        let pg_time = started.elapsed();
        assert!(result.ok && result.detail["tls"] == json!(true), "{result:?}");
        let psql_time = timed_command(&mut psql(), "");
        if i >= 2 {
            sftp_probe.push(millis(probe_time));
            sftp_stock.push(millis(stock_time));
            pg_probe.push(millis(pg_time));
            pg_stock.push(millis(psql_time));
        }
    }

    let concurrent = concurrent_sftp(&ctx, &sftp_req, 50).await;
    let healthz = healthz_during_http_probes(ssh, 50).await;
    let (sp, ss, pp, ps) = (
        summary(sftp_probe),
        summary(sftp_stock),
        summary(pg_probe),
        summary(pg_stock),
    );
    let report = json!({
        "sftp": { "probe": sp, "sftp_b": ss, "ratio_median": ratio(&sp, &ss) },
        "postgres": { "probe": pp, "psql": ps, "ratio_median": ratio(&pp, &ps), "tls": true },
        "concurrent_sftp": concurrent,
        "healthz_during_50_http_sftp_probes": healthz,
    });
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
}

/// Runs `n` SFTP probes at once while a ticker measures runtime wake-up lag.
async fn concurrent_sftp(ctx: &ProbeContext, req: &sftp::SftpRequest, n: usize) -> serde_json::Value {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let ticker = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut lags = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = Instant::now();
                tokio::time::sleep(Duration::from_millis(1)).await;
                lags.push(millis(asked.elapsed().saturating_sub(Duration::from_millis(1))));
            }
            lags
        }
    });
    let started = Instant::now();
    // Four organizations: together they can fill every global SSH slot,
    // which one alone (capped per organization) cannot.
    let four: Vec<credgate::ids::OrgId> = (0..4).map(|_| credgate::ids::OrgId::generate()).collect();
    let orgs: Vec<credgate::ids::OrgId> = (0..n).map(|i| four[i % 4].clone()).collect();
    let results = futures::future::join_all(orgs.iter().map(|org| sftp::probe(ctx, org, req))).await;
    let wall = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut lags = ticker.await.unwrap();
    lags.sort_by(f64::total_cmp);
    let p99 = lags[((lags.len() as f64 - 1.0) * 0.99).round() as usize];
    let latencies: Vec<f64> = results.iter().map(|r| r.latency_ms as f64).collect();
    json!({
        "probes": n,
        "all_ok": results.iter().all(|r| r.ok),
        "wall_ms": millis(wall).round(),
        "probe_latency": summary(latencies),
        "runtime_tick_lag_p99_ms": (p99 * 100.0).round() / 100.0,
    })
}

/// The real server (`target/release/credgate serve`, its own process): `n`
/// concurrent `POST /integrations/sftp/test-connection` while `/healthz` is
/// asked every 5 ms; reports the health check's latency meanwhile.
async fn healthz_during_http_probes(ssh: &sshd::Sshd, n: usize) -> serde_json::Value {
    let exe = std::env::current_exe().unwrap();
    let binary = exe.parent().and_then(|p| p.parent()).unwrap().join("credgate");
    assert!(binary.exists(), "cargo build --release first");
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("bench.db").display());
    let port = ports::unused_port();
    let env = |cmd: &mut Command| {
        cmd.env("CREDGATE_DATABASE_URL", &db)
            .env(
                "CREDGATE_PROVIDERS_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
            )
            .env("CREDGATE_LISTEN", format!("127.0.0.1:{port}"))
            .env("CREDGATE_EGRESS_ALLOW", "127.0.0.0/8")
            .env("CREDGATE_PROBE_LIMIT_PER_MIN", "0")
            .env("CREDGATE_RATE_LIMIT_PER_ORG", "0")
            .env("CREDGATE_LOG", "warn");
    };
    let run = |args: &[&str]| {
        let mut cmd = Command::new(&binary);
        env(&mut cmd);
        let out = cmd.args(args).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let org = run(&["org", "create", "bench"]);
    let key = run(&["api-key", "create", "--org", &org, "--role", "admin"]);
    let mut server = {
        let mut cmd = Command::new(&binary);
        env(&mut cmd);
        cmd.args(["serve", "--no-worker"])
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checker = tokio::spawn({
        let (stop, client, base) = (Arc::clone(&stop), client.clone(), base.clone());
        async move {
            let mut samples = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let asked = Instant::now();
                let ok = client
                    .get(format!("{base}/healthz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                samples.push((millis(asked.elapsed()), ok));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            samples
        }
    });
    let body = json!({"host": "127.0.0.1", "port": ssh.port, "username": sshd::KEY_USER,
                      "private_key": ssh.key("id_ed25519"), "path": ssh.listing_dir()});
    let started = Instant::now();
    let probes = futures::future::join_all((0..n).map(|_| {
        client
            .post(format!("{base}/integrations/sftp/test-connection"))
            .bearer_auth(&key)
            .json(&body)
            .send()
    }))
    .await;
    let wall = started.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let samples = checker.await.unwrap();
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();
    let mut sorted: Vec<f64> = samples.iter().map(|(ms, _)| *ms).collect();
    sorted.sort_by(f64::total_cmp);
    let p99 = (sorted[((sorted.len() as f64 - 1.0) * 0.99).round() as usize] * 100.0).round() / 100.0;
    let mut ok_probes = 0;
    for r in probes {
        let v: serde_json::Value = r.unwrap().json().await.unwrap();
        ok_probes += usize::from(v["ok"] == json!(true));
    }
    json!({
        "probes": n,
        "probes_ok": ok_probes,
        "probes_wall_ms": millis(wall).round(),
        "healthz_checks": samples.len(),
        "healthz_all_ok": samples.iter().all(|(_, ok)| *ok),
        "healthz": summary(samples.iter().map(|(ms, _)| *ms).collect()),
        "healthz_p99_ms": p99,
    })
}
