//! Calls the gateway refuses after their use is recorded (what only the
//! opened credential tells: no base URL, no key to place): each use gets
//! its outcome, naming why the call never left.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::gateway::settled_uses;
use crate::helpers::{sentinel, test_config, TestApp, TestDb};

/// A provider file whose base URL and key are both optional: a credential
/// may lack either, which only its opened fields show.
const ACME: &str = r#"
display_name = "Acme"

[[auth_types]]
type = "api_key"
fields = [
  { name = "base_url", label = "Base URL", type = "url", max_length = 2048 },
  { name = "api_key", label = "API key", secret = true, max_length = 256 },
]

[probe]
url = "https://acme.example/me"
auth = "bearer"
secret = "api_key"
"#;

async fn a_call_refused_after_its_use_is_recorded_gets_its_outcome(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acme.toml"), ACME).unwrap();
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    config.providers_dir = Some(dir.path().to_owned());
    let app = TestApp::spawn_with(config).await;
    let key = sentinel();
    let create = |fields: Value| {
        let body = json!({"name": "Acme", "provider": "acme", "auth_type": "api_key", "fields": fields});
        app.call(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
    };
    let (made, no_base) = create(json!({"api_key": key})).await;
    assert_eq!(made, StatusCode::CREATED, "{no_base}");
    let (made, no_key) = create(json!({"base_url": "http://127.0.0.1:9/v1"})).await;
    assert_eq!(made, StatusCode::CREATED, "{no_key}");

    for created in [&no_base, &no_key] {
        let id = created["id"].as_str().unwrap();
        let answer = app
            .client
            .get(format!("{}/integrations/credentials/{id}/proxy/items?q=1", app.base))
            .bearer_auth(&app.org.engine)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        let marked = answer.headers().get("credgate-error").cloned();
        let problem: Value = answer.json().await.unwrap();

        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["code"], "not_proxyable", "{problem}");
        assert_eq!(marked.as_ref().map(|v| v.to_str().unwrap()), Some("1"));
        assert!(!problem.to_string().contains(&key), "{problem}");
        let uses = settled_uses(&app, id, 1).await;
        assert_eq!(uses[0]["detail"]["error"], "not_proxyable", "{}", uses[0]);
        assert_eq!(uses[0]["detail"]["path"], "/items", "{}", uses[0]);
        assert_eq!(uses[0]["detail"]["status"], Value::Null, "{}", uses[0]);
    }
}
both_backends!(a_call_refused_after_its_use_is_recorded_gets_its_outcome);
