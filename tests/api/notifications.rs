//! Signed webhooks: created, deleted, refresh failed, recovered.

use std::time::Duration;

use credgate::oauth::worker::try_refresh_due;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::Value;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{sentinel, Backend, TestDb};
use crate::oauth::{connect, oauth_app};
use crate::oauth_server::{AuthServer, Flavor};

async fn events(server: &MockServer, want: usize) -> Vec<wiremock::Request> {
    for _ in 0..100 {
        let received = server.received_requests().await.unwrap_or_default();
        if received.len() >= want {
            return received;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.received_requests().await.unwrap_or_default()
}

#[tokio::test]
async fn webhooks_are_signed_retried_and_carry_no_secret() {
    let db = TestDb::new(Backend::Sqlite).await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(500))
        .up_to_n_times(1)
        .mount(&hook)
        .await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&hook)
        .await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let secret = SecretString::from("whsec-test");
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |c| {
        c.webhook_url = Some(format!("{}/hook", hook.uri()));
        c.webhook_secret = Some(secret.clone());
    })
    .await;
    let password = sentinel();

    let id = app.create_pg(&app.org, "db", &password).await;
    let first = events(&hook, 2).await;
    app.call(
        Method::DELETE,
        &format!("/integrations/credentials/{id}"),
        &app.org.admin,
        None,
    )
    .await;
    let oauth_id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    ms.with(|i| i.token_status = Some(StatusCode::BAD_GATEWAY));
    // Time passes: the refresh comes due (the first time), the backoff ends (the second).
    let (_, after, _) = app.refresh_state(&oauth_id).await;
    app.clock.advance(after.unwrap() - app.clock.now() + 1);
    try_refresh_due(&app.state, 10).await.unwrap();
    ms.with(|i| i.token_status = None);
    // Time passes: the refresh comes due (the first time), the backoff ends (the second).
    let (_, after, _) = app.refresh_state(&oauth_id).await;
    app.clock.advance(after.unwrap() - app.clock.now() + 1);
    try_refresh_due(&app.state, 10).await.unwrap();
    let all = events(&hook, 6).await;

    assert_eq!(first.len(), 2, "the first delivery failed and was retried");
    assert_eq!(first[0].body, first[1].body);
    let header = |r: &wiremock::Request, name: &str| r.headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        header(&first[0], "webhook-id"),
        header(&first[1], "webhook-id"),
        "the id is stable across attempts"
    );
    let mut kinds = Vec::new();
    for req in all.iter().skip(1) {
        let header = req.headers.get("x-credgate-signature").unwrap().to_str().unwrap();
        let ts: i64 = header
            .split(',')
            .next()
            .unwrap()
            .trim_start_matches("t=")
            .parse()
            .unwrap();
        assert_eq!(
            header,
            credgate::webhooks::signature(&secret, ts, &req.body),
            "signature verifies"
        );
        let id = req.headers.get("webhook-id").unwrap().to_str().unwrap();
        let standard_ts: i64 = req
            .headers
            .get("webhook-timestamp")
            .unwrap()
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            req.headers.get("webhook-signature").unwrap().to_str().unwrap(),
            credgate::webhooks::standard_signature(&secret, id, standard_ts, &req.body),
            "the Standard Webhooks signature verifies"
        );
        let body = String::from_utf8(req.body.clone()).unwrap();
        assert!(!body.contains(&password));
        assert!(!body.contains("RT-") && !body.contains("AT-"));
        let event: Value = serde_json::from_str(&body).unwrap();
        kinds.push(event["type"].as_str().unwrap().to_owned());
    }
    for kind in [
        "credential.created",
        "credential.deleted",
        "credential.refresh_failed",
        "credential.recovered",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} missing from {kinds:?}");
    }
}

/// A webhook receiver that counts accepted deliveries per `webhook-id`, and
/// answers 503 until told to accept.
#[derive(Clone, Default)]
struct Receiver {
    accepting: std::sync::Arc<std::sync::atomic::AtomicBool>,
    attempts: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    attempted: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    accepted: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl Receiver {
    async fn start(&self) -> String {
        use axum::http::{HeaderMap, StatusCode as S};
        let me = self.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap| {
                let me = me.clone();
                async move {
                    me.attempts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let id = headers
                        .get("webhook-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    me.attempted.lock().unwrap().insert(id.clone());
                    if !me.accepting.load(std::sync::atomic::Ordering::SeqCst) {
                        return S::SERVICE_UNAVAILABLE;
                    }
                    *me.accepted.lock().unwrap().entry(id).or_default() += 1;
                    S::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        url
    }
}

fn spawn_serve(db: &TestDb, keys: &str, port: u16, hook: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_credgate"))
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CREDGATE_DATABASE_URL", &db.url)
        .env("CREDGATE_MASTER_KEYS", keys)
        .env(
            "CREDGATE_PROVIDERS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
        )
        .env("CREDGATE_LISTEN", format!("127.0.0.1:{port}"))
        .env("CREDGATE_WEBHOOK_URL", hook)
        .env("CREDGATE_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        .env("CREDGATE_LOG", "warn")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Starts `credgate serve` on a free port; returns it once it answers
/// `admin` (its own database's key), with its base URL. A port another
/// test's server took between the choice and the bind makes the process
/// exit (and that server answers 401): it starts again on another port.
async fn start_serve(db: &TestDb, keys: &str, hook: &str, admin: &str) -> (std::process::Child, String) {
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let port = crate::ports::unused_port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = spawn_serve(db, keys, port, hook);
        for _ in 0..400 {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            let answer = client
                .get(format!("{base}/integrations/credentials"))
                .bearer_auth(admin)
                .send()
                .await;
            if answer.is_ok_and(|a| a.status() == StatusCode::OK) {
                return (child, base);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("credgate serve did not start");
}

async fn wait_until(mut ok: impl FnMut() -> bool, secs: u64) -> bool {
    for _ in 0..secs * 20 {
        if ok() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ok()
}

async fn notifications_survive_kill_9_and_are_delivered_once_each_by_the_next_process(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let keys = credgate::crypto::MasterKeyring::generate_key();
    let keys = secrecy::ExposeSecret::expose_secret(&keys).to_owned();
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_credgate"))
            .args(args)
            .env("CREDGATE_DATABASE_URL", &db.url)
            .env("CREDGATE_MASTER_KEYS", &keys)
            .env(
                "CREDGATE_PROVIDERS_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
            )
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    cli(&["migrate"]);
    let org = cli(&["org", "create", "Acme"]);
    let admin = cli(&["api-key", "create", "--org", &org, "--role", "admin"]);
    let receiver = Receiver::default();
    let hook = receiver.start().await;
    let client = reqwest::Client::new();

    let (mut first, base) = start_serve(&db, &keys, &hook, &admin).await;
    for n in 0..5 {
        let res = client
            .post(format!("{base}/integrations/credentials"))
            .bearer_auth(&admin)
            .json(&crate::helpers::pg_body(&format!("db{n}"), &sentinel()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
    }
    // Every event tried (and refused) at least once by the first process;
    // on a loaded machine the first events are retried before the last is tried.
    let attempted = receiver.attempted.clone();
    assert!(
        wait_until(|| attempted.lock().unwrap().len() >= 5, 20).await,
        "the first process tried each event"
    );
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    receiver.accepting.store(true, std::sync::atomic::Ordering::SeqCst);

    let (mut second, base) = start_serve(&db, &keys, &hook, &admin).await;
    let accepted = receiver.accepted.clone();
    // An attempt in flight at the kill holds its lease (30 s) first.
    // Retries back off (1 s doubling), so allow a lease plus a few doublings.
    let all = wait_until(|| accepted.lock().unwrap().len() >= 5, 75).await;
    tokio::time::sleep(Duration::from_secs(2)).await; // room for a duplicate to show
    let events: Value = client
        .get(format!("{base}/integrations/events"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    second.kill().unwrap();
    second.wait().unwrap();

    let counts = receiver.accepted.lock().unwrap().clone();
    assert!(all, "every event was delivered: {counts:?}");
    assert_eq!(counts.len(), 5, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "each exactly once: {counts:?}");
    let items = events["items"].as_array().unwrap();
    assert_eq!(items.len(), 5);
    assert!(
        items
            .iter()
            .all(|e| e["delivery"]["state"] == "delivered" && e["type"] == "credential.created"),
        "{events}"
    );
    // An attempt cut off by the kill is not counted (its outcome was never
    // written); every event was still tried by the first process.
    assert!(items.iter().all(|e| e["delivery"]["attempts"].as_i64().unwrap() >= 1));
    assert_eq!(receiver.attempted.lock().unwrap().len(), 5);
    assert!(items
        .iter()
        .all(|e| counts.contains_key(e["event_id"].as_str().unwrap())));
}
crate::both_backends!(notifications_survive_kill_9_and_are_delivered_once_each_by_the_next_process);

async fn admins_read_events_back_and_operators_replay_them(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let hook = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/hook"))
        .respond_with(ResponseTemplate::new(204))
        .mount(&hook)
        .await;
    let mut config = crate::helpers::test_config(&db);
    config.webhook_url = Some(format!("{}/hook", hook.uri()));
    config.webhook_secret = Some(SecretString::from("s"));
    let app = crate::helpers::TestApp::spawn_with(config).await;
    for n in 0..3 {
        app.create_pg(&app.org, &format!("db{n}"), "pw").await;
    }
    let delivered = events(&hook, 3).await.len();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let (status, page) = app
        .call(Method::GET, "/integrations/events", &app.org.admin, None)
        .await;
    let first_id = page["items"][0]["id"].as_i64().unwrap();
    let (_, rest) = app
        .call(
            Method::GET,
            &format!("/integrations/events?after={first_id}"),
            &app.org.admin,
            None,
        )
        .await;
    let (member, _) = app
        .call(Method::GET, "/integrations/events", &app.org.member, None)
        .await;
    let (bad, problem) = app
        .call(Method::GET, "/integrations/events?after=abc", &app.org.admin, None)
        .await;
    let other = app.new_org("Other").await;
    let (_, others) = app.call(Method::GET, "/integrations/events", &other.admin, None).await;
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_credgate"))
        .args(["events", "replay", "--since", "1h"])
        .env("CREDGATE_DATABASE_URL", &db.url)
        .env("CREDGATE_MASTER_KEYS", crate::helpers::master_keys(&app.config))
        .env(
            "CREDGATE_PROVIDERS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
        )
        .output()
        .unwrap();
    app.state.webhooks.wake();
    let again = events(&hook, 6).await.len();

    assert_eq!(delivered, 3);
    assert_eq!(status, StatusCode::OK);
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 3);
    assert!(items.iter().all(|e| e["delivery"]["state"] == "delivered"), "{page}");
    assert!(
        items.windows(2).all(|w| w[0]["id"].as_i64() < w[1]["id"].as_i64()),
        "oldest first"
    );
    assert_eq!(rest["items"].as_array().unwrap().len(), 2);
    assert_eq!(member, StatusCode::FORBIDDEN);
    assert_eq!(bad, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], "after");
    assert_eq!(
        others["items"].as_array().unwrap().len(),
        0,
        "another organization's events are not shown"
    );
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert!(String::from_utf8_lossy(&replay.stdout).contains("3 notifications"));
    assert_eq!(again, 6, "the replayed events were delivered again");
}
crate::both_backends!(admins_read_events_back_and_operators_replay_them);
