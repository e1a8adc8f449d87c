//! Refresh benchmark: 10,000 OAuth credentials all due at once, two worker
//! replicas (`credgate serve --worker-only`, separate processes) on one
//! PostgreSQL database, a stand-in token endpoint on loopback that rotates
//! refresh tokens on every use and counts any reuse.
//!
//! ```sh
//! cargo build --release && cargo run --release --example refresh_bench -- [N]
//! ```
//!
//! Prints one JSON document: time until every credential was refreshed,
//! refreshes per second, duplicates (a refresh token used twice), misses,
//! each replica's peak resident memory, and the stand-in's own maximum rate
//! (measured alone, same client concurrency) so the ratio shows what
//! credgate adds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::routing::post;
use axum::{Json, Router};
use credgate::app::Services;
use credgate::config::Config;
use credgate::credentials::{self, Grant};
use credgate::crypto::MasterKeyring;
use credgate::oauth_client::{Identity, TokenSet};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

const ADMIN_URL: &str = "postgres://root@127.0.0.1:5432/postgres";

#[derive(Default)]
struct TokenServer {
    /// refresh token → already used?
    refresh: HashMap<String, bool>,
    grants: u64,
    reuse: u64,
}

type Shared = Arc<Mutex<TokenServer>>;

async fn token(
    State(s): State<Shared>,
    Form(form): Form<HashMap<String, String>>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    let mut s = s.lock().unwrap();
    s.grants += 1;
    let rt = form.get("refresh_token").cloned().unwrap_or_default();
    match s.refresh.get(&rt).copied() {
        Some(false) => {
            s.refresh.insert(rt, true);
            let next = format!("RT-{}", uuid::Uuid::new_v4().simple());
            s.refresh.insert(next.clone(), false);
            let body = json!({"access_token": format!("AT-{}", uuid::Uuid::new_v4().simple()),
                              "token_type": "Bearer", "expires_in": 3600, "refresh_token": next});
            (axum::http::StatusCode::OK, Json(body))
        }
        Some(true) => {
            s.reuse += 1;
            (
                axum::http::StatusCode::BAD_REQUEST,
                Json(json!({"error": "invalid_grant", "error_description": "AADSTS70008: reuse"})),
            )
        }
        None => (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_grant"})),
        ),
    }
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

/// The stand-in's own ceiling: valid refreshes as fast as 64 clients can.
async fn standin_max_rps(base: &str, server: &Shared, n: usize) -> f64 {
    let tokens: Vec<String> = {
        let mut s = server.lock().unwrap();
        (0..n)
            .map(|_| {
                let t = format!("RT-{}", uuid::Uuid::new_v4().simple());
                s.refresh.insert(t.clone(), false);
                t
            })
            .collect()
    };
    let client = reqwest::Client::new();
    let url = format!("{base}/token");
    let started = Instant::now();
    let tokens = Arc::new(Mutex::new(tokens));
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (client, url, tokens) = (client.clone(), url.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(rt) = tokens.lock().unwrap().pop() else { break };
                let form = [
                    ("grant_type", "refresh_token"),
                    ("refresh_token", rt.as_str()),
                    ("client_id", "c"),
                    ("client_secret", "s"),
                ];
                let _ = client.post(&url).form(&form).send().await.map(|r| r.status());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let server: Shared = Arc::default();
    let app = Router::new().route("/token", post(token)).with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let db = format!("cg_refresh_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(ADMIN_URL).await?;
    sqlx::Executor::execute(&mut admin, format!("CREATE DATABASE {db}").as_str()).await?;
    let url = format!("postgres://root@127.0.0.1:5432/{db}");
    let keys = MasterKeyring::generate_key();
    let overrides = [
        ("CREDGATE_PROVIDER_SHAREPOINT_TOKEN_URL", format!("{base}/token")),
        ("CREDGATE_PROVIDER_SHAREPOINT_CLIENT_ID", "c".to_owned()),
        ("CREDGATE_PROVIDER_SHAREPOINT_CLIENT_SECRET", "s".to_owned()),
    ];
    let mut config = Config::for_database(&url);
    config.master_keys = Some(keys.clone());
    config
        .provider_overrides
        .extend(overrides.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let services = Services::init(config).await?;
    let org = credgate::ids::OrgId::generate();
    services.vault.create_org(&org, "bench").await?;
    services.store.set_org_limit(&org, "sharepoint", n as i64 + 1).await?;
    let ctx = credgate::app::context(services)?;

    eprintln!("seeding {n} OAuth credentials…");
    let expires_at = chrono::Utc::now().timestamp() + 60;
    let seed = futures::stream::iter(0..n).map(|i| {
        let (ctx, server, org) = (ctx.clone(), server.clone(), org.clone());
        async move {
            let rt = format!("RT-{}", uuid::Uuid::new_v4().simple());
            server.lock().unwrap().refresh.insert(rt.clone(), false);
            let provider = ctx.registry.get("sharepoint").expect("the sharepoint provider file");
            let client = credgate::oauth_apps::for_new(&ctx, &org, provider).await.unwrap();
            let grant = Grant {
                client: &client,
                extra_fields: Vec::new(),
                org_id: &org,
                state_hash: None,
                provider,
                actor: "bench",
                name: Some(credgate::ids::CredentialName::lossy(&format!("c{i}"))),
                credential_id: None,
                owner: None,
                tenant: None,
                tokens: TokenSet {
                    access_token: SecretString::from(format!("AT-seed-{i}")),
                    refresh_token: Some(SecretString::from(rt)),
                    expires_in: Some(Duration::from_secs(60)),
                    refresh_expires_in: None,
                    scopes: None,
                    identity: None,
                },
                identity: Identity {
                    id: format!("acct-{i}"),
                    email: None,
                    display_name: None,
                    tenant_id: None,
                },
            };
            credentials::connect(&ctx, grant).await.unwrap();
        }
    });
    use futures::StreamExt;
    seed.buffer_unordered(16).collect::<Vec<_>>().await;
    ctx.store.close().await;
    // All due now: the benchmark measures a backlog, not the jittered schedule.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await?;
    sqlx::query("UPDATE credentials SET refresh_after = NULL")
        .execute(&pool)
        .await?;
    pool.close().await;

    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .and_then(|p| p.parent())
        .map(|p| p.join("credgate"))
        .expect("target dir");
    anyhow::ensure!(binary.exists(), "build the binary first: cargo build --release");
    let spawn = || {
        let mut cmd = std::process::Command::new(&binary);
        cmd.args(["serve", "--worker-only"])
            .env("CREDGATE_DATABASE_URL", &url)
            .env("CREDGATE_MASTER_KEYS", keys.expose_secret())
            .env(
                "CREDGATE_PROVIDERS_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
            )
            .env("CREDGATE_LOG", "warn");
        for (k, v) in &overrides {
            cmd.env(k, v);
        }
        cmd.spawn()
    };
    let started = Instant::now();
    let started_at = chrono::Utc::now().timestamp();
    let mut replicas = vec![spawn()?, spawn()?];
    let pool = sqlx::PgPool::connect(&url).await?;
    let mut peaks = [0.0f64; 2];
    let refreshed = loop {
        let done: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE last_refreshed_at >= $1 AND expires_at > $2")
                .bind(started_at)
                .bind(expires_at + 100)
                .fetch_one(&pool)
                .await?;
        for (peak, r) in peaks.iter_mut().zip(&replicas) {
            *peak = peak.max(rss_mib(r.id(), "VmRSS:"));
        }
        if done as usize >= n || started.elapsed() > Duration::from_secs(120) {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let hwm: Vec<f64> = replicas.iter().map(|r| rss_mib(r.id(), "VmHWM:")).collect();
    for r in &mut replicas {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &r.id().to_string()])
            .status();
        let _ = r.wait();
    }
    let (grants, reuse) = {
        let s = server.lock().unwrap();
        (s.grants, s.reuse)
    };
    let standin = standin_max_rps(&base, &server, 20_000).await;
    pool.close().await;
    sqlx::Executor::execute(&mut admin, format!("DROP DATABASE {db} WITH (FORCE)").as_str()).await?;

    let rate = refreshed as f64 / seconds;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "backend": "postgres",
            "replicas": 2,
            "credentials": n,
            "refreshed": refreshed,
            "misses": n as i64 - refreshed,
            "seconds": (seconds * 100.0).round() / 100.0,
            "refreshes_per_sec": rate.round(),
            "token_requests": grants,
            "duplicates": reuse,
            "replica_rss_peak_mib": peaks.iter().map(|p| (p * 10.0).round() / 10.0).collect::<Vec<_>>(),
            "replica_vmhwm_mib": hwm.iter().map(|p| (p * 10.0).round() / 10.0).collect::<Vec<_>>(),
            "standin_max_rps": standin.round(),
            "credgate_to_standin_ratio": (rate / standin * 100.0).round() / 100.0,
        }))?
    );
    Ok(())
}
