//! Amazon SES (`aws_sigv4`): the Test button signs `GetSendQuota` with
//! Signature Version 4 and moto's server, with IAM authentication on,
//! verifies it (`moto_server.py`, installed by
//! `scripts/install-test-deps.sh`): a real verifier nobody here wrote.

use std::process::{Child, ChildStdin};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{captured_logs, test_config, TestApp, TestDb};

/// moto's server with one IAM user allowed `ses:*`, and its key.
struct Moto {
    ready: Value,
    _child: Child,
    _stdin: ChildStdin,
}

impl Moto {
    fn start() -> Self {
        let (ready, child, stdin) = crate::helpers::python_stand_in("moto_server.py");
        Self {
            ready: serde_json::from_str(&ready).expect("a JSON READY line"),
            _child: child,
            _stdin: stdin,
        }
    }

    fn field(&self, name: &str) -> String {
        self.ready[name].as_str().unwrap().to_owned()
    }
}

async fn create(app: &TestApp, name: &str, fields: Value) -> String {
    let body = json!({"name": name, "provider": "aws_ses", "auth_type": "aws_sigv4", "fields": fields});
    let (status, created) = app
        .call(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

async fn test(app: &TestApp, id: &str) -> Value {
    let (status, result) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    result
}

async fn ses_get_send_quota_is_signed_with_sigv4_and_moto_verifies_it(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let moto = Moto::start();
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    let app = TestApp::spawn_with(config).await;
    let secret = moto.field("secret_access_key");
    let fields = |secret: &str| {
        json!({"access_key_id": moto.field("access_key_id"), "secret_access_key": secret,
               "region": moto.field("region"), "endpoint_url": moto.field("endpoint")})
    };

    let good = create(&app, "Mail", fields(&secret)).await;
    let wrong = create(&app, "Wrong", fields("WrongSecretWrongSecretWrongSecret0000")).await;
    let private = create(
        &app,
        "Private",
        json!({"access_key_id": moto.field("access_key_id"), "secret_access_key": secret,
               "region": "us-east-1", "endpoint_url": "http://10.20.30.40/"}),
    )
    .await;
    let passed = test(&app, &good).await;
    let refused = test(&app, &wrong).await;
    let denied = test(&app, &private).await;
    let (_, view) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{good}"),
            &app.org.admin,
            None,
        )
        .await;
    let (_, resolved) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{good}/resolve"),
            &app.org.engine,
            None,
        )
        .await;

    assert_eq!(passed["ok"], true, "{passed}");
    assert!(passed["detail"]["max_24_hour_send"].is_number(), "{passed}");
    assert!(passed["detail"]["sent_last_24_hours"].is_number(), "{passed}");
    assert_eq!(refused["ok"], false);
    assert_eq!(refused["error"]["code"], "auth_failed", "{refused}");
    assert_eq!(denied["error"]["code"], "egress_denied", "{denied}");
    assert_eq!(view["auth_type"], "aws_sigv4");
    assert_eq!(view["secret_fields"], json!(["secret_access_key"]));
    assert_eq!(
        resolved["fields"]["secret_access_key"],
        secret.as_str(),
        "the engine signs its own calls"
    );
    assert_eq!(resolved["fields"]["region"], "us-east-1");
    for text in [
        view.to_string(),
        passed.to_string(),
        refused.to_string(),
        captured_logs(),
    ] {
        assert!(!text.contains(&secret), "the AWS secret leaked");
    }
}
both_backends!(ses_get_send_quota_is_signed_with_sigv4_and_moto_verifies_it);

async fn the_gateway_signs_each_call_for_an_aws_credential_and_moto_verifies_it(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let moto = Moto::start();
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    let app = TestApp::spawn_with(config).await;
    let fields = |secret: &str| {
        json!({"access_key_id": moto.field("access_key_id"), "secret_access_key": secret,
               "region": moto.field("region"), "endpoint_url": moto.field("endpoint")})
    };
    let good = create(&app, "Mail", fields(&moto.field("secret_access_key"))).await;
    let wrong = create(&app, "Wrong", fields("WrongSecretWrongSecretWrongSecret0000")).await;
    let call = |id: String| {
        app.client
            .post(format!("{}/integrations/credentials/{id}/proxy", app.base))
            .bearer_auth(&app.org.engine)
            .header("content-type", "application/x-www-form-urlencoded; charset=utf-8")
            .body("Action=GetSendQuota&Version=2010-12-01")
            .send()
    };

    let signed = call(good).await.unwrap();
    let signed_status = signed.status();
    let signed_body = signed.text().await.unwrap();
    let refused = call(wrong).await.unwrap();
    let refused_marker = refused.headers().get("credgate-error").cloned();
    let refused_status = refused.status();
    let refused_body = refused.text().await.unwrap();

    assert_eq!(signed_status, StatusCode::OK, "{signed_body}");
    assert!(signed_body.contains("<Max24HourSend>"), "{signed_body}");
    assert_eq!(refused_status, StatusCode::FORBIDDEN, "the service's answer passes");
    assert!(refused_body.contains("SignatureDoesNotMatch"), "{refused_body}");
    assert!(refused_marker.is_none(), "not credgate's own error");
}
both_backends!(the_gateway_signs_each_call_for_an_aws_credential_and_moto_verifies_it);
