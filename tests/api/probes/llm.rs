//! The LLM probe against wiremock stand-ins for OpenAI, Anthropic and an
//! OpenAI-compatible server, answering with the providers' documented
//! bodies.

use std::time::Duration;

use credgate::probes::llm::{probe, LlmRequest};
use credgate::probes::{ApiBaseUrls, ProbeContext, ProbeResult};
use serde_json::json;
use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{assert_no_secret, code, ctx_with, loopback_policy, ORG};

const KEY: &str = "sk-SENTINEL-openai-key-0123456789abcdef";

fn request(provider_type: &str, base_url: Option<String>) -> LlmRequest {
    serde_json::from_value(json!({
        "provider_type": provider_type, "api_key": KEY, "base_url": base_url,
    }))
    .unwrap()
}

/// A context whose OpenAI and Anthropic bases are the stand-in.
fn ctx_for(server: &MockServer) -> ProbeContext {
    let base_urls = ApiBaseUrls {
        openai: server.uri(),
        anthropic: server.uri(),
        ..ApiBaseUrls::default()
    };
    ctx_with(loopback_policy(), Duration::from_secs(2), base_urls)
}

fn models(n: usize) -> serde_json::Value {
    let data: Vec<_> = (0..n)
        .map(|i| json!({ "id": format!("model-{i}"), "object": "model" }))
        .collect();
    json!({ "object": "list", "data": data })
}

async fn answer(status: u16, body: serde_json::Value) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(status).set_body_json(body))
        .mount(&server)
        .await;
    server
}

async fn run(server: &MockServer, provider_type: &str) -> ProbeResult {
    let result = probe(&ctx_for(server), &ORG, &request(provider_type, None)).await;
    assert_no_secret(&result, &[KEY]);
    result
}

#[tokio::test]
async fn openai_lists_models_with_bearer_and_organization_headers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("authorization", format!("Bearer {KEY}").as_str()))
        .and(header("openai-organization", "org-123"))
        .respond_with(ResponseTemplate::new(200).set_body_json(models(7)))
        .expect(1)
        .mount(&server)
        .await;
    let mut req = request("openai", None);
    req.organization_id = Some("org-123".into());

    let result = probe(&ctx_for(&server), &ORG, &req).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["model_count"], json!(7));
    assert_eq!(result.detail["models"].as_array().unwrap().len(), 5);
    assert_eq!(result.detail["models"][0], json!("model-0"));
    assert_no_secret(&result, &[KEY]);
}

#[tokio::test]
async fn anthropic_lists_models_with_its_key_and_version_headers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("x-api-key", KEY))
        .and(header("anthropic-version", "2023-06-01"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "data": [{ "type": "model", "id": "claude-sonnet-4-5", "display_name": "Claude Sonnet 4.5" }],
            "has_more": false, "first_id": "claude-sonnet-4-5", "last_id": "claude-sonnet-4-5",
        })))
        .expect(1)
        .mount(&server)
        .await;

    let result = run(&server, "anthropic").await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["models"], json!(["claude-sonnet-4-5"]));
    assert_eq!(result.detail["has_more"], json!(false));
}

#[tokio::test]
async fn openai_compatible_calls_models_under_its_base_url() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/api/v1/models"))
        .and(header_exists("authorization"))
        .respond_with(ResponseTemplate::new(200).set_body_json(models(2)))
        .expect(1)
        .mount(&server)
        .await;
    let req = request("openai_compatible", Some(format!("{}/api/v1/", server.uri())));

    let result = probe(&ctx_for(&server), &ORG, &req).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["model_count"], json!(2));
}

#[tokio::test]
async fn openai_invalid_api_key_is_auth_failed_without_echoing_the_key() {
    let server = answer(401, json!({ "error": {
        "message": format!("Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys."),
        "type": "invalid_request_error", "param": null, "code": "invalid_api_key",
    }}))
    .await;

    let result = run(&server, "openai").await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
    assert!(result.error.unwrap().message.contains("invalid_api_key"));
}

#[tokio::test]
async fn anthropic_authentication_error_is_auth_failed() {
    let server = answer(
        401,
        json!({ "type": "error", "error": {
            "type": "authentication_error", "message": "invalid x-api-key",
        }}),
    )
    .await;

    let result = run(&server, "anthropic").await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
    assert!(result.error.unwrap().message.contains("authentication_error"));
}

#[tokio::test]
async fn a_forbidden_key_is_auth_failed() {
    let server = answer(403, json!({ "error": { "message": "no access", "type": "invalid_request_error", "code": "unsupported_country_region_territory" }})).await;

    assert_eq!(code(&run(&server, "openai").await), "auth_failed");
}

#[tokio::test]
async fn a_wrong_base_url_answering_404_is_protocol() {
    let server = answer(404, json!({ "detail": "Not Found" })).await;

    let result = run(&server, "openai").await;

    assert_eq!(code(&result), "protocol", "{result:?}");
    assert!(result.error.unwrap().message.contains("base URL"));
}

#[tokio::test]
async fn http_429_is_rate_limited_with_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "20")
                .set_body_json(
                    json!({ "type": "error", "error": { "type": "rate_limit_error", "message": "slow down" }}),
                ),
        )
        .mount(&server)
        .await;

    let result = run(&server, "anthropic").await;

    assert_eq!(code(&result), "rate_limited", "{result:?}");
    assert_eq!(result.detail["retry_after"], json!("20"));
}

#[tokio::test]
async fn an_overloaded_provider_is_provider_error() {
    let server = answer(
        529,
        json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" }}),
    )
    .await;

    assert_eq!(code(&run(&server, "anthropic").await), "provider_error");
}

#[tokio::test]
async fn a_success_that_is_not_a_model_list_is_protocol() {
    let server = answer(200, json!({ "hello": "world" })).await;

    assert_eq!(code(&run(&server, "openai").await), "protocol");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(302).insert_header("location", "http://169.254.169.254/"))
        .expect(1)
        .mount(&server)
        .await;

    let result = run(&server, "openai").await;

    assert_eq!(code(&result), "protocol", "{result:?}");
    assert!(result.error.unwrap().message.contains("302"));
}

#[tokio::test]
async fn a_slow_first_response_is_a_timeout() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(models(1))
                .set_delay(Duration::from_secs(4)),
        )
        .mount(&server)
        .await;

    let result = run(&server, "openai").await;

    assert_eq!(code(&result), "timeout", "{result:?}");
}

#[tokio::test]
async fn https_to_a_plain_http_server_is_tls() {
    let server = answer(200, models(1)).await;
    let base = server.uri().replace("http://", "https://");

    let result = probe(&ctx_for(&server), &ORG, &request("openai", Some(base))).await;

    assert_eq!(code(&result), "tls", "{result:?}");
}

#[tokio::test]
async fn a_connection_closed_without_an_answer_is_network() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let server = MockServer::start().await;

    let result = probe(&ctx_for(&server), &ORG, &request("openai", Some(base))).await;

    assert_eq!(code(&result), "network", "{result:?}");
}

#[tokio::test]
async fn a_closed_port_is_connect_refused() {
    let base = format!("http://127.0.0.1:{}", crate::ports::unused_port());
    let server = MockServer::start().await;

    let result = probe(&ctx_for(&server), &ORG, &request("openai_compatible", Some(base))).await;

    assert_eq!(code(&result), "connect_refused", "{result:?}");
}

#[tokio::test]
async fn an_unknown_host_is_dns() {
    let server = MockServer::start().await;
    let req = request("openai_compatible", Some("https://llm.no-such-host.invalid/v1".into()));

    assert_eq!(code(&probe(&ctx_for(&server), &ORG, &req).await), "dns");
}

#[tokio::test]
async fn a_base_url_on_a_private_address_is_egress_denied_before_any_request() {
    let server = answer(200, models(1)).await;
    let deny = ctx_with(Default::default(), Duration::from_secs(2), ApiBaseUrls::default());
    for base in [server.uri(), format!("http://localhost:{}", server.address().port())] {
        let result = probe(&deny, &ORG, &request("openai_compatible", Some(base))).await;

        assert_eq!(code(&result), "egress_denied", "{result:?}");
    }
    assert!(server.received_requests().await.unwrap().is_empty());
}
