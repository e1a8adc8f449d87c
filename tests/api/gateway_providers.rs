//! The built-in providers through the gateway: each service's key placed
//! where that service documents it, whether its test button is declared in
//! its file or built in, whether its key is an API key or a password.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::both_backends;
use crate::gateway::upstream;
use crate::helpers::{captured_logs, sentinel, test_config, TestApp, TestDb};

fn hex() -> String {
    Uuid::new_v4().simple().to_string()
}

/// OpenAI (`Authorization: Bearer`, and `OpenAI-Organization` when the
/// credential names one), Anthropic (`x-api-key` and `anthropic-version`),
/// an OpenAI-compatible server (its own base URL; a bearer key when it has
/// one, none when it has none, as Ollama wants), Telegram (the bot token in
/// the path: `/bot<token>/<method>`), Twilio (HTTP basic, the account SID
/// as the user) and Trello (its key and token, both in the query). None of them is 422 `not_proxyable`; no secret reaches a
/// log line, and the token in Telegram's path is kept out of the answer
/// like any secret placed.
async fn each_http_service_is_called_with_its_key_where_it_documents_it(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    for provider in ["openai", "anthropic", "telegram", "twilio", "trello"] {
        let key = format!("CREDGATE_PROVIDER_{}_API_BASE_URL", provider.to_uppercase());
        config.provider_overrides.insert(key, format!("{base}/v2"));
    }
    let app = TestApp::spawn_with(config).await;
    let (openai_key, anthropic_key, compatible_key) = (sentinel(), sentinel(), sentinel());
    let bot_token = format!("123456:{}", sentinel());
    let (sid, twilio_token) = (format!("AC{}", hex()), hex());
    let (trello_key, trello_token) = (hex(), hex());
    let credentials = [
        (
            "openai",
            "api_key",
            json!({"api_key": openai_key, "organization_id": "org-acme42"}),
        ),
        ("anthropic", "api_key", json!({"api_key": anthropic_key})),
        (
            "openai_compatible",
            "api_key",
            json!({"base_url": format!("{base}/v2/v1"), "api_key": compatible_key}),
        ),
        (
            "openai_compatible",
            "api_key",
            json!({"base_url": format!("{base}/v2/v1")}),
        ),
        ("telegram", "api_key", json!({"bot_token": bot_token})),
        (
            "twilio",
            "user_password",
            json!({"account_sid": sid, "auth_token": twilio_token}),
        ),
        (
            "trello",
            "api_key",
            json!({"api_key": trello_key, "token": trello_token}),
        ),
    ];
    let (mut answers, mut ids) = (Vec::new(), Vec::new());
    for (provider, auth_type, fields) in credentials {
        let body = json!({"name": provider, "provider": provider, "auth_type": auth_type, "fields": fields});
        let (status, created) = app
            .call(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{provider}: {created}");
        let id = created["id"].as_str().unwrap();
        let answer = app
            .client
            .get(format!(
                "{}/integrations/credentials/{id}/proxy/models?limit=1",
                app.base
            ))
            .bearer_auth(&app.org.engine)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        answers.push((provider, status, answer.text().await.unwrap()));
        ids.push(id.to_owned());
    }
    // The token placed in the path is kept out of the answer like any.
    let echoed = app
        .client
        .get(format!(
            "{}/integrations/credentials/{}/proxy/echo-path",
            app.base, ids[4]
        ))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let calls = seen.0.lock().unwrap().clone();
    let call = |n: usize| calls.get(n).cloned().unwrap_or(Value::Null);
    let header = |n: usize, name: &str| call(n)["headers"][name].as_str().map(str::to_owned);
    let basic = |user: &str, password: &str| {
        use base64::Engine;
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    };

    for (provider, status, body) in &answers {
        assert_eq!(*status, StatusCode::CREATED, "{provider}: {body}");
    }
    assert_eq!(calls.len(), 8);
    assert_eq!(
        echoed,
        format!("you called bot{}/echo-path", "*".repeat(bot_token.len()))
    );
    assert_eq!(header(0, "authorization"), Some(format!("Bearer {openai_key}")));
    assert_eq!(header(0, "openai-organization").as_deref(), Some("org-acme42"));
    assert_eq!(call(0)["path"], "models");
    assert_eq!(header(1, "x-api-key"), Some(anthropic_key.clone()));
    assert_eq!(header(1, "anthropic-version").as_deref(), Some("2023-06-01"));
    assert_eq!(header(1, "authorization"), None);
    assert_eq!(header(2, "authorization"), Some(format!("Bearer {compatible_key}")));
    assert_eq!(call(2)["path"], "v1/models");
    assert_eq!(header(3, "authorization"), None, "no key, no authorization");
    assert_eq!(call(3)["path"], "v1/models");
    assert_eq!(call(4)["path"], format!("bot{bot_token}/models"));
    assert_eq!(header(4, "authorization"), None);
    assert_eq!(header(5, "authorization"), Some(basic(&sid, &twilio_token)));
    for call in &calls[..6] {
        assert_eq!(call["query"], "limit=1", "{call}");
    }
    assert_eq!(
        call(6)["query"],
        format!("limit=1&key={trello_key}&token={trello_token}"),
        "Trello's key and token, both in the query"
    );
    let logs = captured_logs();
    for secret in [
        &openai_key,
        &anthropic_key,
        &compatible_key,
        &bot_token,
        &twilio_token,
        &trello_token,
    ] {
        assert!(!logs.contains(secret.as_str()), "a secret in the logs");
    }
}
both_backends!(each_http_service_is_called_with_its_key_where_it_documents_it);

/// Shopify: each shop is its own host (`{shop}.myshopify.com`), so the
/// gateway calls the host the credential names, its Admin API token in
/// `X-Shopify-Access-Token`. The shipped file is used as it is but for its
/// host: a stand-in cannot be `*.myshopify.com`, so a copy of the file lets
/// the shop be `localhost`, on the stand-in's port (plain HTTP). A shop
/// that is not a host name is refused when the credential is created.
async fn a_shopify_call_goes_to_the_credentials_own_shop(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let port = base.rsplit(':').next().unwrap().to_owned();
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/providers/shopify.toml")).unwrap();
    let (host, pattern) = (
        "\"https://{shop_domain}/admin/",
        "pattern = \"[a-z0-9][a-z0-9-]{0,60}\\\\.myshopify\\\\.com\"",
    );
    assert!(shipped.contains(host), "the shipped file calls the shop's own host");
    assert!(shipped.contains(pattern), "the shipped file takes myshopify.com shops");
    let copy = shipped
        .replace(host, &format!("\"http://{{shop_domain}}:{port}/v2/admin/"))
        .replace(
            pattern,
            "pattern = \"localhost|[a-z0-9][a-z0-9-]{0,60}\\\\.myshopify\\\\.com\"",
        );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("shopify.toml"), copy).unwrap();
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    config.providers_dir = Some(dir.path().to_owned());
    let app = TestApp::spawn_with(config).await;

    let token = format!("shpat_{}", hex());
    let create = |shop: &str| {
        let body = json!({"name": "Shop", "provider": "shopify", "auth_type": "api_key",
            "fields": {"shop_domain": shop, "access_token": token}});
        app.call(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
    };
    for hostile in [
        "evil.example@localhost",
        "localhost/x",
        "localhost:1",
        "acme.myshopify.com.evil.example",
    ] {
        let (status, problem) = create(hostile).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{hostile}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "fields.shop_domain", "{problem}");
    }
    let (status, created) = create("localhost").await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap();
    let answer = app
        .client
        .get(format!(
            "{}/integrations/credentials/{id}/proxy/shop.json?fields=id",
            app.base
        ))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body = answer.text().await.unwrap();
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::CREATED, "made"),
        "the stand-in's answer"
    );
    let calls = seen.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["path"], "admin/api/2024-10/shop.json");
    assert_eq!(calls[0]["query"], "fields=id");
    assert_eq!(calls[0]["headers"]["x-shopify-access-token"], token.as_str());
    assert_eq!(calls[0]["headers"]["authorization"], Value::Null);
    assert!(!captured_logs().contains(&token), "the token in the logs");
}
both_backends!(a_shopify_call_goes_to_the_credentials_own_shop);
