//! Throughput of the gateway beside nginx, on one machine, in one run.
//!
//! ```sh
//! scripts/install-bench-deps.sh    # wrk and nginx-light (Debian)
//! cargo build --release            # the server binary, target/release/credgate
//! cargo run --release --example proxy_bench -- [--seconds 10] [--connections 32] [--pgbench-seconds 10]
//! ```
//!
//! What it does, printing ONE JSON document on stdout (progress on stderr):
//!
//! 1. Starts nginx (Debian `nginx-light`, its default worker count) with
//!    two servers: an upstream answering every request with a small JSON
//!    body, and a reverse proxy to it (kept-alive upstream connections)
//!    that sets `Authorization: Bearer …`, as the gateway does.
//! 2. Creates a Postgres database `cg_proxy_<random>`, migrates it and
//!    creates an organization, an admin and an engine key with the real
//!    binary's commands, starts `credgate serve` (rate limit off,
//!    `CREDGATE_LOG=warn`, loopback allowed by the egress guard), and
//!    creates an `http` credential whose base URL is the nginx upstream.
//! 3. Runs `wrk --latency` (2 threads, `--connections`, `--seconds` each,
//!    after a 2 s warm-up) against (1) the upstream directly, (2) the nginx
//!    proxy, (3) `…/credentials/{id}/proxy/items` with the engine key: each
//!    call is written as a use (`credential.proxy`) on PostgreSQL before it
//!    leaves, and gets its status and latency just after.
//! 4. Around each measured run, reads from `/proc` the CPU time (user and
//!    system) of nginx's processes (upstream and proxy share them), the
//!    credgate server, PostgreSQL's processes and wrk:
//!    `cpu_us_per_request`, in microseconds per request, and the share of
//!    the machine's CPU time left idle (`machine_idle_share`: near 0, the
//!    run was bound by CPU, not by waiting). Unlike requests per second,
//!    CPU per request hardly moves with what else the machine is doing;
//!    it does move between machines (a virtual machine whose system calls
//!    cost more makes every process dearer).
//! 5. Runs the same against `hyper_floor`: this example started again as
//!    the least reverse proxy credgate's own HTTP stack makes (tokio's
//!    multi-threaded runtime, hyper's HTTP/1 server, hyper-util's pooled
//!    client; no routing, no authentication of the caller, no record),
//!    setting the same header: what the stack alone costs per call.
//! 6. With `--rounds N`, N pairs more: nginx's proxy then credgate's, one
//!    right after the other, each pair's ratio and their median
//!    (`credgate_to_nginx_proxy_median_of_rounds`): a machine whose speed
//!    drifts over minutes moves both runs of a pair alike.
//! 7. Counts the `credential.proxy` events (every answered call has one)
//!    and runs `pgbench -N` (one read-write transaction each) with as many
//!    clients, for scale.
//!
//! Load generator, proxies, upstream and database share the machine's
//! cores. Run nothing else heavy at the same time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::{json, Value};

/// Gateway beside nginx (see the file's doc).
#[derive(clap::Parser)]
struct Args {
    /// Seconds of each measured wrk run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// wrk connections (and pgbench clients).
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds of `pgbench -N`.
    #[arg(long, default_value_t = 10)]
    pgbench_seconds: u64,
    /// How credgate and pgbench reach PostgreSQL: `tcp` (127.0.0.1, with
    /// TLS when the server offers it, as Debian's does) or `socket` (its
    /// Unix socket in /var/run/postgresql, as a database on the same
    /// machine would be reached).
    #[arg(long, default_value = "tcp")]
    database: Database,
    /// Pairs of runs after the first pass: nginx's proxy, then credgate's,
    /// `seconds` each, one pair after another. Each pair's ratio is taken
    /// within a few seconds, so a machine whose speed drifts over minutes
    /// moves both runs of a pair alike; the median of the pairs is
    /// reported beside the first pass's ratio.
    #[arg(long, default_value_t = 0)]
    rounds: usize,
    /// credgate's log filter (`CREDGATE_LOG`): `warn` keeps its per-call
    /// lines out of the measurement; `info` is the default a server runs
    /// with. The server's log goes to the bench's stderr.
    #[arg(long, default_value = "warn")]
    log: String,
    /// A command the server runs under, such as `valgrind --tool=callgrind`
    /// (words split at spaces): instructions per call, which unlike time
    /// do not move with the machine's noise.
    #[arg(long)]
    server_wrapper: Option<String>,
    /// Runs as the floor proxy only (LISTEN UPSTREAM), as the bench starts
    /// it.
    #[arg(long, num_args = 2, value_names = ["LISTEN", "UPSTREAM"], hide = true)]
    floor_proxy: Option<Vec<String>>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Database {
    Tcp,
    Socket,
}

impl Database {
    fn url(self, name: &str) -> String {
        match self {
            Database::Tcp => format!("postgres://root@127.0.0.1:5432/{name}"),
            Database::Socket => format!("postgres://root@localhost/{name}?host=/var/run/postgresql"),
        }
    }

    /// pgbench's `-h`.
    fn host(self) -> &'static str {
        match self {
            Database::Tcp => "127.0.0.1",
            Database::Socket => "/var/run/postgresql",
        }
    }
}

/// What one wrk run measured.
#[derive(Debug, Clone, Copy)]
struct Wrk {
    requests: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: f64,
}

impl Wrk {
    fn json(&self) -> Value {
        json!({
            "requests": self.requests,
            "requests_per_s": round(self.rps, 0),
            "p50_ms": round(self.p50_ms, 2),
            "p99_ms": round(self.p99_ms, 2),
            "non_2xx_or_socket_errors": self.errors,
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    if let Some([listen, upstream]) = args.floor_proxy.as_deref() {
        return floor_proxy(listen, upstream);
    }
    for tool in ["wrk", "nginx", "pgbench", "psql"] {
        if which(tool).is_none() {
            bail!("{tool} is missing: run scripts/install-bench-deps.sh");
        }
    }
    let dir = tempfile::tempdir()?;
    let name = format!("cg_proxy_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    psql(&format!("CREATE DATABASE {name}"))?;
    let result = run(&args, dir.path(), &name);
    psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}

fn run(args: &Args, dir: &Path, db: &str) -> anyhow::Result<Value> {
    let url = &args.database.url(db);
    let upstream_port = free_port()?;
    let proxy_port = free_port()?;
    let _nginx = Guard(nginx(dir, upstream_port, proxy_port)?);
    let bin = credgate_binary()?;
    let master_key = command(&bin, url, "", &["keys", "generate"])?;
    command(&bin, url, &master_key, &["migrate"])?;
    let org = command(&bin, url, &master_key, &["org", "create", "Bench"])?;
    let key = |role: &str| {
        command(
            &bin,
            url,
            &master_key,
            &["api-key", "create", "--org", &org, "--role", role],
        )
    };
    let (admin, engine) = (key("admin")?, key("engine")?);
    let addr = format!("127.0.0.1:{}", free_port()?);
    let mut serve = match &args.server_wrapper {
        Some(wrapper) => {
            let mut words = wrapper.split_whitespace();
            let mut cmd = Command::new(words.next().context("an empty --server-wrapper")?);
            cmd.args(words).arg(&bin);
            cmd
        }
        None => Command::new(&bin),
    };
    let server = Guard(
        serve
            .arg("serve")
            .current_dir(dir)
            .env("CREDGATE_DATABASE_URL", url)
            .env("CREDGATE_MASTER_KEYS", &master_key)
            .env("CREDGATE_LISTEN", &addr)
            .env("CREDGATE_RATE_LIMIT_PER_ORG", "0")
            // wrk's connections all use the one credential.
            .env(
                "CREDGATE_PROXY_CONCURRENCY_PER_CREDENTIAL",
                args.connections.max(32).to_string(),
            )
            .env("CREDGATE_EGRESS_ALLOW", "127.0.0.0/8")
            .env("CREDGATE_LOG", &args.log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start credgate serve")?,
    );
    eprintln!("credgate serve on {addr} (pid {})", server.0.id());
    wait_for(&format!("http://{addr}/readyz"))?;
    let created = curl(&[
        "-sf",
        "-H",
        &format!("Authorization: Bearer {admin}"),
        "-H",
        "Content-Type: application/json",
        "-d",
        &json!({"name": "bench", "provider": "http", "auth_type": "api_key", "fields": {
            "base_url": format!("http://127.0.0.1:{upstream_port}"), "scheme": "bearer", "token": "bench-token"}})
        .to_string(),
        &format!("http://{addr}/integrations/credentials"),
    ])?;
    let id = serde_json::from_str::<Value>(&created)?["id"]
        .as_str()
        .context("no credential id")?
        .to_owned();

    let floor_addr = format!("127.0.0.1:{}", free_port()?);
    let floor = Guard(
        Command::new(std::env::current_exe()?)
            .args([
                "--floor-proxy",
                &floor_addr,
                &format!("http://127.0.0.1:{upstream_port}"),
            ])
            .stdin(Stdio::null())
            .spawn()
            .context("cannot start the floor proxy")?,
    );
    wait_for(&format!("http://{floor_addr}/items"))?;

    let engine_header = format!("Authorization: Bearer {engine}");
    let server_pid = server.0.id();
    // Each target, and the process whose CPU is counted as its server's.
    let targets = [
        (
            "nginx_direct",
            format!("http://127.0.0.1:{upstream_port}/items"),
            None,
            server_pid,
        ),
        (
            "nginx_proxy",
            format!("http://127.0.0.1:{proxy_port}/items"),
            None,
            server_pid,
        ),
        (
            "credgate_proxy",
            format!("http://{addr}/integrations/credentials/{id}/proxy/items"),
            Some(engine_header.as_str()),
            server_pid,
        ),
        ("hyper_floor", format!("http://{floor_addr}/items"), None, floor.0.id()),
    ];
    // The database's transactions, rows written, updates and heap-only
    // updates, for the gateway's run.
    let counters = || -> anyhow::Result<[f64; 4]> {
        let commits = psql_value(
            db,
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()",
        )?;
        let rows = psql_value(
            db,
            "SELECT COALESCE(SUM(n_tup_ins + n_tup_upd), 0) || ' ' || COALESCE(SUM(n_tup_upd), 0) || ' ' \
             || COALESCE(SUM(n_tup_hot_upd), 0) FROM pg_stat_user_tables",
        )?;
        let mut rows = rows.split(' ').map(str::parse::<f64>);
        let mut next = || -> anyhow::Result<f64> { Ok(rows.next().context("a counter is missing")??) };
        Ok([commits.parse()?, next()?, next()?, next()?])
    };
    let mut measured = serde_json::Map::new();
    let mut figures = Vec::new();
    let mut per_call = Value::Null;
    let mut cpu = serde_json::Map::new();
    for (label, target, header, pid) in &targets {
        eprintln!("wrk: {label}");
        wrk(target, *header, 2, args.connections)?;
        let before = counters()?;
        let cpu_before = cpu_seconds(*pid);
        let machine_before = machine_ticks();
        let w = wrk(target, *header, args.seconds, args.connections)?;
        let cpu_after = cpu_seconds(*pid);
        let machine_after = machine_ticks();
        let micros = |i: usize| round((cpu_after[i] - cpu_before[i]) * 1e6 / w.requests.max(1.0), 1);
        let (busy, idle) = (
            machine_after[0] - machine_before[0],
            machine_after[1] - machine_before[1],
        );
        cpu.insert(
            (*label).into(),
            json!({
                "nginx": micros(0),
                // The floor proxy's, in its run.
                if *label == "hyper_floor" { "hyper_floor" } else { "credgate" }: micros(1),
                "postgres": micros(2),
                "wrk": micros(3),
                "machine_idle_share": round(idle / (busy + idle).max(1.0), 3),
            }),
        );
        if header.is_some() {
            // Outcomes are written just after the answers: let them land.
            std::thread::sleep(Duration::from_secs(1));
            let after = counters()?;
            let calls = w.requests.max(1.0);
            per_call = json!({
                "commits": round((after[0] - before[0]) / calls, 3),
                "rows_written": round((after[1] - before[1]) / calls, 3),
                "updates_heap_only_share": round((after[3] - before[3]) / (after[2] - before[2]).max(1.0), 3),
            });
        }
        measured.insert((*label).into(), w.json());
        figures.push(w);
    }
    let mut paired = Vec::new();
    for pair in 0..args.rounds {
        eprintln!("wrk: pair {} of {}", pair + 1, args.rounds);
        let (_, proxy_target, _, _) = &targets[1];
        let (_, gateway_target, header, _) = &targets[2];
        let proxy = wrk(proxy_target, None, args.seconds, args.connections)?;
        let gateway = wrk(gateway_target, *header, args.seconds, args.connections)?;
        paired.push(json!({
            "nginx_proxy_requests_per_s": round(proxy.rps, 0),
            "credgate_requests_per_s": round(gateway.rps, 0),
            "credgate_p99_ms": round(gateway.p99_ms, 2),
            "ratio": round(gateway.rps / proxy.rps, 3),
        }));
    }
    let mut ratios: Vec<f64> = paired.iter().filter_map(|p| p["ratio"].as_f64()).collect();
    ratios.sort_by(f64::total_cmp);
    let median = match ratios.len() {
        0 => None,
        n if n % 2 == 1 => Some(ratios[n / 2]),
        n => Some(round((ratios[n / 2 - 1] + ratios[n / 2]) / 2.0, 3)),
    };
    // Each answered call left its use; the outcomes of the last calls
    // (those wrk cut off, whose use may still have been being written)
    // are given a few seconds to land.
    for _ in 0..20 {
        let missing = psql_value(
            db,
            "SELECT COUNT(*) FROM audit_events e WHERE e.action = 'credential.proxy'              AND NOT EXISTS (SELECT 1 FROM use_outcomes o WHERE o.event_id = e.id)",
        )?;
        if missing == "0" {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let uses: f64 = psql_value(
        db,
        "SELECT COUNT(*) FROM audit_events WHERE action = 'credential.proxy'",
    )?
    .parse()?;
    let with_status: f64 = psql_value(
        db,
        "SELECT COUNT(*) FROM audit_events e JOIN use_outcomes o ON o.event_id = e.id \
         WHERE e.action = 'credential.proxy' AND CAST(o.detail AS jsonb) ->> 'status' = '200'",
    )?
    .parse()?;
    // The others, by what became of them (wrk cuts its last calls off:
    // `abandoned`).
    let others = psql_value(
        db,
        "SELECT COALESCE(json_object_agg(k, n), '{}') FROM (SELECT COALESCE(CAST(o.detail AS jsonb) ->> 'error',          CAST(o.detail AS jsonb) ->> 'status', 'no outcome') AS k, COUNT(*) AS n FROM audit_events e          LEFT JOIN use_outcomes o ON o.event_id = e.id WHERE e.action = 'credential.proxy'          AND (o.detail IS NULL OR CAST(o.detail AS jsonb) ->> 'status' IS DISTINCT FROM '200') GROUP BY 1) t",
    )?;
    let others: serde_json::Value = serde_json::from_str(&others)?;
    let peak_rss_mib = peak_rss_kib(server.0.id()).map(|k| round(k / 1024.0, 1));
    drop(server);
    eprintln!("pgbench -N");
    let pgbench = pgbench_n(args.database, args.connections, args.pgbench_seconds)?;
    let (proxy, gateway, stack) = (figures[1], figures[2], figures[3]);
    Ok(json!({
        "connections": args.connections,
        "database": match args.database {
            Database::Tcp => "tcp",
            Database::Socket => "socket",
        },
        "wrk_threads": 2,
        "seconds": args.seconds,
        "credgate_log": args.log,
        "runs": measured,
        "credgate_to_nginx_proxy": round(gateway.rps / proxy.rps, 3),
        "hyper_floor_to_nginx_proxy": round(stack.rps / proxy.rps, 3),
        "credgate_to_hyper_floor": round(gateway.rps / stack.rps, 3),
        "credgate_p99_ms": round(gateway.p99_ms, 2),
        "rounds": paired,
        "credgate_to_nginx_proxy_median_of_rounds": median,
        "uses_recorded": uses,
        "database_per_gateway_call": per_call,
        "credgate_peak_rss_mib": peak_rss_mib,
        "cpu_us_per_request": cpu,
        "uses_with_status_200": with_status,
        "uses_without_status_200": others,
        "pgbench_simple_update_tps": round(pgbench, 0),
        "credgate_to_pgbench_n": round(gateway.rps / pgbench, 3),
    }))
}

/// Stops its process when dropped: SIGTERM (nginx's master then stops its
/// workers), SIGKILL after 5 s.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        for _ in 0..50 {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx(dir: &Path, upstream: u16, proxy: u16) -> anyhow::Result<Child> {
    let conf = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/nginx.error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             keepalive_requests 1000000;\n\
             upstream service {{ server 127.0.0.1:{upstream}; keepalive 64; }}\n\
             server {{ listen 127.0.0.1:{upstream}; default_type application/json;\n\
             location / {{ return 200 '{{\"id\":1,\"name\":\"item\"}}'; }} }}\n\
             server {{ listen 127.0.0.1:{proxy};\n\
             location / {{ proxy_pass http://service; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
             proxy_set_header Authorization \"Bearer bench-token\"; }} }}\n}}\n"
        ),
    )?;
    let child = Command::new("nginx")
        .args(["-p", &d.to_string(), "-c", &conf.display().to_string()])
        .stdin(Stdio::null())
        .spawn()
        .context("cannot start nginx")?;
    wait_for(&format!("http://127.0.0.1:{proxy}/items"))?;
    Ok(child)
}

/// One wrk run against `target`.
fn wrk(target: &str, header: Option<&str>, seconds: u64, connections: usize) -> anyhow::Result<Wrk> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t2",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    if let Some(h) = header {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(target).output().context("cannot run wrk")?;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
    };
    let rps: f64 = field("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{text}"))?;
    let requests: f64 = text
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let errors: f64 = field("Non-2xx or 3xx responses:")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
        + text
            .lines()
            .find_map(|l| l.trim().strip_prefix("Socket errors:"))
            .map(|v| {
                v.split(',')
                    .filter_map(|p| p.split_whitespace().nth(1).and_then(|n| n.parse::<f64>().ok()))
                    .sum()
            })
            .unwrap_or(0.0);
    let latency = |p: &str| field(p).and_then(|v| millis(&v));
    Ok(Wrk {
        requests,
        rps,
        p50_ms: latency("50%").context("no p50")?,
        p99_ms: latency("99%").context("no p99")?,
        errors,
    })
}

/// wrk's `123.45us`, `1.20ms`, `2.00s` in milliseconds.
fn millis(v: &str) -> Option<f64> {
    let (n, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = n.parse().ok()?;
    match unit {
        "us" => Some(n / 1000.0),
        "ms" => Some(n),
        "s" => Some(n * 1000.0),
        "m" => Some(n * 60_000.0),
        _ => None,
    }
}

/// Linux's clock ticks per second (`getconf CLK_TCK`).
const TICKS: f64 = 100.0;

/// CPU seconds (user and system) used so far by nginx's processes, by the
/// credgate server (process `credgate`), by PostgreSQL's processes and by
/// this process's children it has waited for (the wrk runs, gone before
/// their CPU time could be read from their own `/proc` entry).
fn cpu_seconds(credgate: u32) -> [f64; 4] {
    let mut seconds = [0.0; 4];
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        if let Some(close) = stat.rfind(')') {
            // cutime and cstime are fields 16 and 17.
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            seconds[3] = (ticks(16) + ticks(17)) / TICKS;
        }
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return seconds;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let slot = match &stat[open + 1..close] {
            _ if pid == credgate => 1,
            "nginx" => 0,
            "postgres" => 2,
            _ => continue,
        };
        // After the name: state is field 3; utime and stime fields 14 and 15.
        let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
        let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        seconds[slot] += (ticks(14) + ticks(15)) / TICKS;
    }
    seconds
}

/// The whole machine's clock ticks so far, all cores: busy (interrupts
/// included) and idle (waiting for the disk included), from `/proc/stat`.
fn machine_ticks() -> [f64; 2] {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return [0.0; 2];
    };
    // user nice system idle iowait irq softirq steal …
    let ticks: Vec<f64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    let get = |i: usize| ticks.get(i).copied().unwrap_or(0.0);
    let idle = get(3) + get(4);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    [busy, idle]
}

/// A process's peak resident memory (`VmHWM`), in KiB.
fn peak_rss_kib(pid: u32) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// `target/release/credgate`, beside this example.
fn credgate_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("credgate"))
        .context("cannot locate the target directory")?;
    if !bin.exists() {
        bail!("{} is missing: run `cargo build --release` first", bin.display());
    }
    Ok(bin)
}

/// Runs a credgate command; its stdout's first line.
fn command(bin: &Path, url: &str, master_key: &str, args: &[&str]) -> anyhow::Result<String> {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("CREDGATE_DATABASE_URL", url)
        .env("CREDGATE_LOG", "warn");
    if !master_key.is_empty() {
        cmd.env("CREDGATE_MASTER_KEYS", master_key);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("credgate {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_owned())
}

fn wait_for(url: &str) -> anyhow::Result<()> {
    // Two minutes: a server under valgrind starts slowly.
    for _ in 0..1200 {
        if curl(&["-sf", "-o", "/dev/null", url]).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{url} did not answer within 120 s")
}

fn curl(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("curl").args(args).output().context("cannot run curl")?;
    if !out.status.success() {
        bail!("curl {:?} failed", args.last());
    }
    Ok(String::from_utf8_lossy(&out.stdout).to_string())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.exists())
}

fn psql(sql: &str) -> anyhow::Result<()> {
    psql_value("postgres", sql).map(|_| ())
}

fn psql_value(db: &str, sql: &str) -> anyhow::Result<String> {
    let out = Command::new("psql")
        .args("-h 127.0.0.1 -U root -v ON_ERROR_STOP=1 -qtA".split(' '))
        .args(["-d", db, "-c", sql])
        .output()
        .context("cannot run psql")?;
    if !out.status.success() {
        bail!("psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// `pgbench -N` (select, update, insert: one read-write transaction each)
/// on a scratch database; its tps.
fn pgbench_n(database: Database, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    psql("DROP DATABASE IF EXISTS cg_pgbench WITH (FORCE)")?;
    psql("CREATE DATABASE cg_pgbench")?;
    let common = ["-h", database.host(), "-U", "root"];
    let init = Command::new("pgbench")
        .args(common)
        .args(["-i", "-q", "-s", "10", "cg_pgbench"])
        .output()?;
    if !init.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let run = Command::new("pgbench")
        .args(common)
        .args(format!("-N -n -c {clients} -j 2 -T {seconds} cg_pgbench").split(' '))
        .output()?;
    let out = String::from_utf8_lossy(&run.stdout);
    psql("DROP DATABASE IF EXISTS cg_pgbench WITH (FORCE)")?;
    out.lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .with_context(|| format!("no tps in pgbench output:\n{out}"))
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}

/// The least reverse proxy credgate's HTTP stack makes: tokio's
/// multi-threaded runtime, hyper's HTTP/1 server and hyper-util's pooled
/// client, as credgate's gateway uses them, forwarding each request to
/// `upstream` with the header the gateway would set. No routing, no
/// caller's key, no record, no masking: what the stack costs per call.
fn floor_proxy(listen: &str, upstream: &str) -> anyhow::Result<()> {
    use hyper::body::Incoming;
    use hyper_util::client::legacy::{connect::HttpConnector, Client};
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let client: Client<HttpConnector, Incoming> = Client::builder(TokioExecutor::new()).build_http();
        let upstream: std::sync::Arc<str> = upstream.into();
        loop {
            let (stream, _) = listener.accept().await?;
            stream.set_nodelay(true)?;
            let (client, upstream) = (client.clone(), upstream.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                    let (client, upstream) = (client.clone(), upstream.clone());
                    async move {
                        let (mut parts, body) = request.into_parts();
                        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                        parts.uri = format!("{upstream}{path}").parse().expect("a URL");
                        parts.headers.remove(hyper::header::HOST);
                        parts.headers.insert(
                            hyper::header::AUTHORIZATION,
                            hyper::header::HeaderValue::from_static("Bearer bench-token"),
                        );
                        client.request(hyper::Request::from_parts(parts, body)).await
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
