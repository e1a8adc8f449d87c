//! An organization's own webhook endpoints: a `whsec_` secret shown once,
//! notifications delivered in order per endpoint and signed the Standard
//! Webhooks way (checked with the `standardwebhooks` reference library and
//! with our own code), rotation with both signatures for 24 hours, the test
//! delivery and its log, and the egress guard at creation and at delivery.
//! Receivers are wiremock servers on loopback that record what they get.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use crate::both_backends;
use crate::helpers::{captured_logs, test_config, Org, TestApp, TestDb};

/// An app whose egress policy admits loopback (where the receivers are).
async fn app_on(db: &TestDb) -> TestApp {
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    TestApp::spawn_with(config).await
}

/// A receiver that answers each POST with `statuses` in turn, then 204.
async fn receiver(statuses: &[u16]) -> MockServer {
    // Not from wiremock's pool: each test's receiver is its own.
    let server = MockServer::builder().start().await;
    for status in statuses {
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(*status))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(&server)
            .await;
    }
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204))
        .with_priority(2)
        .mount(&server)
        .await;
    server
}

/// What `server` received once it has `want` requests (or after 10 s).
async fn received(server: &MockServer, want: usize) -> Vec<Request> {
    for _ in 0..200 {
        let got = server.received_requests().await.unwrap_or_default();
        if got.len() >= want {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.received_requests().await.unwrap_or_default()
}

async fn create(app: &TestApp, org: &Org, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, "/integrations/webhooks", &org.admin, Some(body))
        .await
}

/// Creates an endpoint to `server` taking `events`; returns its id and secret.
async fn endpoint(app: &TestApp, org: &Org, server: &MockServer, events: Option<&[&str]>) -> (String, String) {
    let mut body = json!({"url": format!("{}/hook", server.uri()), "description": "ops"});
    if let Some(events) = events {
        body["events"] = json!(events);
    }
    let (status, created) = create(app, org, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

fn header(r: &Request, name: &str) -> String {
    r.headers
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

fn kind(r: &Request) -> String {
    serde_json::from_slice::<Value>(&r.body).unwrap()["type"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Does one of the request's signatures verify with `secret` (our code)?
fn ours(secret: &str, r: &Request) -> bool {
    let secret = SecretString::from(secret.to_owned());
    let ts: i64 = header(r, "webhook-timestamp").parse().unwrap();
    let expected = credgate::webhooks::standard_signature(&secret, &header(r, "webhook-id"), ts, &r.body);
    header(r, "webhook-signature").split(' ').any(|s| s == expected)
}

/// The `standardwebhooks` library's verdict on each (secret, request) with
/// the receiver's clock at `now`: "ok" or its error.
fn library(checks: &[(&str, &Request)], now: i64) -> Vec<String> {
    use std::io::Write;
    let input: Vec<Value> = checks
        .iter()
        .map(|(secret, r)| {
            json!({
                "secret": secret,
                "body": String::from_utf8(r.body.clone()).unwrap(),
                "headers": {
                    "webhook-id": header(r, "webhook-id"),
                    "webhook-timestamp": header(r, "webhook-timestamp"),
                    "webhook-signature": header(r, "webhook-signature"),
                },
                "now": now,
            })
        })
        .collect();
    let path: std::path::PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/api/webhook_verify.py"]
        .iter()
        .collect();
    let mut child = std::process::Command::new("python3")
        .arg(path)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&input).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "webhook_verify.py failed (run scripts/install-test-deps.sh): {}",
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn endpoints_of(app: &TestApp, org: &Org) -> Vec<Value> {
    let (status, list) = app.call(Method::GET, "/integrations/webhooks", &org.admin, None).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    list["items"].as_array().unwrap().clone()
}

async fn deliveries(app: &TestApp, org: &Org, id: &str) -> (StatusCode, Value) {
    app.call(
        Method::GET,
        &format!("/integrations/webhooks/{id}/deliveries"),
        &org.admin,
        None,
    )
    .await
}

async fn an_endpoint_is_made_by_an_admin_its_secret_shown_once_and_bad_input_refused(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let server = receiver(&[]).await;
    let url = format!("{}/hook", server.uri());

    let (engine, _) = app
        .call(
            Method::POST,
            "/integrations/webhooks",
            &app.org.engine,
            Some(json!({"url": url})),
        )
        .await;
    let (member, _) = app
        .call(Method::GET, "/integrations/webhooks", &app.org.member, None)
        .await;
    let refused = [
        (json!({"url": "not a url"}), "url"),
        (json!({"url": "ftp://127.0.0.1/x"}), "url"),
        (json!({"url": "http://user:pw@127.0.0.1/x"}), "url"),
        (json!({"url": format!("http://127.0.0.1/{}", "a".repeat(2100))}), "url"),
        (json!({"url": "http://10.20.30.40/hook"}), "url"),
        (json!({"url": "http://169.254.169.254/latest/meta-data"}), "url"),
        (json!({"url": "http://[::1]:9/hook"}), "url"),
        (json!({"url": url, "events": ["credential.nope"]}), "events"),
        (json!({"url": url, "events": []}), "events"),
        (json!({"url": url, "description": "d".repeat(501)}), "description"),
        (json!({"url": url, "secret": "whsec_mine"}), ""),
    ];
    let mut answers = Vec::new();
    for (body, field) in &refused {
        let (status, problem) = create(&app, &app.org, body.clone()).await;
        answers.push((status, problem, *field));
    }
    let nothing = endpoints_of(&app, &app.org).await;
    let (status, created) = create(
        &app,
        &app.org,
        json!({"url": url, "events": ["credential.created", "credential.created"], "description": "ops"}),
    )
    .await;
    let listed = endpoints_of(&app, &app.org).await;
    let other = app.new_org("Other").await;
    let theirs = endpoints_of(&app, &other).await;
    let id = created["id"].as_str().unwrap();
    let mut foreign = Vec::new();
    for (method, path) in [
        (Method::DELETE, format!("/integrations/webhooks/{id}")),
        (Method::POST, format!("/integrations/webhooks/{id}/rotate-secret")),
        (Method::POST, format!("/integrations/webhooks/{id}/test")),
        (Method::GET, format!("/integrations/webhooks/{id}/deliveries")),
        (Method::DELETE, "/integrations/webhooks/not-a-uuid".to_owned()),
    ] {
        foreign.push(app.call(method, &path, &other.admin, None).await.0);
    }
    let mut quota = Vec::new();
    for _ in 0..21 {
        quota.push(create(&app, &other, json!({"url": url})).await);
    }

    assert_eq!(engine, StatusCode::FORBIDDEN);
    assert_eq!(member, StatusCode::FORBIDDEN);
    for (status, problem, field) in answers {
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        if !field.is_empty() {
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    }
    assert!(nothing.is_empty(), "a refused endpoint is not stored");
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap();
    let key = secret.strip_prefix("whsec_").expect("a whsec_ secret");
    use base64::Engine;
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(key).unwrap().len(), 32);
    assert_eq!(created["url"], url);
    assert_eq!(created["events"], json!(["credential.created"]), "named once");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["id"], created["id"]);
    assert_eq!(listed[0]["description"], "ops");
    assert!(listed[0].get("secret").is_none());
    assert!(!Value::Array(listed).to_string().contains(key), "never listed");
    assert!(!captured_logs().contains(key), "never logged");
    assert!(theirs.is_empty(), "another organization sees none of it");
    assert!(
        foreign.iter().all(|s| *s == StatusCode::NOT_FOUND),
        "nor reaches it: {foreign:?}"
    );
    assert!(quota[..20].iter().all(|(s, _)| *s == StatusCode::CREATED));
    assert_eq!(quota[20].0, StatusCode::CONFLICT, "{}", quota[20].1);
    assert_eq!(quota[20].1["code"], "quota_exceeded");
}
both_backends!(an_endpoint_is_made_by_an_admin_its_secret_shown_once_and_bad_input_refused);

async fn each_endpoint_gets_its_organizations_notifications_of_its_types_in_order_and_signed(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let all = receiver(&[]).await;
    let deletions = receiver(&[]).await;
    let elsewhere = receiver(&[]).await;
    let (_, all_secret) = endpoint(&app, &app.org, &all, None).await;
    let (_, deletion_secret) = endpoint(&app, &app.org, &deletions, Some(&["credential.deleted"])).await;
    let other = app.new_org("Other").await;
    endpoint(&app, &other, &elsewhere, None).await;

    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(app.create_pg(&app.org, &format!("db{n}"), "SENTINEL-pw").await);
    }
    app.call(
        Method::DELETE,
        &format!("/integrations/credentials/{}", ids[1]),
        &app.org.admin,
        None,
    )
    .await;
    let got = received(&all, 5).await;
    let got_deletions = received(&deletions, 1).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, events) = app
        .call(Method::GET, "/integrations/events", &app.org.admin, None)
        .await;
    let verdicts = library(
        &got.iter()
            .map(|r| (all_secret.as_str(), r))
            .chain(got_deletions.iter().map(|r| (deletion_secret.as_str(), r)))
            .chain(got.iter().take(1).map(|r| (deletion_secret.as_str(), r)))
            .collect::<Vec<_>>(),
        app.clock.now(),
    );

    let kinds: Vec<String> = got.iter().map(kind).collect();
    assert_eq!(
        kinds,
        [
            "credential.created",
            "credential.created",
            "credential.created",
            "credential.created",
            "credential.deleted"
        ]
    );
    let credentials: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["credential_id"].clone())
        .collect();
    let mut expected: Vec<Value> = ids.iter().map(|id| json!(id)).collect();
    expected.push(json!(ids[1]));
    assert_eq!(credentials, expected, "in the order they happened");
    let event_ids: Vec<Value> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].clone())
        .collect();
    let sent_ids: Vec<Value> = got.iter().map(|r| json!(header(r, "webhook-id"))).collect();
    assert_eq!(sent_ids, event_ids, "each notification once, under its event id");
    assert_eq!(got_deletions.len(), 1, "only the types it asked for");
    assert_eq!(kind(&got_deletions[0]), "credential.deleted");
    assert!(
        elsewhere.received_requests().await.unwrap().is_empty(),
        "another organization's endpoint gets none of these"
    );
    for r in got.iter() {
        assert!(ours(&all_secret, r), "our code verifies it");
        assert_eq!(header(r, "content-type"), "application/json");
        assert!(!String::from_utf8_lossy(&r.body).contains("SENTINEL"));
    }
    assert!(ours(&deletion_secret, &got_deletions[0]));
    assert!(
        !ours(&deletion_secret, &got[0]),
        "each endpoint signs with its own secret"
    );
    let (oks, last) = verdicts.split_at(verdicts.len() - 1);
    assert!(
        oks.iter().all(|v| v == "ok"),
        "the reference library verifies: {verdicts:?}"
    );
    assert!(last[0].contains("No matching signature"), "{last:?}");
}
both_backends!(each_endpoint_gets_its_organizations_notifications_of_its_types_in_order_and_signed);

async fn a_refusing_endpoint_holds_later_notifications_until_the_first_is_taken(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let server = receiver(&[500, 503]).await;
    let (id, _) = endpoint(&app, &app.org, &server, None).await;

    let first = app.create_pg(&app.org, "first", "pw").await;
    let refused = received(&server, 1).await;
    let second = app.create_pg(&app.org, "second", "pw").await;
    let third = app.create_pg(&app.org, "third", "pw").await;
    // The retries come due (1 s, then 2 s, with jitter) on the test clock.
    app.clock.advance(2);
    received(&server, 2).await;
    app.clock.advance(3);
    let got = received(&server, 5).await;
    // The receiver has the last one; its outcome is recorded just after.
    let (mut status, mut log) = deliveries(&app, &app.org, &id).await;
    for _ in 0..100 {
        if log["items"]
            .as_array()
            .is_some_and(|items| items.iter().all(|d| d["state"] != "pending"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        (status, log) = deliveries(&app, &app.org, &id).await;
    }

    assert_eq!(refused.len(), 1);
    let order: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice::<Value>(&r.body).unwrap()["credential_id"].clone())
        .collect();
    assert_eq!(
        order,
        [json!(first), json!(first), json!(first), json!(second), json!(third)],
        "nothing overtakes a notification still being retried"
    );
    assert_eq!(
        header(&got[0], "webhook-id"),
        header(&got[2], "webhook-id"),
        "a retry is the same message"
    );
    assert_eq!(status, StatusCode::OK, "{log}");
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{log}");
    let oldest = &items[2];
    assert_eq!(oldest["type"], "credential.created");
    assert_eq!(oldest["event_id"], json!(header(&got[0], "webhook-id")));
    assert_eq!(oldest["state"], "delivered");
    assert_eq!(oldest["attempts"], 3);
    assert_eq!(oldest["status"], 204);
    assert_eq!(oldest["last_error"], Value::Null);
    assert!(items.iter().all(|d| d["state"] == "delivered"), "{log}");
}
both_backends!(a_refusing_endpoint_holds_later_notifications_until_the_first_is_taken);

async fn a_delivery_never_taken_is_given_up_after_25_hours_and_the_next_goes(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let server = MockServer::builder().start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(500))
        .mount(&server)
        .await;
    let (id, _) = endpoint(&app, &app.org, &server, None).await;

    app.create_pg(&app.org, "first", "pw").await;
    received(&server, 1).await;
    app.create_pg(&app.org, "second", "pw").await;
    let mut given_up = Value::Null;
    for _ in 0..20 {
        app.clock.advance(3 * 3600);
        tokio::time::sleep(Duration::from_millis(700)).await;
        let (_, log) = deliveries(&app, &app.org, &id).await;
        let items = log["items"].as_array().unwrap().clone();
        if items.last().is_some_and(|d| d["state"] == "failed") {
            given_up = log;
            break;
        }
    }
    let items = given_up["items"].as_array().expect("given up within 60 hours").clone();
    let second_id = items[0]["event_id"].as_str().unwrap().to_owned();
    let mut second_sent = false;
    for _ in 0..100 {
        let got = server.received_requests().await.unwrap();
        if got.iter().any(|r| header(r, "webhook-id") == second_id) {
            second_sent = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let given_up_count = app
        .metric("credgate_webhook_deliveries_total{outcome=\"given_up\"}")
        .await;

    let oldest = items.last().unwrap();
    assert!(given_up_count >= 1, "{given_up_count}");
    assert_eq!(oldest["state"], "failed");
    assert_eq!(oldest["status"], 500);
    assert_eq!(oldest["last_error"], "the endpoint answered HTTP 500");
    assert!(oldest["attempts"].as_i64().unwrap() >= 2, "{oldest}");
    assert!(second_sent, "the next one went once the first was given up");
}
both_backends!(a_delivery_never_taken_is_given_up_after_25_hours_and_the_next_goes);

async fn a_rotated_secret_signs_beside_the_new_one_for_24_hours(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let server = receiver(&[]).await;
    let (id, old) = endpoint(&app, &app.org, &server, None).await;
    let test = format!("/integrations/webhooks/{id}/test");

    // A key rotation re-seals the secret; it signs as before.
    let rotation = app.state.vault.rotate_org(&app.org.id).await.unwrap();
    app.call(Method::POST, &test, &app.org.admin, None).await;
    let (status, rotated) = app
        .call(
            Method::POST,
            &format!("/integrations/webhooks/{id}/rotate-secret"),
            &app.org.admin,
            None,
        )
        .await;
    let new = rotated["secret"].as_str().unwrap().to_owned();
    let listed = endpoints_of(&app, &app.org).await;
    let (_, during) = app.call(Method::POST, &test, &app.org.admin, None).await;
    let got = received(&server, 2).await;
    let now = app.clock.now();
    let verdicts = library(&[(&old, &got[0]), (&old, &got[1]), (&new, &got[1])], now);
    app.clock.advance(24 * 3600 + 1);
    let (_, after) = app.call(Method::POST, &test, &app.org.admin, None).await;
    let got = received(&server, 3).await;
    let later = library(&[(&new, &got[2]), (&old, &got[2])], app.clock.now());
    let listed_later = endpoints_of(&app, &app.org).await;

    assert_eq!(rotation.webhooks_resealed, 1);
    assert_eq!(status, StatusCode::OK, "{rotated}");
    assert!(new.starts_with("whsec_") && new != old);
    assert_eq!(rotated["id"], json!(id));
    assert!(listed[0]["previous_secret_until"].is_string(), "{listed:?}");
    assert_eq!(during["state"], "delivered", "{during}");
    assert_eq!(header(&got[1], "webhook-signature").split(' ').count(), 2);
    assert_eq!(verdicts, ["ok", "ok", "ok"], "both secrets verify for 24 hours");
    assert!(ours(&old, &got[1]) && ours(&new, &got[1]));
    assert_eq!(after["state"], "delivered", "{after}");
    assert_eq!(header(&got[2], "webhook-signature").split(' ').count(), 1);
    assert_eq!(later[0], "ok");
    assert!(later[1].contains("No matching signature"), "{later:?}");
    assert!(ours(&new, &got[2]) && !ours(&old, &got[2]));
    assert!(listed_later[0]["previous_secret_until"].is_null());
    let logs = captured_logs();
    for secret in [&old, &new] {
        assert!(!logs.contains(secret.trim_start_matches("whsec_")));
    }
}
both_backends!(a_rotated_secret_signs_beside_the_new_one_for_24_hours);

async fn a_test_delivery_answers_with_its_outcome_and_is_logged(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let server = receiver(&[500]).await;
    let (id, secret) = endpoint(&app, &app.org, &server, None).await;
    let test = format!("/integrations/webhooks/{id}/test");

    let (status, refused) = app.call(Method::POST, &test, &app.org.admin, None).await;
    let (_, taken) = app.call(Method::POST, &test, &app.org.admin, None).await;
    let got = received(&server, 2).await;
    let closed = crate::ports::unused_port();
    let (_, nobody) = create(
        &app,
        &app.org,
        json!({"url": format!("http://127.0.0.1:{closed}/hook")}),
    )
    .await;
    let (_, unreachable) = app
        .call(
            Method::POST,
            &format!("/integrations/webhooks/{}/test", nobody["id"].as_str().unwrap()),
            &app.org.admin,
            None,
        )
        .await;
    let (_, log) = deliveries(&app, &app.org, &id).await;
    let counted = [
        app.metric("credgate_webhook_deliveries_total{outcome=\"refused\"}")
            .await,
        app.metric("credgate_webhook_deliveries_total{outcome=\"delivered\"}")
            .await,
        app.metric("credgate_webhook_deliveries_total{outcome=\"unreachable\"}")
            .await,
    ];

    assert_eq!(counted, [1, 1, 1], "each attempt counted by outcome");
    assert_eq!(status, StatusCode::OK, "{refused}");
    assert_eq!(refused["type"], "webhook.test");
    assert_eq!(refused["state"], "failed");
    assert_eq!(refused["status"], 500);
    assert_eq!(refused["attempts"], 1);
    assert_eq!(refused["last_error"], "the endpoint answered HTTP 500");
    assert_eq!(taken["state"], "delivered", "{taken}");
    assert_eq!(taken["status"], 204);
    assert_eq!(unreachable["state"], "failed");
    assert_eq!(unreachable["status"], Value::Null);
    assert_eq!(unreachable["last_error"], "the endpoint could not be reached");
    assert_eq!(kind(&got[1]), "webhook.test");
    assert_eq!(header(&got[1], "webhook-id"), taken["event_id"].as_str().unwrap());
    assert!(ours(&secret, &got[1]));
    let body: Value = serde_json::from_slice(&got[1].body).unwrap();
    assert_eq!(body["webhook_id"], json!(id));
    let states: Vec<&Value> = log["items"].as_array().unwrap().iter().map(|d| &d["state"]).collect();
    assert_eq!(states, [&json!("delivered"), &json!("failed")], "newest first");
}
both_backends!(a_test_delivery_answers_with_its_outcome_and_is_logged);

async fn the_egress_guard_applies_at_every_delivery_not_only_at_creation(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let server = receiver(&[]).await;
    let (id, _) = endpoint(&app, &app.org, &server, None).await;
    // A replica whose policy no longer admits loopback (the policy changed,
    // or the name now resolves inside): it refuses to deliver there.
    let mut strict = test_config(&db);
    strict.master_keys = app.config.master_keys.clone();
    strict.egress_allow = String::new();
    let replica = TestApp::spawn_with_clock(strict, app.clock.clone()).await;
    let port = server.address().port();

    let (status, outcome) = replica
        .call(
            Method::POST,
            &format!("/integrations/webhooks/{id}/test"),
            &app.org.admin,
            None,
        )
        .await;
    let (named, problem) = create(
        &replica,
        &app.org,
        json!({"url": format!("http://localhost:{port}/hook")}),
    )
    .await;

    assert_eq!(status, StatusCode::OK, "{outcome}");
    assert_eq!(
        replica
            .metric("credgate_webhook_deliveries_total{outcome=\"denied\"}")
            .await,
        1
    );
    assert_eq!(outcome["state"], "failed");
    assert_eq!(
        outcome["last_error"],
        "the address is not allowed by credgate's egress policy"
    );
    assert!(server.received_requests().await.unwrap().is_empty(), "nothing was sent");
    assert_eq!(named, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
    assert_eq!(problem["errors"][0]["field"], "url");
    assert!(
        !problem.to_string().contains("127.0.0.1"),
        "the address is not told: {problem}"
    );
}
both_backends!(the_egress_guard_applies_at_every_delivery_not_only_at_creation);

async fn a_deleted_endpoint_gets_nothing_more(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let server = receiver(&[]).await;
    let (id, _) = endpoint(&app, &app.org, &server, None).await;
    app.create_pg(&app.org, "before", "pw").await;
    received(&server, 1).await;

    let (deleted, _) = app
        .call(
            Method::DELETE,
            &format!("/integrations/webhooks/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    app.create_pg(&app.org, "after", "pw").await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (again, _) = app
        .call(
            Method::DELETE,
            &format!("/integrations/webhooks/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    let (log, _) = deliveries(&app, &app.org, &id).await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries")
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(server.received_requests().await.unwrap().len(), 1);
    assert_eq!(again, StatusCode::NOT_FOUND);
    assert_eq!(log, StatusCode::NOT_FOUND);
    assert_eq!(rows, 0, "its deliveries went with it");
    assert!(endpoints_of(&app, &app.org).await.is_empty());
}
both_backends!(a_deleted_endpoint_gets_nothing_more);

/// PATCH changes an endpoint in place: its secret and its pending delivery
/// stay (the delivery goes to the new URL); bad changes are refused by
/// field and change nothing.
async fn an_endpoint_is_changed_in_place_keeping_its_secret_and_queue(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let other = app.new_org("Other").await;
    let (old, new) = (receiver(&[503]).await, receiver(&[]).await);
    let (id, secret) = endpoint(&app, &app.org, &old, Some(&["credential.created"])).await;
    app.create_pg(&app.org, "waiting", "pw").await;
    received(&old, 1).await;
    let path = format!("/integrations/webhooks/{id}");
    let patch = |key: String, body: Value| {
        let (app, path) = (&app, &path);
        async move { app.call(Method::PATCH, path, &key, Some(body)).await }
    };
    let new_url = format!("{}/moved", new.uri());

    let mut refused = Vec::new();
    for (body, field) in [
        (json!({"url": "http://10.1.2.3/x"}), "url"),
        (json!({"url": "ftp://example.com/"}), "url"),
        (json!({"events": ["credential.nope"]}), "events"),
        (json!({"events": []}), "events"),
        (json!({"description": "x".repeat(501)}), "description"),
        (json!({"secret": "whsec_mine"}), "secret"),
    ] {
        let (status, problem) = patch(app.org.admin.clone(), body).await;
        refused.push((status, problem["errors"][0]["field"].clone(), field));
    }
    let (member, _) = patch(app.org.member.clone(), json!({"description": "m"})).await;
    let (theirs, _) = patch(other.admin.clone(), json!({"description": "t"})).await;
    let unchanged = endpoints_of(&app, &app.org).await;
    let (status, changed) = patch(
        app.org.admin.clone(),
        json!({"url": new_url, "events": null, "description": "moved"}),
    )
    .await;
    app.clock.advance(3600);
    let first = received(&new, 1).await;
    app.call(
        Method::DELETE,
        &format!(
            "/integrations/credentials/{}",
            app.create_pg(&app.org, "gone", "pw").await
        ),
        &app.org.admin,
        None,
    )
    .await;
    let all = received(&new, 3).await;
    let listed = endpoints_of(&app, &app.org).await;

    for (status, got, want) in &refused {
        assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{want}");
        assert_eq!(got, want);
    }
    assert_eq!(member, StatusCode::FORBIDDEN);
    assert_eq!(theirs, StatusCode::NOT_FOUND, "another organization's endpoint");
    assert_eq!(
        unchanged[0]["url"],
        format!("{}/hook", old.uri()),
        "refusals changed nothing"
    );
    assert_eq!(unchanged[0]["events"], json!(["credential.created"]));
    assert_eq!(unchanged[0]["description"], "ops");
    assert_eq!(status, StatusCode::OK, "{changed}");
    assert_eq!(changed["url"], new_url);
    assert_eq!(changed["events"], Value::Null, "every type");
    assert_eq!(changed["description"], "moved");
    assert!(changed.get("secret").is_none(), "{changed}");
    assert_eq!(listed[0], changed);
    assert_eq!(old.received_requests().await.unwrap().len(), 1);
    assert_eq!(
        kind(&first[0]),
        "credential.created",
        "the delivery that waited went to the new URL"
    );
    assert!(all.iter().all(|r| ours(&secret, r)), "signed with the same secret");
    assert!(
        all.iter().any(|r| kind(r) == "credential.deleted"),
        "every type now: {:?}",
        all.iter().map(kind).collect::<Vec<_>>()
    );
}
both_backends!(an_endpoint_is_changed_in_place_keeping_its_secret_and_queue);

/// An organization being deleted (marked, its keys destroyed, its rows not
/// yet purged) has its deliveries left alone: they could not be signed.
/// Another organization's delivery, due at the same moment, is sent.
async fn an_organization_being_deleted_gets_no_delivery_retried(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let other = app.new_org("Other").await;
    // The leaving endpoint refuses for a while: a retry that comes before
    // the organization is marked (the first is due a second later, in real
    // time) leaves its delivery pending too.
    let (leaving, staying) = (receiver(&[503; 5]).await, receiver(&[503]).await);
    let (leaving_id, _) = endpoint(&app, &app.org, &leaving, None).await;
    let (staying_id, _) = endpoint(&app, &other, &staying, None).await;
    app.create_pg(&app.org, "ours", "pw").await;
    app.create_pg(&other, "theirs", "pw").await;
    received(&leaving, 1).await;
    received(&staying, 1).await;

    // What `org delete` does first, before it purges the rows.
    sqlx::query("UPDATE organizations SET deleted_at = $1 WHERE id = $2")
        .bind(app.clock.now())
        .bind(&app.org.id)
        .execute(&app.sql().await)
        .await
        .unwrap();
    // An attempt claimed before the mark may still finish: wait for it (a
    // dispatcher tick, then no lease held), and count from there.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let leased = || async {
        let lease: Option<String> =
            sqlx::query_scalar("SELECT lease_owner FROM webhook_deliveries WHERE endpoint_id = $1")
                .bind(&leaving_id)
                .fetch_one(&app.sql().await)
                .await
                .unwrap();
        lease.is_some()
    };
    for _ in 0..100 {
        if !leased().await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before_mark = leaving.received_requests().await.unwrap().len();
    let attempts_before: i64 = sqlx::query_scalar("SELECT attempts FROM webhook_deliveries WHERE endpoint_id = $1")
        .bind(&leaving_id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    app.clock.advance(3600);
    let retried = received(&staying, 2).await.len();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let leaving_got = leaving.received_requests().await.unwrap().len();
    let states: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT endpoint_id, CASE WHEN delivered_at IS NULL THEN 'pending' ELSE 'delivered' END, attempts \
         FROM webhook_deliveries ORDER BY endpoint_id",
    )
    .fetch_all(&app.sql().await)
    .await
    .unwrap();

    assert_eq!(retried, 2, "the other organization's delivery was retried");
    assert_eq!(
        leaving_got, before_mark,
        "nothing more went to the deleted organization's endpoint"
    );
    let state_of = |id: &str| states.iter().find(|(e, _, _)| e == id).cloned().unwrap();
    assert_eq!(state_of(&leaving_id).2, attempts_before, "{states:?}");
    assert_eq!(state_of(&leaving_id).1, "pending", "{states:?}");
    assert_eq!(state_of(&staying_id).1, "delivered", "{states:?}");
}
both_backends!(an_organization_being_deleted_gets_no_delivery_retried);

/// `credgate events replay --org` sends an organization's endpoints their
/// notifications again, in their order; another organization's are left.
async fn events_replay_sends_an_organizations_endpoints_their_notifications_again(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let other = app.new_org("Other").await;
    let (ours, theirs) = (receiver(&[]).await, receiver(&[]).await);
    endpoint(&app, &app.org, &ours, None).await;
    endpoint(&app, &other, &theirs, None).await;
    app.create_pg(&app.org, "first", "pw").await;
    app.create_pg(&app.org, "second", "pw").await;
    app.create_pg(&other, "theirs", "pw").await;
    let before: Vec<String> = received(&ours, 2)
        .await
        .iter()
        .map(|r| header(r, "webhook-id"))
        .collect();
    received(&theirs, 1).await;

    let keys = crate::helpers::master_keys(&app.config);
    let replay = crate::cli::credgate(
        &db,
        Some(&keys),
        &["events", "replay", "--since", "1h", "--org", app.org.id.as_str()],
    );
    let after: Vec<String> = received(&ours, 4)
        .await
        .iter()
        .map(|r| header(r, "webhook-id"))
        .collect();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let theirs_got = theirs.received_requests().await.unwrap().len();
    let stdout = String::from_utf8_lossy(&replay.stdout).into_owned();

    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    assert!(
        stdout.contains(
            "2 notifications queued for delivery again, and 2 deliveries to organizations' webhook endpoints"
        ),
        "{stdout}"
    );
    assert_eq!(before.len(), 2);
    assert_eq!(after[..2], before[..], "{after:?}");
    assert_eq!(after[2..], before[..], "sent again, in their order: {after:?}");
    assert_eq!(theirs_got, 1, "another organization's endpoint got nothing again");
}
both_backends!(events_replay_sends_an_organizations_endpoints_their_notifications_again);

async fn two_replicas_delivering_at_once_send_each_notification_once_in_order(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = app_on(&db).await;
    let replica = TestApp::spawn_with_clock(app.config.clone(), app.clock.clone()).await;
    // A slow receiver: each delivery holds its lease while the other
    // replica's dispatcher looks for work.
    let server = MockServer::builder().start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(204).set_delay(Duration::from_millis(40)))
        .mount(&server)
        .await;
    endpoint(&app, &app.org, &server, Some(&["credential.created"])).await;

    for n in 0..12 {
        let writer = if n % 2 == 0 { &app } else { &replica };
        writer.create_pg(&app.org, &format!("c{n}"), "pw").await;
    }
    let got = received(&server, 12).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let got_later = server.received_requests().await.unwrap();
    let (_, events) = app
        .call(Method::GET, "/integrations/events", &app.org.admin, None)
        .await;

    let written: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    let sent: Vec<String> = got.iter().map(|r| header(r, "webhook-id")).collect();
    assert_eq!(written.len(), 12);
    assert_eq!(sent, written, "each once, in the order written");
    assert_eq!(got_later.len(), 12, "and nothing twice");
}
both_backends!(two_replicas_delivering_at_once_send_each_notification_once_in_order);

/// A stopped app leaves no dispatcher behind: dropping the serving future
/// ends its background tasks, whose database pool (and polling) would
/// otherwise outlive it (a defect of the first version of the endpoints'
/// dispatcher: a test run with many replicas ran out of connections).
#[test]
fn a_dropped_app_keeps_no_connection_open() {
    crate::helpers::run_test(async {
        let db = TestDb::new(crate::helpers::Backend::Postgres).await;
        let open = || crate::helpers::credgate_connections(&db);
        let app = app_on(&db).await;
        app.create_pg(&app.org, "c", "pw").await;
        let while_running = open().await;

        drop(app);
        let mut after = while_running;
        for _ in 0..50 {
            after = open().await;
            if after == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        assert!(while_running > 0);
        assert_eq!(after, 0, "every connection of the stopped app closed");
    });
}
