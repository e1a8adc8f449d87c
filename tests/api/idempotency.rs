//! `Idempotency-Key` on creates: a retry with the same key and body answers
//! the first create and makes nothing more (even when the first answer was
//! lost in a commit whose answer never came back); another body, or another
//! caller, with the same key is 422; keys are kept 24 hours.

use credgate::model::Role;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{pg_body, TestApp, TestDb};
use crate::sharing::key;

/// `POST /integrations/credentials` with `Idempotency-Key: idem`:
/// status, whether it was a replay, body.
pub async fn create_with_key(app: &TestApp, api_key: &str, idem: &str, body: &Value) -> (StatusCode, bool, Value) {
    let res = app
        .client
        .post(format!("{}/integrations/credentials", app.base))
        .bearer_auth(api_key)
        .header("idempotency-key", idem)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let replayed = res.headers().get("idempotent-replayed").is_some_and(|v| v == "true");
    (status, replayed, res.json().await.unwrap())
}

async fn total(app: &TestApp) -> i64 {
    let (_, list) = app.as_(&app.org.admin).get("/integrations/credentials").await;
    list["total"].as_i64().unwrap()
}

async fn a_retry_with_the_same_key_and_body_answers_the_first_create(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    app.state
        .store
        .set_org_limit(&app.org.id, "postgresql", 1)
        .await
        .unwrap();
    let body = pg_body("warehouse", "pw-1");
    let reordered = json!({"fields": body["fields"], "auth_type": body["auth_type"], "provider": body["provider"], "name": body["name"]});

    let (first, first_replayed, created) = create_with_key(&app, &app.org.admin, "order-42", &body).await;
    let (again, replayed, answered) = create_with_key(&app, &app.org.admin, "order-42", &reordered).await;
    let (other_body, _, refused) =
        create_with_key(&app, &app.org.admin, "order-42", &pg_body("warehouse", "pw-2")).await;
    let member = key(&app, Role::Admin, Some("someone-else")).await;
    let (other_caller, _, _) = create_with_key(&app, &member, "order-42", &body).await;
    let (bad_key, _, bad) = create_with_key(&app, &app.org.admin, &"k".repeat(256), &body).await;

    assert_eq!(first, StatusCode::CREATED, "{created}");
    assert!(!first_replayed);
    assert_eq!(again, StatusCode::CREATED, "{answered}");
    assert!(replayed, "the answer says it is the first create's");
    assert_eq!(answered["id"], created["id"]);
    assert_eq!(answered["name"], "warehouse");
    assert!(!answered.to_string().contains("pw-1"));
    assert_eq!(
        total(&app).await,
        1,
        "nothing more was created, nor counted against the limit of 1"
    );
    assert_eq!(other_body, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["errors"][0]["field"], "Idempotency-Key");
    assert!(!refused.to_string().contains("pw-"));
    assert_eq!(
        other_caller,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a key is one caller's request"
    );
    assert_eq!(bad_key, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad["errors"][0]["field"], "Idempotency-Key");
}
both_backends!(a_retry_with_the_same_key_and_body_answers_the_first_create);

async fn requests_racing_with_one_key_create_one_credential(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let body = pg_body("raced", "pw");

    let answers =
        futures::future::join_all((0..8).map(|_| create_with_key(&app, &app.org.admin, "race-1", &body))).await;

    let ids: std::collections::HashSet<String> = answers
        .iter()
        .map(|(_, _, b)| b["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(answers.iter().all(|(s, _, _)| *s == StatusCode::CREATED), "{answers:?}");
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        answers.iter().filter(|(_, replayed, _)| !replayed).count(),
        1,
        "one made it, the others replay it"
    );
    assert_eq!(total(&app).await, 1);
}
both_backends!(requests_racing_with_one_key_create_one_credential);

async fn a_key_is_kept_for_24_hours(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let body = pg_body("daily", "pw");

    let (_, _, first) = create_with_key(&app, &app.org.admin, "daily", &body).await;
    // The test clock also follows real time: 10 s short of the day leaves
    // room for a slow machine (a second short of it failed under load).
    app.clock.advance(86_390);
    let (_, within, same) = create_with_key(&app, &app.org.admin, "daily", &body).await;
    app.clock.advance(12);
    let (after, later_replayed, later) = create_with_key(&app, &app.org.admin, "daily", &body).await;
    app.clock.advance(86_401);
    credgate::oauth::worker::housekeeping(&app.state).await.unwrap();
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_keys")
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    assert!(within);
    assert_eq!(same["id"], first["id"]);
    assert_eq!(after, StatusCode::CREATED);
    assert!(!later_replayed, "a day later the key names nothing");
    assert_ne!(later["id"], first["id"]);
    assert_eq!(kept, 0, "the worker's housekeeping deletes keys past their day");
    assert_eq!(total(&app).await, 2);
}
both_backends!(a_key_is_kept_for_24_hours);
