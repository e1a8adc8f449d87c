//! The outbox under pressure: two dispatchers on one database deliver each
//! event once, one attempt at a time; a malformed stored payload is an
//! error, never an empty body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use credgate::clock::Clock;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;

use crate::helpers::{pg_body, test_config, TestApp, TestDb};

/// Per `webhook-id`: deliveries in flight now, the most at once, the 2xx
/// answers given; and deliveries per path (which dispatcher sent it).
#[derive(Default)]
struct Tally {
    in_flight: HashMap<String, usize>,
    most_at_once: HashMap<String, usize>,
    accepted: HashMap<String, usize>,
    attempts: HashMap<String, usize>,
    by_path: HashMap<String, usize>,
}

/// A receiver that holds each delivery for `hold`, refuses (503) the first
/// attempt of every event so both dispatchers compete for the retries, and
/// answers 204 afterwards.
async fn start_receiver(tally: Arc<Mutex<Tally>>, hold: Duration) -> String {
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode as S};
    let app = axum::Router::new().route(
        "/hook/{who}",
        axum::routing::post(move |Path(who): Path<String>, headers: HeaderMap| {
            let tally = tally.clone();
            async move {
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                let first = {
                    let mut t = tally.lock().unwrap();
                    *t.by_path.entry(who).or_default() += 1;
                    let now = {
                        let n = t.in_flight.entry(id.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let most = t.most_at_once.entry(id.clone()).or_default();
                    *most = (*most).max(now);
                    let attempts = t.attempts.entry(id.clone()).or_default();
                    *attempts += 1;
                    *attempts == 1
                };
                tokio::time::sleep(hold).await;
                let mut t = tally.lock().unwrap();
                *t.in_flight.get_mut(&id).unwrap() -= 1;
                if first {
                    return S::SERVICE_UNAVAILABLE;
                }
                *t.accepted.entry(id).or_default() += 1;
                S::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn two_dispatchers_on_one_database_deliver_each_event_once_one_attempt_at_a_time(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let receiver = start_receiver(tally.clone(), Duration::from_millis(150)).await;
    let config = |who: &str| {
        let mut c = test_config(&db);
        c.webhook_url = Some(format!("{receiver}/hook/{who}"));
        c.webhook_secret = Some(SecretString::from("whsec-test"));
        c
    };
    let first = TestApp::spawn_with(config("a")).await;
    let mut second_config = config("b");
    second_config.master_keys = first.config.master_keys.clone();
    let second = TestApp::spawn_with_clock(second_config, Clock::manual()).await;

    for n in 0..20 {
        let app = if n % 2 == 0 { &first } else { &second };
        let org = if n % 2 == 0 { &first.org } else { &second.org };
        let (status, body) = app
            .call(
                Method::POST,
                "/integrations/credentials",
                &org.admin,
                Some(pg_body(&format!("db{n}"), "pw")),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let mut delivered = 0;
    for _ in 0..300 {
        delivered = tally.lock().unwrap().accepted.len();
        if delivered >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // room for a duplicate to show

    let t = tally.lock().unwrap();
    assert_eq!(delivered, 20, "every event delivered: {:?}", t.accepted);
    assert!(
        t.most_at_once.values().all(|n| *n == 1),
        "one attempt at a time per event: {:?}",
        t.most_at_once
    );
    assert!(
        t.accepted.values().all(|n| *n == 1),
        "none accepted twice: {:?}",
        t.accepted
    );
    assert!(
        t.by_path.get("a").is_some_and(|n| *n > 0) && t.by_path.get("b").is_some_and(|n| *n > 0),
        "both dispatchers delivered: {:?}",
        t.by_path
    );
}
crate::both_backends!(two_dispatchers_on_one_database_deliver_each_event_once_one_attempt_at_a_time);

async fn a_malformed_stored_notification_is_an_error_and_never_a_null_payload(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    app.create_pg(&app.org, "a", "pw").await;
    app.create_pg(&app.org, "b", "pw").await;
    let sql = app.sql().await;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM outbox ORDER BY id")
        .fetch_all(&sql)
        .await
        .unwrap();
    sqlx::query("UPDATE outbox SET payload = 'SENTINEL-not-json' WHERE id = $1")
        .bind(ids[0])
        .execute(&sql)
        .await
        .unwrap();
    let hook = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .respond_with(wiremock::ResponseTemplate::new(204))
        .mount(&hook)
        .await;
    let dispatcher =
        credgate::webhooks::Webhooks::new(Some(hook.uri()), SecretString::from("s"), reqwest::Client::new());

    let (status, problem) = app
        .call(Method::GET, "/integrations/events", &app.org.admin, None)
        .await;
    let attempted = dispatcher.deliver_due(&app.state.store).await.unwrap();
    let again = dispatcher.deliver_due(&app.state.store).await.unwrap();
    let (failed_at, last_error): (Option<i64>, Option<String>) =
        sqlx::query_as("SELECT failed_at, last_error FROM outbox WHERE id = $1")
            .bind(ids[0])
            .fetch_one(&sql)
            .await
            .unwrap();
    let received = hook.received_requests().await.unwrap();
    let logs = crate::helpers::captured_logs();

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{problem}");
    assert!(!problem.to_string().contains("SENTINEL"), "{problem}");
    assert!(
        logs.contains("a stored outbox column is malformed"),
        "logged as an error"
    );
    assert_eq!(attempted, 1, "the sound event is delivered");
    assert_eq!(received.len(), 1);
    let body: serde_json::Value = serde_json::from_slice(&received[0].body).unwrap();
    assert_eq!(body["type"], "credential.created");
    assert!(
        failed_at.is_some(),
        "the malformed one is given up, not claimed for ever"
    );
    assert!(last_error.unwrap().contains("malformed"));
    assert_eq!(again, 0, "nothing is claimed again");
}
crate::both_backends!(a_malformed_stored_notification_is_an_error_and_never_a_null_payload);
