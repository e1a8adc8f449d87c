//! The Telegram probe against a wiremock stand-in of the Bot API.

use std::time::Duration;

use credgate::probes::telegram::{probe, TelegramRequest};
use credgate::probes::{ApiBaseUrls, ProbeContext, ProbeResult};
use serde_json::json;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{assert_no_secret, code, ctx_with, loopback_policy, ORG};

const SECRET_PART: &str = "AAH-SENTINEL_telegram_secret_0123456789";

fn token() -> String {
    format!("123456789:{SECRET_PART}")
}

fn ctx_for(server: &MockServer) -> ProbeContext {
    let base_urls = ApiBaseUrls {
        telegram: server.uri(),
        ..ApiBaseUrls::default()
    };
    ctx_with(loopback_policy(), Duration::from_secs(2), base_urls)
}

async fn run(server: &MockServer) -> ProbeResult {
    let req: TelegramRequest = serde_json::from_value(json!({ "bot_token": token() })).unwrap();
    let result = probe(&ctx_for(server), &ORG, &req).await;
    assert_no_secret(&result, &[SECRET_PART]);
    result
}

async fn answer(status: u16, body: serde_json::Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn get_me_reports_the_bot_id_and_username() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/bot{}/getMe", token())))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({ "ok": true, "result": {
            "id": 123456789, "is_bot": true, "first_name": "Credgate Test", "username": "credgate_test_bot",
        }})))
        .expect(1)
        .mount(&server)
        .await;

    let result = run(&server).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["bot_id"], json!(123456789));
    assert_eq!(result.detail["username"], json!("credgate_test_bot"));
}

#[tokio::test]
async fn unauthorized_is_auth_failed() {
    let server = answer(
        401,
        json!({ "ok": false, "error_code": 401, "description": "Unauthorized" }),
    )
    .await;

    let result = run(&server).await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
    assert!(result.error.unwrap().message.contains("Unauthorized"));
}

#[tokio::test]
async fn a_token_telegram_does_not_know_is_auth_failed() {
    let server = answer(
        404,
        json!({ "ok": false, "error_code": 404, "description": "Not Found" }),
    )
    .await;

    assert_eq!(code(&run(&server).await), "auth_failed");
}

#[tokio::test]
async fn an_ok_false_body_with_status_200_is_still_a_failure() {
    let server = answer(
        200,
        json!({ "ok": false, "error_code": 401, "description": "Unauthorized" }),
    )
    .await;

    assert_eq!(code(&run(&server).await), "auth_failed");
}

#[tokio::test]
async fn too_many_requests_is_rate_limited_with_retry_after() {
    let server = answer(
        429,
        json!({
            "ok": false, "error_code": 429, "description": "Too Many Requests: retry after 7",
            "parameters": { "retry_after": 7 },
        }),
    )
    .await;

    let result = run(&server).await;

    assert_eq!(code(&result), "rate_limited", "{result:?}");
    assert_eq!(result.detail["retry_after"], json!(7));
}

#[tokio::test]
async fn a_base_url_that_is_not_the_bot_api_is_protocol() {
    let server = answer(200, json!({ "hello": "world" })).await;

    assert_eq!(code(&run(&server).await), "protocol");
}

#[tokio::test]
async fn network_errors_never_carry_the_token_in_their_url() {
    let base = format!("http://127.0.0.1:{}", crate::ports::unused_port());
    let ctx = ctx_with(
        loopback_policy(),
        Duration::from_secs(2),
        ApiBaseUrls {
            telegram: base,
            ..ApiBaseUrls::default()
        },
    );
    let req: TelegramRequest = serde_json::from_value(json!({ "bot_token": token() })).unwrap();

    let result = probe(&ctx, &ORG, &req).await;

    assert_eq!(code(&result), "connect_refused", "{result:?}");
    assert_no_secret(&result, &[SECRET_PART]);
}
