//! Load benchmark of credgate's two hot read paths, over loopback HTTP.
//!
//! ```sh
//! cargo build --release            # the server binary, target/release/credgate
//! cargo run --release --example load_bench -- --backend sqlite|postgres \
//!     [--requests 20000] [--list-requests 10000] [--concurrency 32] [--pgbench-seconds 15] [--keep]
//! ```
//!
//! `--keep` leaves the seeded database in place (its URL is printed on stderr)
//! for `EXPLAIN ANALYZE`; the server's pid is printed too, for `perf record -p`.
//!
//! What it does, printing ONE JSON document on stdout (progress goes to stderr):
//!
//! 1. Prepares a fresh database: a SQLite file in a temporary directory, or a
//!    Postgres database `cg_bench_<random>` on `postgres://root@127.0.0.1:5432`
//!    (dropped at the end). Through the library it applies the migrations,
//!    creates one organization with an engine and an admin API key, and seeds
//!    10,000 PostgreSQL credentials (not measured), then on Postgres runs
//!    `ANALYZE`, as autovacuum would (without statistics the planner sorts).
//! 2. Starts the real server, `target/release/credgate serve`, as a separate
//!    process (rate limit off, `CREDGATE_LOG=warn`) so that its resident memory
//!    (`VmRSS`, `VmHWM` from `/proc/<pid>/status`) and CPU time can be read.
//! 3. Drives it with `--concurrency` keep-alive connections (reqwest pool): a
//!    warm-up, then `POST /integrations/credentials/{id}/resolve` (engine key,
//!    random ids), then list pages with the admin key (or bob's, `--sharing`):
//!    `GET /integrations/credentials?per_page=50&page=<1..20>` (`list`, the
//!    issue's figure), `page=<1..200>` (`list_any_page`: deep numbered pages
//!    cost their offset), page 200 by its `after` cursor, and a filtered page
//!    (`provider=postgresql&status=active&q=bench-01`, 1,000 matches,
//!    `page=<1..20>`); then creates with 16 clients. Non-2xx answers count as errors. Each phase reports
//!    requests, seconds, requests/s, p50/p90/p99/max latency (ms), and the
//!    server's CPU seconds (`/proc/<pid>/stat`).
//! 4. With Postgres, runs `pgbench -S` (select only) and `pgbench -N`
//!    (select, update, insert: one read-write transaction each) on a scratch
//!    database `cg_pgbench` (scale 10) with the same number of clients, and
//!    reports their tps and credgate's resolve requests/s ÷ each.
//!
//! The machine is shared with the client: load generator, server and
//! database all compete for the same cores, as they would in the figures
//! asked for. Run nothing else heavy (e.g. a compile) at the same time.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use credgate::app::Services;
use credgate::config::Config;
use credgate::credentials::{self, NewCredentialInput};
use credgate::crypto::MasterKeyring;
use credgate::model::Role;
use credgate::store::Dialect;
use futures::{StreamExt, TryStreamExt};
use rand::{Rng, SeedableRng};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use uuid::Uuid;

const PG_ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/postgres";
const CREDENTIALS: usize = 10_000;
const PER_PAGE: usize = 50;

/// Load benchmark of resolve and list over loopback HTTP (see the file's doc).
#[derive(clap::Parser)]
struct Args {
    /// `sqlite` or `postgres`.
    #[arg(long, value_parser = ["sqlite", "postgres"])]
    backend: String,
    /// Measured resolve requests.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Measured requests of each list phase. 10,000 last 2-6 s here, as a
    /// wrk run of some seconds would: with 2,000 (0.4 s at 5,000 req/s) a
    /// phase's p99 was its first 32 requests, arriving at once.
    #[arg(long, default_value_t = 10_000)]
    list_requests: usize,
    /// Credentials created over HTTP by 16 clients in one organization.
    #[arg(long, default_value_t = 3000)]
    create_requests: usize,
    /// Concurrent keep-alive connections (and pgbench clients).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Duration of `pgbench -S` (Postgres only).
    #[arg(long, default_value_t = 15)]
    pgbench_seconds: u64,
    /// Keep the seeded database (for EXPLAIN ANALYZE).
    #[arg(long)]
    keep: bool,
    /// Personal credentials instead of organization ones: owned by alice,
    /// each shared with bob by a `use` grant; resolve runs with an engine key
    /// bound to bob and lists with bob's member key, so every request takes
    /// the whole sharing check (the row and bob's grant) and the listing's
    /// access predicate.
    #[arg(long)]
    sharing: bool,
}

impl Args {
    fn postgres(&self) -> bool {
        self.backend == "postgres"
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let dir = tempfile::tempdir()?;
    let pg_name = args
        .postgres()
        .then(|| format!("cg_bench_{}", &Uuid::new_v4().simple().to_string()[..12]));
    let url = match &pg_name {
        Some(name) => {
            psql("postgres", &format!("CREATE DATABASE {name}"))?;
            format!("postgres://root@127.0.0.1:5432/{name}")
        }
        None => format!("sqlite://{}", dir.path().join("credgate.db").display()),
    };
    let result = run(&args, &url, dir.path()).await;
    if args.keep {
        eprintln!("kept the database {url}");
        let _ = dir.keep();
    } else if let Some(name) = &pg_name {
        psql("postgres", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))?;
    }
    println!("{}", serde_json::to_string_pretty(&result?)?);
    Ok(())
}

async fn run(args: &Args, url: &str, dir: &Path) -> anyhow::Result<Value> {
    let master_key = MasterKeyring::generate_key();
    let started = Instant::now();
    let (ids, engine, admin) = seed(url, &master_key, args.sharing).await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    eprintln!("seeded {} credentials in {seed_seconds:.1} s", ids.len());

    let mut server = Server::start(url, &master_key, dir)?;
    let base = format!("http://{}", server.addr);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(30))
        .build()?;
    server.wait_ready(&client, &base).await?;
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let ids = Arc::new(ids);
    let resolve = {
        let (client, base, ids) = (client.clone(), base.clone(), ids.clone());
        move |rng: &mut rand::rngs::StdRng| {
            let id = &ids[rng.gen_range(0..ids.len())];
            client
                .post(format!("{base}/integrations/credentials/{id}/resolve"))
                .bearer_auth(&engine)
        }
    };
    let pages = |query: &'static str, last_page: usize| {
        let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
        move |rng: &mut rand::rngs::StdRng| {
            let page = rng.gen_range(1..=last_page);
            client
                .get(format!(
                    "{base}/integrations/credentials?per_page={PER_PAGE}&page={page}{query}"
                ))
                .bearer_auth(&admin)
        }
    };
    let list = pages("", 20);
    let list_any_page = pages("", CREDENTIALS / PER_PAGE);
    let list_filtered = pages("&provider=postgresql&status=active&q=bench-01", 20);

    // Page 200 of 200 by the keyset cursor: walk to it once, then load it.
    let deep_cursor = {
        let mut after: Option<String> = None;
        for _ in 1..CREDENTIALS / PER_PAGE {
            let mut url = format!("{base}/integrations/credentials?per_page={PER_PAGE}");
            if let Some(a) = &after {
                url.push_str(&format!("&after={a}"));
            }
            let page: Value = client.get(url).bearer_auth(&admin).send().await?.json().await?;
            after = page["next"].as_str().map(str::to_owned);
        }
        after.context("no cursor for the last page")?
    };
    let list_keyset = {
        let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
        move |_: &mut rand::rngs::StdRng| {
            client
                .get(format!(
                    "{base}/integrations/credentials?per_page={PER_PAGE}&after={deep_cursor}"
                ))
                .bearer_auth(&admin)
        }
    };
    eprintln!("warm-up");
    drive(&server, args.concurrency, (args.requests / 10).max(1000), &resolve).await?;
    drive(&server, args.concurrency, (args.list_requests / 10).max(200), &list).await?;
    eprintln!("resolve: {} requests, concurrency {}", args.requests, args.concurrency);
    let resolve_report = drive(&server, args.concurrency, args.requests, &resolve).await?;
    eprintln!("list: {} requests", args.list_requests);
    let list_report = drive(&server, args.concurrency, args.list_requests, &list).await?;
    eprintln!("list any page 1-200: {} requests", args.list_requests);
    let list_any_page_report = drive(&server, args.concurrency, args.list_requests, &list_any_page).await?;
    eprintln!("list page 200 by cursor: {} requests", args.list_requests);
    let list_keyset_report = drive(&server, args.concurrency, args.list_requests, &list_keyset).await?;
    eprintln!("list filtered: {} requests", args.list_requests);
    let list_filtered_report = drive(&server, args.concurrency, args.list_requests, &list_filtered).await?;
    let create = {
        let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
        move |rng: &mut rand::rngs::StdRng| {
            let n: u64 = rng.gen();
            client
                .post(format!("{base}/integrations/credentials"))
                .bearer_auth(&admin)
                .json(
                    &json!({"name": format!("created-{n:016x}"), "provider": "postgresql", "auth_type": "user_password",
                               "fields": {"host": "db.example.com", "database": "sales", "username": "etl",
                                          "password": format!("pw-{n}")}}),
                )
        }
    };
    eprintln!("create: {} requests, 16 clients", args.create_requests);
    let create_report = drive(&server, 16, args.create_requests, &create).await?;
    let (rss, hwm) = (server.status_kib("VmRSS:")?, server.status_kib("VmHWM:")?);
    drop(client);
    server.stop();

    let pgbench = if args.postgres() {
        eprintln!(
            "pgbench -S and -N, {} clients, {} s each",
            args.concurrency, args.pgbench_seconds
        );
        Some(pgbench(args.concurrency, args.pgbench_seconds)?)
    } else {
        None
    };
    let resolve_rps = resolve_report["requests_per_second"].as_f64().unwrap_or(0.0);
    Ok(json!({
        "backend": if args.postgres() { "postgres" } else { "sqlite" },
        "sharing": args.sharing,
        "credentials": CREDENTIALS,
        "concurrency": args.concurrency,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "seed_seconds": round(seed_seconds, 1),
        "loadavg_before": loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "resolve": resolve_report,
        "list": list_report,
        "list_any_page": list_any_page_report,
        "list_page_200_by_cursor": list_keyset_report,
        "list_filtered": list_filtered_report,
        "create_16_clients": create_report,
        "rss_mib_after": round(rss / 1024.0, 1),
        "rss_hwm_mib": round(hwm / 1024.0, 1),
        "pgbench_select_only_tps": pgbench.map(|(s, _)| round(s, 0)),
        "pgbench_simple_update_tps": pgbench.map(|(_, n)| round(n, 0)),
        "ratio_to_select_only": pgbench.map(|(s, _)| round(resolve_rps / s, 3)),
        "ratio_to_simple_update": pgbench.map(|(_, n)| round(resolve_rps / n, 3)),
    }))
}

/// Creates the organization, its keys and the credentials through the
/// library; returns the ids, the engine key and the listing key (an admin's,
/// or with `sharing` bob's member key).
async fn seed(url: &str, master_key: &SecretString, sharing: bool) -> anyhow::Result<(Vec<String>, String, String)> {
    let mut config = Config::for_database(url);
    config.master_keys = Some(master_key.clone());
    let services = Services::init(config).await?;
    let org = credgate::ids::OrgId::generate();
    services.vault.create_org(&org, "Bench").await?;
    let ctx = credgate::app::context(services)?;
    let store = &ctx.store;
    store.set_org_limit(&org, "postgresql", 2 * CREDENTIALS as i64).await?;
    let mut tokens = Vec::new();
    let (lister, user) = if sharing {
        (Role::Member, Some(credgate::ids::UserId::parse("bob")?))
    } else {
        (Role::Admin, None)
    };
    for role in [Role::Engine, lister] {
        tokens.push(
            credgate::api_tokens::create(
                store,
                &org,
                role,
                credgate::api_tokens::NewKey {
                    label: Some("load_bench"),
                    user_id: user.as_ref(),
                    ..Default::default()
                },
            )
            .await?,
        );
    }
    // An organization-wide admin key creates organization credentials;
    // with `sharing`, alice creates hers and shares each with bob.
    let creator = credgate::model::Principal {
        org_id: org.clone(),
        key_id: "load_bench".into(),
        role: if sharing { Role::Member } else { Role::Admin },
        user_id: sharing.then(|| credgate::ids::UserId::parse("alice").expect("a user id")),
    };
    let inserts = futures::stream::iter(0..CREDENTIALS).map(|i| {
        let (ctx, creator) = (&ctx, &creator);
        async move {
            let fields = json!({"host": "db.example.com", "port": 5432, "database": format!("db{i}"),
                                "username": "etl", "sslmode": "prefer", "password": format!("bench-password-{i}")});
            let input = NewCredentialInput {
                name: format!("bench-{i:05}"),
                provider: "postgresql".into(),
                auth_type: "user_password".into(),
                fields: fields.as_object().expect("an object").clone(),
                public: Vec::new(),
                expires_at: None,
            };
            let row = credentials::create(ctx, creator, input).await?;
            if sharing {
                let grant = credentials::Sharing::parse(None, vec![("bob".to_owned(), credgate::model::Access::Use)])?;
                credentials::set_sharing(ctx, creator, &row.id, grant).await?;
            }
            anyhow::Ok(row.id.to_string())
        }
    });
    let ids: Vec<String> = inserts.buffer_unordered(8).try_collect().await?;
    if store.dialect() == Dialect::Postgres {
        // What autovacuum would do after a bulk load (VACUUM ANALYZE); this
        // machine's server runs with autovacuum off.
        store.analyze().await?;
    }
    store.close().await;
    let admin = tokens.pop().expect("two tokens");
    let engine = tokens.pop().expect("two tokens");
    Ok((ids, engine, admin))
}

/// The server process.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(url: &str, master_key: &SecretString, dir: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        // target/release/examples/load_bench → target/release/credgate
        let bin: PathBuf = exe
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("credgate"))
            .context("cannot locate the target directory")?;
        if !bin.exists() {
            bail!("{} is missing: run `cargo build --release` first", bin.display());
        }
        let addr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
            probe.local_addr()?.to_string()
        };
        let child = Command::new(&bin)
            .arg("serve")
            .current_dir(dir)
            .env("CREDGATE_DATABASE_URL", url)
            .env("CREDGATE_MASTER_KEYS", master_key.expose_secret())
            .env("CREDGATE_LISTEN", &addr)
            .env("CREDGATE_RATE_LIMIT_PER_ORG", "0")
            .env("CREDGATE_MAX_PER_PROVIDER", "1000000")
            .env("CREDGATE_LOG", "warn")
            .env(
                "CREDGATE_PROVIDERS_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        eprintln!("started {} serve on {addr} (pid {})", bin.display(), child.id());
        Ok(Self { child, addr })
    }

    async fn wait_ready(&mut self, client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait()? {
                bail!("credgate serve exited early: {status}");
            }
            if let Ok(res) = client.get(format!("{base}/readyz")).send().await {
                if res.status().is_success() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("credgate serve was not ready within 30 s")
    }

    /// A `/proc/<pid>/status` line in KiB.
    fn status_kib(&self, key: &str) -> anyhow::Result<f64> {
        let text = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no {key} in /proc status"))
    }

    /// User + system CPU seconds of the process so far (USER_HZ = 100).
    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the ")" that closes the command name: utime is 14th, stime 15th overall.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
        f.get(11).zip(f.get(12)).map_or(0.0, |(u, s)| (u + s) / 100.0)
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends `total` requests built by `make` from `concurrency` tasks; reports.
async fn drive<F>(server: &Server, concurrency: usize, total: usize, make: &F) -> anyhow::Result<Value>
where
    F: Fn(&mut rand::rngs::StdRng) -> reqwest::RequestBuilder + Clone + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = server.cpu_seconds();
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, make) = (next.clone(), make.clone());
            tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::from_entropy();
                let (mut latencies, mut errors, mut first_error) = (Vec::new(), 0usize, None);
                while next.fetch_add(1, Ordering::Relaxed) < total {
                    let t = Instant::now();
                    let ok = match make(&mut rng).send().await {
                        Ok(res) => {
                            let status = res.status();
                            let body = res.bytes().await;
                            (status.is_success() && body.is_ok())
                                .then_some(())
                                .ok_or(status.to_string())
                        }
                        Err(e) => Err(e.to_string()),
                    };
                    latencies.push(t.elapsed().as_micros() as u64);
                    if let Err(what) = ok {
                        errors += 1;
                        first_error.get_or_insert(what);
                    }
                }
                (latencies, errors, first_error)
            })
        })
        .collect();
    let (mut all, mut errors, mut samples) = (Vec::with_capacity(total), 0, Vec::new());
    for task in tasks {
        let (latencies, e, first_error) = task.await?;
        all.extend(latencies);
        errors += e;
        samples.extend(first_error);
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds() - cpu_before;
    all.sort_unstable();
    let pct = |p: f64| {
        let i = ((all.len() as f64 * p).ceil() as usize).clamp(1, all.len().max(1)) - 1;
        round(all.get(i).copied().unwrap_or(0) as f64 / 1000.0, 2)
    };
    samples.truncate(3);
    Ok(json!({
        "requests": all.len(),
        "errors": errors,
        "error_samples": samples,
        "seconds": round(seconds, 2),
        "requests_per_second": round(all.len() as f64 / seconds, 0),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
        "server_cpu_seconds": round(cpu, 2),
        "server_cpu_us_per_request": round(cpu * 1e6 / all.len().max(1) as f64, 0),
    }))
}

/// `pgbench -S` (select only) and `pgbench -N` (select, update, insert:
/// one read-write transaction each) on a scratch database `cg_pgbench`
/// (scale 10); their tps.
fn pgbench(clients: usize, seconds: u64) -> anyhow::Result<(f64, f64)> {
    psql("postgres", "DROP DATABASE IF EXISTS cg_pgbench WITH (FORCE)")?;
    psql("postgres", "CREATE DATABASE cg_pgbench")?;
    let common = ["-h", "127.0.0.1", "-U", "root"];
    let init = Command::new("pgbench")
        .args(common)
        .args(["-i", "-q", "-s", "10", "cg_pgbench"])
        .output()
        .context("cannot run pgbench (install postgresql-contrib / postgresql client)")?;
    if !init.status.success() {
        bail!("pgbench -i failed: {}", String::from_utf8_lossy(&init.stderr));
    }
    let mut tps = Vec::new();
    for mode in ["-S", "-N"] {
        let run = Command::new("pgbench")
            .args(common)
            .args(format!("{mode} -n -c {clients} -j 2 -T {seconds} cg_pgbench").split(' '))
            .output()?;
        let out = String::from_utf8_lossy(&run.stdout);
        if !run.status.success() {
            bail!("pgbench {mode} failed: {}", String::from_utf8_lossy(&run.stderr));
        }
        tps.push(
            out.lines()
                .find_map(|l| l.trim().strip_prefix("tps = "))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
                .with_context(|| format!("no tps in pgbench output:\n{out}"))?,
        );
    }
    psql("postgres", "DROP DATABASE IF EXISTS cg_pgbench WITH (FORCE)")?;
    Ok((tps[0], tps[1]))
}

fn psql(db: &str, sql: &str) -> anyhow::Result<()> {
    let out = Command::new("psql")
        .args("-h 127.0.0.1 -U root -v ON_ERROR_STOP=1 -q".split(' '))
        .args(["-d", db, "-c", sql])
        .output()
        .with_context(|| format!("cannot run psql against {PG_ADMIN_URL}"))?;
    if !out.status.success() {
        bail!("psql {sql:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn round(x: f64, digits: i32) -> f64 {
    let m = 10f64.powi(digits);
    (x * m).round() / m
}
