//! The hosted pages: sessions over plain HTTP, and the journeys a person
//! makes in a real headless Chromium.

mod browser;
mod journeys;
mod secrets_tab;
pub(crate) mod sessions;

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::{json, Value};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::{test_config, TestApp, TestDb};

/// The secret part of the good bot token: must never show anywhere.
pub const TOKEN_SECRET: &str = "SENTINELpageTOKEN_0123456789abcdefXYZ";

pub fn good_token() -> String {
    format!("987654321:{TOKEN_SECRET}")
}

/// A stand-in of the Telegram Bot API: `getMe` answers for the good token
/// as Telegram does, and 401 `Unauthorized` for any other.
pub async fn telegram() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/bot{}/getMe", good_token())))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"ok": true, "result": {
            "id": 987654321, "is_bot": true, "first_name": "Alerts", "username": "credgate_alerts_bot"}})))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(json!({"ok": false, "error_code": 401, "description": "Unauthorized"})),
        )
        .mount(&server)
        .await;
    server
}

/// An app whose Telegram is `telegram`, probes may reach loopback, and
/// `return_urls` may be returned to.
pub async fn page_app(
    db: &TestDb,
    telegram: &MockServer,
    return_urls: &[String],
    tweak: impl FnOnce(&mut credgate::config::Config),
) -> TestApp {
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    config
        .provider_overrides
        .insert("CREDGATE_PROVIDER_TELEGRAM_API_BASE_URL".into(), telegram.uri());
    config.allowed_return_urls = return_urls.to_vec();
    tweak(&mut config);
    TestApp::spawn_with(config).await
}

/// Opens a session with `key`; returns its URL.
pub async fn open_session(app: &TestApp, key: &str, body: Value) -> String {
    let (status, created) = app.call(Method::POST, "/integrations/sessions", key, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["url"].as_str().unwrap().to_owned()
}

/// Creates a Telegram credential with the good token as `key`; returns its id.
pub async fn create_bot(app: &TestApp, key: &str, name: &str) -> String {
    let body =
        json!({"name": name, "provider": "telegram", "auth_type": "api_key", "fields": {"bot_token": good_token()}});
    let (status, created) = app
        .call(Method::POST, "/integrations/credentials", key, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

/// A page of another site (`http://localhost:PORT`, not 127.0.0.1) that
/// opens a credgate URL in a popup and keeps the messages it receives.
pub struct Opener {
    pub origin: String,
    target: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Opener {
    pub async fn start() -> Self {
        let target = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let shown = target.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::get(move || {
                let url = shown.lock().unwrap().clone();
                async move {
                    axum::response::Html(format!(
                        r#"<!doctype html><html><head><title>Platform</title></head><body>
<h1>The platform</h1><button id="open">Connect an account</button><pre id="log"></pre>
<script>
window.received = [];
window.addEventListener('message', function (e) {{
  window.received.push({{origin: e.origin, data: e.data}});
  document.getElementById('log').textContent = JSON.stringify(window.received, null, 2);
}});
document.getElementById('open').addEventListener('click', function () {{
  window.open({url}, 'credgate', 'popup,width=600,height=800');
}});
</script></body></html>"#,
                        url = serde_json::to_string(&url).unwrap()
                    ))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let origin = format!("http://localhost:{}", listener.local_addr().unwrap().port());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { origin, target }
    }

    /// The URL the button opens.
    pub fn open(&self, url: &str) {
        *self.target.lock().unwrap() = url.to_owned();
    }
}
