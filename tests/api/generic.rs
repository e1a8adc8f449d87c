//! The generic credentials: `custom` (key-value, secret unless public) and
//! `http` (a base URL and one auth scheme, tested with that scheme through
//! the egress guard).

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wiremock::matchers::{basic_auth, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{captured_logs, sentinel, test_config, TestApp, TestDb};

async fn create(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, "/integrations/credentials", &app.org.member, Some(body))
        .await
}

async fn a_custom_credential_keeps_any_fields_secret_unless_listed_public(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let secret = sentinel();
    let many: serde_json::Map<String, Value> = (0..65).map(|i| (format!("K{i}"), json!("v"))).collect();

    let (status, created) = create(
        &app,
        json!({"name": "Legacy ERP", "provider": "custom", "auth_type": "api_key",
            "fields": {"API_KEY": secret, "region": "eu-west-1", "tenant.id": "42"}, "public": ["region"]}),
    )
    .await;
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    let (_, shown) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.member,
            None,
        )
        .await;
    let (_, resolved) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/resolve"),
            &app.org.engine,
            None,
        )
        .await;
    let (bad_name, bad_name_problem) = create(
        &app,
        json!({"name": "x", "provider": "custom", "auth_type": "api_key",
            "fields": {"9lives": "v", "ok": 1}}),
    )
    .await;
    let (bad_public, bad_public_problem) = create(
        &app,
        json!({"name": "x", "provider": "custom", "auth_type": "api_key",
            "fields": {"A": "v"}, "public": ["B"]}),
    )
    .await;
    let (too_many, too_many_problem) = create(
        &app,
        json!({"name": "x", "provider": "custom", "auth_type": "api_key",
            "fields": many}),
    )
    .await;
    let (not_custom, not_custom_problem) = create(
        &app,
        json!({"name": "x", "provider": "telegram", "auth_type": "api_key",
            "fields": {"bot_token": "123456:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}, "public": ["bot_token"]}),
    )
    .await;
    let (patched, after) = app
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &app.org.member,
            Some(json!({"fields": {"API_KEY": secret, "region": "us-east-1"}, "public": ["region"]})),
        )
        .await;

    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(shown["fields"], json!({"region": "eu-west-1"}));
    let mut secret_fields: Vec<&str> = shown["secret_fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    secret_fields.sort();
    assert_eq!(secret_fields, ["API_KEY", "tenant.id"]);
    assert!(!shown.to_string().contains(&secret) && !created.to_string().contains(&secret));
    assert_eq!(resolved["fields"]["API_KEY"], json!(secret));
    assert_eq!(resolved["fields"]["tenant.id"], "42");
    assert_eq!(bad_name, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = bad_name_problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["fields.9lives", "fields.ok"]);
    assert_eq!(bad_public, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_public_problem["errors"][0]["field"], "public[0]");
    assert_eq!(too_many, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(too_many_problem["errors"][0]["field"], "fields");
    assert_eq!(not_custom, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(not_custom_problem["errors"][0]["field"], "public");
    assert_eq!(patched, StatusCode::OK, "{after}");
    assert_eq!(after["fields"], json!({"region": "us-east-1"}));
    assert!(!captured_logs().contains(&secret));
}
crate::both_backends!(a_custom_credential_keeps_any_fields_secret_unless_listed_public);

/// An app whose probes may reach loopback.
async fn open_app(db: &TestDb) -> TestApp {
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    TestApp::spawn_with(config).await
}

async fn test_http(app: &TestApp, fields: Value) -> Value {
    let (status, created) = create(
        app,
        json!({"name": "API", "provider": "http", "auth_type": "api_key", "fields": fields}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let (_, result) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.member,
            None,
        )
        .await;
    result
}

async fn an_http_credential_is_tested_with_its_own_scheme(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = open_app(&db).await;
    let api = MockServer::start().await;
    let secret = sentinel();
    Mock::given(method("GET"))
        .and(path("/v1/me"))
        .and(header("authorization", format!("Bearer {secret}").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "u1"})))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/basic"))
        .and(basic_auth("svc", secret.as_str()))
        .respond_with(ResponseTemplate::new(204))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/query"))
        .and(query_param("api_key", secret.as_str()))
        .respond_with(ResponseTemplate::new(200))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .and(path("/header"))
        .and(header("x-api-key", secret.as_str()))
        .respond_with(ResponseTemplate::new(200))
        .mount(&api)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(401).set_body_json(json!({"error": "unauthorized"})))
        .mount(&api)
        .await;
    let base = format!("{}/", api.uri());

    let bearer = test_http(
        &app,
        json!({"base_url": base, "scheme": "bearer", "token": secret, "test_path": "/v1/me"}),
    )
    .await;
    let basic = test_http(
        &app,
        json!({"base_url": base, "scheme": "basic", "username": "svc", "password": secret, "test_path": "/basic"}),
    )
    .await;
    let query = test_http(&app, json!({"base_url": base, "scheme": "query", "param_name": "api_key", "param_value": secret, "test_path": "/query"})).await;
    let header_scheme = test_http(&app, json!({"base_url": base, "scheme": "header", "header_name": "X-Api-Key", "header_value": secret, "test_path": "/header"})).await;
    let wrong = test_http(
        &app,
        json!({"base_url": base, "scheme": "bearer", "token": "nope", "test_path": "/v1/me"}),
    )
    .await;
    let (missing, missing_problem) = create(
        &app,
        json!({"name": "x", "provider": "http", "auth_type": "api_key",
            "fields": {"base_url": base, "scheme": "basic", "username": "svc"}}),
    )
    .await;
    let (mixed, mixed_problem) = create(
        &app,
        json!({"name": "x", "provider": "http", "auth_type": "api_key",
            "fields": {"base_url": base, "scheme": "bearer", "token": "t", "param_value": "v"}}),
    )
    .await;
    let closed = TestApp::spawn_with({
        let mut c = app.config.clone();
        c.egress_allow = String::new();
        c
    })
    .await;
    let denied = test_http(&closed, json!({"base_url": base, "scheme": "bearer", "token": secret})).await;

    for ok in [&bearer, &basic, &query, &header_scheme] {
        assert_eq!(ok["ok"], true, "{ok}");
    }
    assert_eq!(wrong["error"]["code"], "auth_failed", "{wrong}");
    assert_eq!(missing, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing_problem["errors"][0]["field"], "fields.password");
    assert_eq!(mixed, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(mixed_problem["errors"][0]["field"], "fields.param_value");
    assert_eq!(denied["error"]["code"], "egress_denied", "{denied}");
    for result in [&bearer, &basic, &query, &header_scheme, &wrong, &denied] {
        assert!(!result.to_string().contains(&secret));
    }
    assert!(!captured_logs().contains(&secret));
}
crate::both_backends!(an_http_credential_is_tested_with_its_own_scheme);
