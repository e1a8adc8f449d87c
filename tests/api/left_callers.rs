//! Callers that leave while credgate waits for a provider: a refresh or a
//! code exchange goes on without them, to the end, so that no token the
//! provider issued (a rotated refresh token, a used code's grant) is lost;
//! a stopping server waits for it.

use std::sync::Arc;
use std::time::Duration;

use secrecy::ExposeSecret;

use reqwest::{Method, StatusCode};

use crate::both_backends;
use crate::helpers::{TestApp, TestDb};
use crate::oauth::{authorize, callback, connect, consent, oauth_app, RETURN_TO};
use crate::oauth_server::{Answer, AuthServer, Flavor, Gate};
use crate::refresh::resolve;

/// `POST …/refresh` at `base` in the background.
fn spawn_refresh(app: &TestApp, base: &str, id: &str) -> tokio::task::JoinHandle<()> {
    let url = format!("{base}/integrations/credentials/{id}/refresh");
    let (client, key) = (app.client.clone(), app.org.admin.clone());
    tokio::spawn(async move {
        let _ = client.post(url).bearer_auth(key).send().await;
    })
}

/// A refresh now; whether it was answered 200, and the stand-in's count of
/// refresh tokens sent again after their rotation.
async fn refresh_now(app: &TestApp, ms: &AuthServer, id: &str) -> (StatusCode, serde_json::Value, usize) {
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/refresh"),
            &app.org.admin,
            None,
        )
        .await;
    (status, body, ms.with(|i| i.reuse_detected))
}

/// The caller of a refresh hangs up after the provider rotated the refresh
/// token, while its answer is on its way: the refresh goes on without the
/// caller, and the rotated token is kept. Before, the request's end
/// cancelled the refresh, the new refresh token was lost, and the next
/// refresh sent the old one: reuse, the grant revoked (RFC 9700 §4.14).
async fn a_caller_that_hangs_up_during_a_refresh_loses_no_rotated_token(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    let held = Arc::new(Gate::default());
    ms.with(|i| i.answer_gate = Some(held.clone()));

    let refresh = spawn_refresh(&app, &app.base, &id);
    held.arrivals(1).await;
    refresh.abort();
    let _ = refresh.await;
    // Time for credgate to see its caller gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ms.with(|i| i.answer_gate = None);
    held.release(1, Answer::Normal);
    let (again, body, reused) = refresh_now(&app, &ms, &id).await;

    assert_eq!(again, StatusCode::OK, "{body}");
    assert_eq!(reused, 0, "the rotated refresh token was kept");
}
both_backends!(a_caller_that_hangs_up_during_a_refresh_loses_no_rotated_token);

/// The browser leaves credgate's OAuth callback while the provider's answer
/// to the code exchange is on its way (the code used, the tokens issued):
/// the connection is still stored. Before, the request's end cancelled the
/// exchange and the tokens the provider had issued were lost.
async fn a_browser_that_leaves_during_the_callback_loses_no_grant(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let return_to: String = url::form_urlencoded::byte_serialize(RETURN_TO.as_bytes()).collect();
    let url = authorize(&app, "sharepoint", &format!("name=Left&return_to={return_to}")).await;
    let back = consent(&app, &url).await;
    let held = Arc::new(Gate::default());
    ms.with(|i| i.answer_gate = Some(held.clone()));

    tokio::select! {
        _ = callback(&app, &back) => panic!("the callback was answered while the provider's answer was held"),
        _ = held.arrivals(1) => {}
    }
    // The browser has left (its request dropped with the select).
    tokio::time::sleep(Duration::from_millis(500)).await;
    ms.with(|i| i.answer_gate = None);
    held.release(1, Answer::Normal);
    let mut listed = serde_json::Value::Null;
    for _ in 0..50 {
        listed = app
            .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
            .await
            .1;
        if listed["items"].as_array().is_some_and(|items| !items.is_empty()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let id = listed["items"][0]["id"].as_str().unwrap_or_default().to_owned();
    let (resolved, body) = resolve(&app, &id).await;

    assert_eq!(listed["items"][0]["name"], "Left", "{listed}");
    assert_eq!(listed["items"][0]["status"], "active", "{listed}");
    assert_eq!(resolved, StatusCode::OK, "{body}");
    assert!(ms.access_valid(body["access_token"].as_str().unwrap_or_default()));
}
both_backends!(a_browser_that_leaves_during_the_callback_loses_no_grant);

/// A server told to stop while a refresh whose caller left waits for the
/// provider's answer finishes that refresh before it ends.
async fn a_stopping_server_finishes_a_refresh_whose_caller_left(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    let keys = app.config.master_keys.clone().unwrap();
    let overrides = ms.overrides("sharepoint");
    let env: Vec<(&str, &str)> = overrides.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (child, addr) = crate::operator::serve(&db, keys.expose_secret(), &["--no-worker"], &env);
    let held = Arc::new(Gate::default());
    ms.with(|i| i.answer_gate = Some(held.clone()));

    let refresh = spawn_refresh(&app, &format!("http://{addr}"), &id);
    held.arrivals(1).await;
    refresh.abort();
    let _ = refresh.await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = tokio::task::spawn_blocking(move || crate::operator::stop(child));
    // The server has its stop signal, and no request left.
    tokio::time::sleep(Duration::from_millis(700)).await;
    ms.with(|i| i.answer_gate = None);
    held.release(1, Answer::Normal);
    let logs = stopping.await.unwrap();
    let (again, body, reused) = refresh_now(&app, &ms, &id).await;

    assert_eq!(again, StatusCode::OK, "{body}\n{logs}");
    assert_eq!(reused, 0, "the rotated refresh token was kept: {logs}");
}
both_backends!(a_stopping_server_finishes_a_refresh_whose_caller_left);
