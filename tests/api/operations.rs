//! Health, readiness, metrics, OpenAPI, and bad requests that must be 4xx.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{TestApp, TestDb};

async fn health_readiness_metrics_and_openapi_answer(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    app.call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;

    let get = |p: &str| app.client.get(format!("{}{p}", app.base)).send();
    let health = get("/healthz").await.unwrap();
    let ready = get("/readyz").await.unwrap();
    let metrics = get("/metrics").await.unwrap().text().await.unwrap();
    let openapi: serde_json::Value = get("/openapi.json").await.unwrap().json().await.unwrap();

    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(
        metrics
            .contains(r#"credgate_http_requests_total{method="GET",route="/integrations/credentials",status="200"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("credgate_http_request_duration_seconds_bucket"));
    assert!(openapi["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/integrations/credentials",
        "/integrations/credentials/{id}/resolve",
        "/integrations/providers",
    ] {
        assert!(
            openapi["paths"].get(path).is_some(),
            "{path} missing from the OpenAPI document"
        );
    }
}
both_backends!(health_readiness_metrics_and_openapi_answer);

async fn readiness_fails_when_the_store_is_gone(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    app.state.store.close().await;
    let ready = app.client.get(format!("{}/readyz", app.base)).send().await.unwrap();

    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
}
both_backends!(readiness_fails_when_the_store_is_gone);

async fn oversized_malformed_and_mistyped_bodies_get_clear_4xx(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let url = format!("{}/integrations/credentials", app.base);
    let post = |body: Vec<u8>, ctype: &'static str| {
        app.client
            .post(&url)
            .bearer_auth(&app.org.admin)
            .header("content-type", ctype)
            .body(body)
            .send()
    };

    let mut huge = br#"{"name": ""#.to_vec();
    huge.extend(std::iter::repeat_n(b'a', 1024 * 1024 + 10));
    huge.extend(br#"", "provider": "sftp", "auth_type": "user_password"}"#);
    let too_large = post(huge, "application/json").await.unwrap();
    let malformed = post(b"{\"name\": ".to_vec(), "application/json").await.unwrap();
    let not_json = post(b"name=x".to_vec(), "application/x-www-form-urlencoded")
        .await
        .unwrap();
    let wrong_type = post(
        br#"{"name": 5, "provider": "sftp", "auth_type": "user_password"}"#.to_vec(),
        "application/json",
    )
    .await
    .unwrap();
    let array = post(b"[1,2]".to_vec(), "application/json").await.unwrap();
    let unknown_route = app
        .client
        .get(format!("{}/integrations/nothing/here", app.base))
        .send()
        .await
        .unwrap();
    let wrong_method = app.client.put(&url).bearer_auth(&app.org.admin).send().await.unwrap();
    let bad_id = app
        .call(
            Method::GET,
            "/integrations/credentials/not-a-uuid",
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(too_large.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: serde_json::Value = too_large.json().await.unwrap();
    assert_eq!(body["code"], json!("payload_too_large"));
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(not_json.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(wrong_type.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: serde_json::Value = wrong_type.json().await.unwrap();
    assert_eq!(body["errors"][0]["field"], json!("name"));
    assert_eq!(array.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown_route.status(), StatusCode::NOT_FOUND);
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(bad_id.0, StatusCode::NOT_FOUND);
}
both_backends!(oversized_malformed_and_mistyped_bodies_get_clear_4xx);
