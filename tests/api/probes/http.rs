//! The probe routes over HTTP, and testing saved credentials with their
//! stored values.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use wiremock::matchers::{header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::pg_cluster;
use super::sshd::{sshd, KEY_USER, PASSPHRASE, PASSWORD, PASSWORD_USER};
use crate::both_backends;
use crate::helpers::{captured_logs, test_config, TestApp, TestDb};

async fn loopback_app(db: &TestDb, tweak: impl FnOnce(&mut credgate::config::Config)) -> TestApp {
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    tweak(&mut config);
    TestApp::spawn_with(config).await
}

async fn post(app: &TestApp, route: &str, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, route, &app.org.member, Some(body)).await
}

#[test]
fn the_sftp_route_probes_a_real_sshd_and_reports_its_fingerprint() {
    crate::helpers::run_test(sftp_route_probes_a_real_sshd());
}

async fn sftp_route_probes_a_real_sshd() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let app = loopback_app(&db, |_| {}).await;
    let s = sshd();
    let body = json!({"host": "127.0.0.1", "port": s.port, "username": PASSWORD_USER, "password": PASSWORD, "path": s.listing_dir()});

    let (status, result) = post(&app, "/integrations/sftp/test-connection", body.clone()).await;
    let (wrong, mismatch) = post(
        &app,
        "/integrations/sftp/test-connection",
        json!({"host": "127.0.0.1", "port": s.port, "username": PASSWORD_USER, "password": PASSWORD,
               "host_key_sha256": "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    )
    .await;
    let (malformed, problem) = post(&app, "/integrations/sftp/test-connection", json!({"port": 70000})).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["ok"], json!(true), "{result}");
    assert_eq!(result["detail"]["host_key_sha256"], json!(s.fingerprint));
    assert_eq!(result["detail"]["entry_count"], json!(3), "{result}");
    assert!(result["latency_ms"].is_u64());
    assert_eq!(wrong, StatusCode::OK);
    assert_eq!(mismatch["ok"], json!(false));
    assert_eq!(mismatch["error"]["code"], json!("host_key_mismatch"));
    assert_eq!(malformed, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(fields.contains(&"host") && fields.contains(&"port"), "{fields:?}");
    assert!(!result.to_string().contains(PASSWORD) && !captured_logs().contains(PASSWORD));
}

#[tokio::test]
async fn without_an_egress_allowance_loopback_targets_are_denied() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let s = sshd();

    let (_, sftp) = post(
        &app,
        "/integrations/sftp/test-connection",
        json!({"host": "localhost", "port": s.port, "username": PASSWORD_USER, "password": PASSWORD}),
    )
    .await;
    let (_, pg) = post(
        &app,
        "/integrations/postgres/test-connection",
        json!({"connection_string": "postgres://u:p@169.254.169.254:5432/x"}),
    )
    .await;
    let (_, llm) = post(
        &app,
        "/integrations/llm/test-connection",
        json!({"provider_type": "openai_compatible", "api_key": "k", "base_url": "http://10.0.0.1:8000/v1"}),
    )
    .await;

    for result in [&sftp, &pg, &llm] {
        assert_eq!(result["ok"], json!(false), "{result}");
        assert_eq!(result["error"]["code"], json!("egress_denied"), "{result}");
    }
    // `localhost` resolved to loopback; the caller is not told to what.
    assert!(!sftp.to_string().contains("127.0.0.1"), "{sftp}");
}

#[tokio::test]
async fn the_postgres_route_reports_wrong_passwords_and_the_llm_route_uses_the_configured_base() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let openai = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v1/models"))
        .and(header("authorization", "Bearer sk-SENTINEL-abcdefghijklmnopqrstuv"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"object": "list", "data": [{"id": "gpt-x"}]})))
        .mount(&openai)
        .await;
    let app = loopback_app(&db, |c| {
        c.provider_overrides
            .insert("CREDGATE_PROVIDER_OPENAI_API_BASE_URL".into(), openai.uri());
    })
    .await;
    let cluster = pg_cluster::cluster();

    let (_, good) = post(
        &app,
        "/integrations/postgres/test-connection",
        json!({"connection_string": cluster.url(pg_cluster::PASSWORD, "?sslmode=disable")}),
    )
    .await;
    let (_, bad) = post(&app, "/integrations/postgres/test-connection",
        json!({"host": "127.0.0.1", "port": cluster.port, "database": pg_cluster::DATABASE, "username": pg_cluster::USER,
               "password": "wrong-SENTINEL", "sslmode": "disable"})).await;
    let (_, llm) = post(
        &app,
        "/integrations/llm/test-connection",
        json!({"provider_type": "openai", "api_key": "sk-SENTINEL-abcdefghijklmnopqrstuv"}),
    )
    .await;
    let (telegram, problem) = post(
        &app,
        "/integrations/telegram/test-connection",
        json!({"bot_token": "not-a-token"}),
    )
    .await;

    assert_eq!(good["ok"], json!(true), "{good}");
    assert!(good["detail"]["server_version"].as_str().is_some(), "{good}");
    assert_eq!(bad["error"]["code"], json!("auth_failed"));
    assert_eq!(llm["ok"], json!(true), "{llm}");
    assert_eq!(telegram, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], json!("bot_token"));
    assert!(!problem.to_string().contains("not-a-token"));
}

#[tokio::test]
async fn probes_are_rate_limited_per_organization() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let app = loopback_app(&db, |c| c.probe_limit_per_min = 2).await;
    let other = app.new_org("Other").await;
    let body = json!({"bot_token": "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghi"});

    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            app.call(
                Method::POST,
                "/integrations/telegram/test-connection",
                &app.org.admin,
                Some(json!({"bot_token": "123456:"})),
            )
            .await
            .0,
        );
    }
    let res = app
        .client
        .post(format!("{}/integrations/telegram/test-connection", app.base))
        .bearer_auth(&app.org.admin)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (other_org, _) = app
        .call(
            Method::POST,
            "/integrations/telegram/test-connection",
            &other.admin,
            Some(json!({"bot_token": "1:"})),
        )
        .await;

    assert_eq!(
        statuses[..2],
        [StatusCode::UNPROCESSABLE_ENTITY, StatusCode::UNPROCESSABLE_ENTITY]
    );
    assert_eq!(statuses[2], StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(
        other_org,
        StatusCode::UNPROCESSABLE_ENTITY,
        "another organization has its own budget"
    );
}

async fn testing_a_saved_credential_uses_its_stored_values_and_records_the_outcome(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = loopback_app(&db, |_| {}).await;
    let s = sshd();
    let create =
        |fields: Value, auth: &str| json!({"name": "files", "provider": "sftp", "auth_type": auth, "fields": fields});
    let (_, good) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &app.org.admin,
            Some(create(
                json!({
            "host": "127.0.0.1", "port": s.port, "username": KEY_USER, "private_key": s.key("id_ed25519_pass"),
            "passphrase": PASSPHRASE, "host_key_sha256": s.fingerprint, "path": s.listing_dir()}),
                "key_file",
            )),
        )
        .await;
    let (_, bad) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &app.org.admin,
            Some(create(
                json!({
            "host": "127.0.0.1", "port": s.port, "username": PASSWORD_USER, "password": "wrong-SENTINEL"}),
                "user_password",
            )),
        )
        .await;
    let (good_id, bad_id) = (good["id"].as_str().unwrap(), bad["id"].as_str().unwrap());

    let (s1, ok) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{good_id}/test"),
            &app.org.engine,
            None,
        )
        .await;
    let (s2, failed) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{bad_id}/test"),
            &app.org.engine,
            None,
        )
        .await;
    let (_, good_after) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{good_id}"),
            &app.org.admin,
            None,
        )
        .await;
    let (_, bad_after) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{bad_id}"),
            &app.org.admin,
            None,
        )
        .await;
    let other = app.new_org("Other").await;
    let (cross, _) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{good_id}/test"),
            &other.engine,
            None,
        )
        .await;

    assert_eq!((s1, s2), (StatusCode::OK, StatusCode::OK));
    assert_eq!(ok["ok"], json!(true), "{ok}");
    assert_eq!(ok["detail"]["entry_count"], json!(3));
    assert_eq!(failed["error"]["code"], json!("auth_failed"));
    assert_eq!(good_after["status"], json!("active"));
    assert!(good_after["last_tested_at"].is_string());
    assert_eq!(bad_after["status"], json!("error"));
    assert_eq!(bad_after["last_error"]["code"], json!("auth_failed"));
    assert!(!failed.to_string().contains("wrong-SENTINEL") && !bad_after.to_string().contains("wrong-SENTINEL"));
    assert!(!ok.to_string().contains(PASSPHRASE));
    assert_eq!(cross, StatusCode::NOT_FOUND);
}
both_backends!(testing_a_saved_credential_uses_its_stored_values_and_records_the_outcome);

#[tokio::test]
async fn testing_a_saved_oauth_credential_asks_the_identity_endpoint() {
    use crate::oauth::{connect, oauth_app};
    use crate::oauth_server::{AuthServer, Flavor};
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let id = connect(&app, "google", "").await["credential_id"].clone();

    let (_, ok) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.engine,
            None,
        )
        .await;
    google.revoke_everything();
    google.with(|i| i.identity_status = Some(StatusCode::UNAUTHORIZED));
    let (_, failed) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.engine,
            None,
        )
        .await;
    let (_, after) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(ok["ok"], json!(true), "{ok}");
    assert_eq!(ok["detail"]["email"], json!("user1@example.com"));
    assert_eq!(failed["ok"], json!(false));
    assert_eq!(failed["error"]["code"], json!("auth_failed"));
    assert_eq!(after["status"], json!("error"));
}
