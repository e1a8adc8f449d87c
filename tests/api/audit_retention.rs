//! `CREDGATE_AUDIT_RETENTION_DAYS`: every use and gateway call is an audit
//! event, so an operator bounds the log: the worker deletes events past
//! the retention, with the calls' outcomes, in short batches; unset, every
//! event stays.

use std::process::{Command, Stdio};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::gateway::{http_credential, settled_uses, upstream};
use crate::helpers::{test_config, TestApp, TestDb};

const DAY: i64 = 86_400;

async fn app_keeping(db: &TestDb, days: Option<u32>) -> TestApp {
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    config.audit_retention_days = days;
    TestApp::spawn_with(config).await
}

async fn call(app: &TestApp, id: &str, path: &str) {
    let status = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/{path}", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::CREATED);
}

async fn audit_of(app: &TestApp, id: &str) -> Vec<Value> {
    let (status, body) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body.as_array().unwrap_or_else(|| panic!("{body}")).clone()
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(&app.sql().await).await.unwrap()
}

async fn events_past_their_retention_go_with_their_outcomes_and_newer_ones_stay(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = app_keeping(&db, Some(30)).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    call(&app, &id, "old-1").await;
    call(&app, &id, "old-2").await;
    settled_uses(&app, &id, 2).await;
    app.clock.advance(20 * DAY);
    call(&app, &id, "recent").await;
    settled_uses(&app, &id, 3).await;
    let before = audit_of(&app, &id).await;
    let outcomes_before = count(&app, "SELECT COUNT(*) FROM use_outcomes").await;

    // 31 days after the first three events, 11 after the last call.
    app.clock.advance(11 * DAY);
    credgate::oauth::worker::housekeeping(&app.state).await.unwrap();
    let after = audit_of(&app, &id).await;
    let (_, usage) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/usage"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(before.len(), 4, "the creation and three calls: {before:?}");
    assert_eq!(outcomes_before, 3);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["action"], "credential.proxy");
    assert_eq!(after[0]["detail"]["path"], "/recent", "{after:?}");
    assert_eq!(
        after[0]["detail"]["status"], 201,
        "its outcome stays with it: {after:?}"
    );
    assert_eq!(count(&app, "SELECT COUNT(*) FROM use_outcomes").await, 1);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM audit_events").await, 1);
    assert_eq!(usage["uses_total"], 1, "{usage}");
}
both_backends!(events_past_their_retention_go_with_their_outcomes_and_newer_ones_stay);

async fn without_a_retention_every_audit_event_stays(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = app_keeping(&db, None).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    call(&app, &id, "items").await;
    settled_uses(&app, &id, 1).await;

    app.clock.advance(3650 * DAY);
    credgate::oauth::worker::housekeeping(&app.state).await.unwrap();

    assert_eq!(audit_of(&app, &id).await.len(), 2);
    assert_eq!(count(&app, "SELECT COUNT(*) FROM use_outcomes").await, 1);
}
both_backends!(without_a_retention_every_audit_event_stays);

/// A batch takes the oldest events only, never more than asked; an event a
/// moment out of order holds the older ones behind it back, not forward.
async fn a_purge_takes_the_oldest_events_in_batches(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = app_keeping(&db, None).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    for n in 0..4 {
        call(&app, &id, &format!("old-{n}")).await;
    }
    settled_uses(&app, &id, 4).await;
    app.clock.advance(2 * DAY);
    call(&app, &id, "new").await;
    settled_uses(&app, &id, 5).await;
    let cutoff = app.clock.now() - DAY;
    let store = &app.state.store;

    let batches = [
        store.purge_audit_events(cutoff, 2).await.unwrap(),
        store.purge_audit_events(cutoff, 2).await.unwrap(),
        store.purge_audit_events(cutoff, 2).await.unwrap(),
        store.purge_audit_events(cutoff, 2).await.unwrap(),
    ];
    let left = audit_of(&app, &id).await;

    // The creation and four calls are old; the fifth call is not.
    assert_eq!(batches, [2, 2, 1, 0]);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0]["detail"]["path"], "/new");
    assert_eq!(count(&app, "SELECT COUNT(*) FROM use_outcomes").await, 1);
}
both_backends!(a_purge_takes_the_oldest_events_in_batches);

#[tokio::test]
async fn a_retention_of_no_days_is_refused_naming_the_setting() {
    for value in ["0", "x", "36501"] {
        let out = Command::new(env!("CARGO_BIN_EXE_credgate"))
            .args(["keys", "generate"])
            .env("CREDGATE_AUDIT_RETENTION_DAYS", value)
            .stdout(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(out.status.code(), Some(2), "{value}: {err}");
        assert!(
            err.starts_with("credgate: ") && err.contains("audit-retention-days"),
            "{err:?}"
        );
    }
}
