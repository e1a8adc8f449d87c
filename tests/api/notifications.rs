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
    let (_, after, _) = app
        .state
        .store
        .refresh_state(&app.org.id, &oauth_id)
        .await
        .unwrap()
        .unwrap();
    app.clock.advance(after.unwrap() - app.clock.now() + 1);
    try_refresh_due(&app.state, 10).await.unwrap();
    ms.with(|i| i.token_status = None);
    // Time passes: the refresh comes due (the first time), the backoff ends (the second).
    let (_, after, _) = app
        .state
        .store
        .refresh_state(&app.org.id, &oauth_id)
        .await
        .unwrap()
        .unwrap();
    app.clock.advance(after.unwrap() - app.clock.now() + 1);
    try_refresh_due(&app.state, 10).await.unwrap();
    let all = events(&hook, 6).await;

    assert_eq!(first.len(), 2, "the first delivery failed and was retried");
    assert_eq!(first[0].body, first[1].body);
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
