//! API keys, roles and organization isolation.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{pg_body, sentinel, TestApp, TestDb};

async fn unknown_or_missing_keys_get_401_and_wrong_roles_get_403(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let id = app.create_pg(&app.org, "a", &sentinel()).await;
    let resolve = format!("/integrations/credentials/{id}/resolve");

    let (unknown, problem) = app
        .oneshot(Method::GET, "/integrations/credentials", "cgk_not-a-real-key", None)
        .await;
    let missing = app
        .client
        .get(format!("{}/integrations/credentials", app.base))
        .send()
        .await
        .unwrap();
    let (member, forbidden) = app.oneshot(Method::POST, &resolve, &app.org.member, None).await;
    let (admin, _) = app.oneshot(Method::POST, &resolve, &app.org.admin, None).await;
    let (engine_create, _) = app
        .oneshot(
            Method::POST,
            "/integrations/credentials",
            &app.org.engine,
            Some(pg_body("x", "y")),
        )
        .await;
    let (_, events) = app
        .oneshot(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(unknown, StatusCode::UNAUTHORIZED);
    assert_eq!(problem["code"], json!("unauthorized"));
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    assert_eq!(member, StatusCode::FORBIDDEN);
    assert_eq!(forbidden["code"], json!("forbidden"));
    assert_eq!(admin, StatusCode::FORBIDDEN, "resolve is for the engine role only");
    assert_eq!(engine_create, StatusCode::FORBIDDEN);
    let denied = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "access.denied")
        .count();
    assert_eq!(denied, 2, "denied accesses are audited: {events}");
}
both_backends!(unknown_or_missing_keys_get_401_and_wrong_roles_get_403);

async fn another_organization_gets_404_on_every_route(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let secret = sentinel();
    let id = app.create_pg(&app.org, "theirs", &secret).await;
    let other = app.new_org("Other").await;
    let path = format!("/integrations/credentials/{id}");

    let mut statuses = Vec::new();
    for (method, p, key, body) in [
        (Method::GET, path.clone(), &other.admin, None),
        (
            Method::PATCH,
            path.clone(),
            &other.admin,
            Some(json!({"name": "mine now"})),
        ),
        (Method::DELETE, path.clone(), &other.admin, None),
        (Method::POST, format!("{path}/resolve"), &other.engine, None),
        (Method::GET, format!("{path}/audit"), &other.admin, None),
    ] {
        let (status, body) = app.oneshot(method, &p, key, body).await;
        assert!(!body.to_string().contains(&secret));
        statuses.push(status);
    }
    let (_, batch) = app
        .oneshot(
            Method::POST,
            "/integrations/credentials/batch-delete",
            &other.admin,
            Some(json!({"ids": [id]})),
        )
        .await;
    let (_, listed) = app
        .oneshot(Method::GET, "/integrations/credentials", &other.admin, None)
        .await;
    let (still_there, original) = app.oneshot(Method::GET, &path, &app.org.admin, None).await;

    assert!(statuses.iter().all(|s| *s == StatusCode::NOT_FOUND), "{statuses:?}");
    assert_eq!(batch["deleted"], json!([]));
    assert_eq!(batch["not_found"], json!([id]));
    assert_eq!(listed["total"], json!(0));
    assert_eq!(still_there, StatusCode::OK);
    assert_eq!(original["name"], json!("theirs"));
}
both_backends!(another_organization_gets_404_on_every_route);
