//! Credentials without a person: client credentials (a generic token URL,
//! Microsoft app-only) and Google service accounts. Stand-in token
//! endpoints verify what they receive (client authentication; the RS256
//! signature against the public key, `aud`, `iss`, `sub`, `iat`/`exp`);
//! credgate mints on create and test, again before expiry, once across
//! replicas, and never shows the secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, State};
use axum::http::StatusCode as AxumStatus;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{captured_logs, sentinel, test_config, TestApp, TestDb};

#[derive(Default)]
struct Seen {
    client_secret: String,
    /// PEM of the public key that signs service-account assertions.
    public_key: String,
    refuse: Option<u16>,
    delay: Option<Duration>,
    /// Form of every token request, and the tenant in the path if any.
    requests: Vec<(Option<String>, HashMap<String, String>)>,
    /// Claims of every assertion that verified.
    claims: Vec<Value>,
    issued: Vec<String>,
}

#[derive(Clone)]
struct TokenEndpoint {
    base: String,
    seen: Arc<Mutex<Seen>>,
}

impl TokenEndpoint {
    async fn start(client_secret: &str, public_key: &str) -> Self {
        let seen = Arc::new(Mutex::new(Seen {
            client_secret: client_secret.into(),
            public_key: public_key.into(),
            ..Seen::default()
        }));
        let app = Router::new()
            .route("/token", post(plain))
            .route("/{tenant}/oauth2/v2.0/token", post(tenant))
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, seen }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Seen) -> R) -> R {
        f(&mut self.seen.lock().unwrap())
    }

    fn mints(&self) -> usize {
        self.with(|s| s.requests.len())
    }
}

async fn plain(State(s): State<Arc<Mutex<Seen>>>, Form(form): Form<HashMap<String, String>>) -> Response {
    answer(s, None, form).await
}

async fn tenant(
    State(s): State<Arc<Mutex<Seen>>>,
    Path(tenant): Path<String>,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    answer(s, Some(tenant), form).await
}

fn error(status: u16, code: &str, description: &str) -> Response {
    (
        AxumStatus::from_u16(status).unwrap(),
        Json(json!({"error": code, "error_description": description})),
    )
        .into_response()
}

async fn answer(s: Arc<Mutex<Seen>>, tenant: Option<String>, form: HashMap<String, String>) -> Response {
    let delay = {
        let mut seen = s.lock().unwrap();
        seen.requests.push((tenant, form.clone()));
        seen.delay
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut seen = s.lock().unwrap();
    if let Some(status) = seen.refuse {
        return error(status, "temporarily_unavailable", "try later");
    }
    match form.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {
            if form.get("client_secret") != Some(&seen.client_secret) || !form.contains_key("client_id") {
                return error(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.");
            }
        }
        Some("urn:ietf:params:oauth:grant-type:jwt-bearer") => {
            let assertion = form.get("assertion").cloned().unwrap_or_default();
            let key = jsonwebtoken::DecodingKey::from_rsa_pem(seen.public_key.as_bytes()).unwrap();
            let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
            // `aud`, `iat` and `exp` are asserted by the tests (against the
            // app's clock, which is not this process's).
            validation.validate_aud = false;
            validation.validate_exp = false;
            match jsonwebtoken::decode::<Value>(&assertion, &key, &validation) {
                Ok(data) => seen.claims.push(data.claims),
                Err(_) => return error(400, "invalid_grant", "Invalid JWT Signature."),
            }
        }
        _ => return error(400, "unsupported_grant_type", "grant type"),
    }
    let token = format!("AT-{}", uuid::Uuid::new_v4().simple());
    seen.issued.push(token.clone());
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3599})).into_response()
}

async fn minted_app(db: &TestDb) -> TestApp {
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    TestApp::spawn_with(config).await
}

async fn create(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
        .await
}

async fn resolve(app: &TestApp, id: &str) -> Value {
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/resolve"),
            &app.org.engine,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

fn client_credentials(endpoint: &TokenEndpoint, secret: &str) -> Value {
    json!({"name": "Machine", "provider": "oauth2_client_credentials", "auth_type": "oauth2_client_credentials",
           "fields": {"token_url": format!("{}/token", endpoint.base), "client_id": "machine-1",
                      "client_secret": secret, "scopes": "read write"}})
}

async fn client_credentials_mint_on_create_and_test_and_again_before_expiry(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let secret = sentinel();
    let endpoint = TokenEndpoint::start(&secret, "").await;
    let app = minted_app(&db).await;

    let (wrong, wrong_problem) = create(&app, client_credentials(&endpoint, "not-the-secret")).await;
    let (created, view) = create(&app, client_credentials(&endpoint, &secret)).await;
    let id = view["id"].as_str().unwrap().to_owned();
    let first = resolve(&app, &id).await;
    let mints_after_first = endpoint.mints();
    app.clock.advance(3599 - 200);
    let second = resolve(&app, &id).await;
    let (_, tested) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.admin,
            None,
        )
        .await;
    endpoint.with(|s| s.refuse = Some(503));
    let (unavailable, unavailable_problem) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/refresh"),
            &app.org.admin,
            None,
        )
        .await;
    endpoint.with(|s| {
        s.refuse = None;
        s.client_secret = "rotated-elsewhere".into();
    });
    let (dead, dead_problem) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/refresh"),
            &app.org.admin,
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
    let (_, listed) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;
    let patch = |secret: &str| {
        json!({"fields": {"token_url": format!("{}/token", endpoint.base), "client_id": "machine-1",
                          "client_secret": secret, "scopes": "read write"}})
    };
    let (still_wrong, still_wrong_problem) = app
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            Some(patch(&secret)),
        )
        .await;
    let (fixed, fixed_view) = app
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            Some(patch("rotated-elsewhere")),
        )
        .await;
    let after_fix = resolve(&app, &id).await;

    assert_eq!(wrong, StatusCode::UNPROCESSABLE_ENTITY, "{wrong_problem}");
    assert_eq!(wrong_problem["errors"][0]["field"], "fields.client_secret");
    assert!(wrong_problem["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("invalid_client"));
    assert_eq!(created, StatusCode::CREATED, "{view}");
    assert_eq!(view["status"], "active");
    assert_eq!(view["account"]["id"], "machine-1");
    assert!(view["expires_at"].is_string(), "{view}");
    assert_eq!(view["secret_fields"], json!(["client_secret"]));
    let minted_first = endpoint.with(|s| s.issued[0].clone());
    assert_eq!(
        first["access_token"],
        minted_first.as_str(),
        "the token minted on create"
    );
    assert_eq!(mints_after_first, 2, "one refused, one minted on create");
    let form = endpoint.with(|s| s.requests[1].1.clone());
    assert_eq!(form["scope"], "read write");
    assert_eq!(form["client_id"], "machine-1");
    assert_ne!(
        second["access_token"], first["access_token"],
        "minted again within the margin"
    );
    assert!(second["expires_at"].is_string());
    assert_eq!(tested["ok"], true, "{tested}");
    assert_eq!(tested["detail"]["account"], "machine-1");
    assert_eq!(unavailable, StatusCode::SERVICE_UNAVAILABLE, "{unavailable_problem}");
    assert_eq!(dead, StatusCode::CONFLICT, "{dead_problem}");
    assert_eq!(dead_problem["code"], "needs_reauth");
    assert_eq!(
        after["status"], "needs_reauth",
        "the credential's own fault stops retries"
    );
    assert_eq!(listed["total"], 1, "the refused create stored nothing");
    assert_eq!(still_wrong, StatusCode::UNPROCESSABLE_ENTITY, "{still_wrong_problem}");
    assert_eq!(still_wrong_problem["errors"][0]["field"], "fields.client_secret");
    assert_eq!(fixed, StatusCode::OK, "{fixed_view}");
    assert_eq!(fixed_view["status"], "active", "new fields mint again and revive it");
    assert_eq!(
        after_fix["access_token"],
        endpoint.with(|s| s.issued.last().unwrap().clone()).as_str()
    );
    for text in [
        view.to_string(),
        after.to_string(),
        wrong_problem.to_string(),
        captured_logs(),
    ] {
        assert!(!text.contains(&secret), "the client secret leaked");
    }
    for issued in endpoint.with(|s| s.issued.clone()) {
        assert!(!captured_logs().contains(&issued), "a token in the logs");
    }
}
both_backends!(client_credentials_mint_on_create_and_test_and_again_before_expiry);

async fn microsoft_app_only_mints_for_its_tenant_with_the_default_scope(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let endpoint = TokenEndpoint::start("ms-secret", "").await;
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    config.provider_overrides.insert(
        "CREDGATE_PROVIDER_MICROSOFT_TOKEN_URL".into(),
        format!("{}/{{tenant}}/oauth2/v2.0/token", endpoint.base),
    );
    let app = TestApp::spawn_with(config).await;

    let (created, view) = create(
        &app,
        json!({"name": "Graph app", "provider": "microsoft", "auth_type": "oauth2_client_credentials",
               "fields": {"tenant": "contoso.onmicrosoft.com", "client_id": "app-1", "client_secret": "ms-secret"}}),
    )
    .await;
    let (tenant, form) = endpoint.with(|s| s.requests[0].clone());

    assert_eq!(created, StatusCode::CREATED, "{view}");
    assert_eq!(tenant.as_deref(), Some("contoso.onmicrosoft.com"));
    assert_eq!(form["scope"], "https://graph.microsoft.com/.default");
    assert_eq!(form["grant_type"], "client_credentials");
    assert_eq!(view["fields"]["tenant"], "contoso.onmicrosoft.com");
}
both_backends!(microsoft_app_only_mints_for_its_tenant_with_the_default_scope);

async fn two_replicas_never_mint_twice_for_one_credential(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let endpoint = TokenEndpoint::start("s", "").await;
    let first = minted_app(&db).await;
    let mut config = first.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = TestApp::spawn_with_clock(config, first.clock.clone()).await;
    let (_, view) = create(&first, client_credentials(&endpoint, "s")).await;
    let id = view["id"].as_str().unwrap().to_owned();
    first.clock.advance(3599 - 100);
    endpoint.with(|s| s.delay = Some(Duration::from_millis(400)));

    let resolve_at = |app: &TestApp| {
        let (base, client, key, id) = (
            app.base.clone(),
            app.client.clone(),
            first.org.engine.clone(),
            id.clone(),
        );
        async move {
            let res = client
                .post(format!("{base}/integrations/credentials/{id}/resolve"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), StatusCode::OK);
            res.json::<Value>().await.unwrap()["access_token"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (a, b, c, d) = tokio::join!(
        resolve_at(&first),
        resolve_at(&second),
        resolve_at(&first),
        resolve_at(&second)
    );
    let issued = endpoint.with(|s| s.issued.clone());

    assert_eq!(
        endpoint.mints(),
        2,
        "one on create, one for all four resolves on two replicas"
    );
    // Each got the new token, or (while the other replica minted) the old
    // one, still valid past the 5 s that a waiting resolve accepts.
    assert!([&a, &b, &c, &d].iter().all(|t| issued.contains(t)), "{issued:?}");
    assert!(
        [&a, &b, &c, &d].iter().any(|t| **t == issued[1]),
        "the new token went out"
    );
}
both_backends!(two_replicas_never_mint_twice_for_one_credential);

/// A fresh RSA key pair (PKCS#8 private, SPKI public), in PEM.
fn rsa_pair() -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("key.pem");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&private)
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl genpkey");
    let public = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .output()
        .unwrap()
        .stdout;
    (
        std::fs::read_to_string(private).unwrap(),
        String::from_utf8(public).unwrap(),
    )
}

fn key_file(endpoint: &TokenEndpoint, private: &str) -> String {
    json!({"type": "service_account", "project_id": "p", "private_key_id": "kid-1", "private_key": private,
           "client_email": "robot@p.iam.gserviceaccount.com", "client_id": "1",
           "token_uri": format!("{}/token", endpoint.base)})
    .to_string()
}

async fn a_service_account_signs_an_assertion_the_token_endpoint_verifies(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (private, public) = rsa_pair();
    let (other_private, _) = rsa_pair();
    let endpoint = TokenEndpoint::start("", &public).await;
    let app = minted_app(&db).await;
    let body = |key: String| {
        json!({"name": "Sheets robot", "provider": "google_service_account", "auth_type": "service_account",
               "fields": {"service_account_json": key,
                          "scopes": "https://www.googleapis.com/auth/spreadsheets",
                          "subject": "alice@example.com"}})
    };

    let (garbage, garbage_problem) = create(&app, body("SENTINEL-not-json".into())).await;
    let (foreign, foreign_problem) = create(&app, body(key_file(&endpoint, &other_private))).await;
    let (created, view) = create(&app, body(key_file(&endpoint, &private))).await;
    let id = view["id"].as_str().unwrap().to_owned();
    let resolved = resolve(&app, &id).await;
    let claims = endpoint.with(|s| s.claims.clone());

    assert_eq!(garbage, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(garbage_problem["errors"][0]["field"], "fields.service_account_json");
    assert!(!garbage_problem.to_string().contains("SENTINEL"), "never echoed");
    assert_eq!(foreign, StatusCode::UNPROCESSABLE_ENTITY, "{foreign_problem}");
    assert_eq!(foreign_problem["errors"][0]["field"], "fields.service_account_json");
    assert_eq!(created, StatusCode::CREATED, "{view}");
    assert_eq!(view["account"]["email"], "robot@p.iam.gserviceaccount.com");
    assert_eq!(view["secret_fields"], json!(["service_account_json"]));
    assert_eq!(claims.len(), 1, "only the right key's assertion verified");
    let c = &claims[0];
    assert_eq!(c["iss"], "robot@p.iam.gserviceaccount.com");
    assert_eq!(c["aud"], format!("{}/token", endpoint.base));
    assert_eq!(c["sub"], "alice@example.com");
    assert_eq!(c["scope"], "https://www.googleapis.com/auth/spreadsheets");
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 3600);
    assert!((c["iat"].as_i64().unwrap() - app.clock.now()).abs() <= 5);
    assert_eq!(
        resolved["access_token"],
        endpoint.with(|s| s.issued[0].clone()).as_str()
    );
    let private_body: String = private.lines().nth(1).unwrap().to_owned();
    for text in [view.to_string(), foreign_problem.to_string(), captured_logs()] {
        assert!(!text.contains(&private_body), "the private key leaked");
    }
}
both_backends!(a_service_account_signs_an_assertion_the_token_endpoint_verifies);

async fn microsoft_delegated_connects_refreshes_with_rotation_and_names_the_account(backend: crate::helpers::Backend) {
    use crate::oauth::{connect, oauth_app};
    use crate::oauth_server::{AuthServer, Flavor};
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "microsoft")], |_| {}).await;

    let result = connect(&app, "microsoft", "").await;
    let id = result["credential_id"].clone();
    let first = resolve(&app, &id).await;
    let (refreshed, _) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/refresh"),
            &app.org.admin,
            None,
        )
        .await;
    let second = resolve(&app, &id).await;
    let (_, view) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(result["result"], "success", "{result:?}");
    assert_eq!(ms.with(|i| i.tenant_seen.clone()).as_deref(), Some("common"));
    assert_eq!(
        view["account"]["email"], "user1@example.com",
        "Graph's userPrincipalName"
    );
    assert_eq!(refreshed, StatusCode::OK);
    assert_ne!(first["access_token"], second["access_token"]);
    assert_eq!(ms.with(|i| i.reuse_detected), 0, "the rotated refresh token was kept");
    assert!(ms.access_valid(second["access_token"].as_str().unwrap()));
}
both_backends!(microsoft_delegated_connects_refreshes_with_rotation_and_names_the_account);

async fn the_pages_offer_each_machine_credential_with_its_key_file_as_a_text_area(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = minted_app(&db).await;
    let url = crate::pages::open_session(&app, &app.org.admin, json!({"user_id": "u-5", "purpose": "connect"})).await;
    let (cookie, _) = crate::pages::sessions::cookie_and_csrf(&app, &url, "/connect").await;
    let page = |path: &'static str| {
        let (app, cookie) = (&app, cookie.clone());
        async move {
            app.client
                .get(format!("{}{path}", app.base))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };

    let service_account = page("/connect/google_service_account").await;
    let client_credentials = page("/connect/oauth2_client_credentials").await;
    let ses = page("/connect/aws_ses").await;
    let microsoft = page("/connect/microsoft?auth_type=oauth2_client_credentials").await;

    assert!(service_account.contains("<textarea"), "{service_account}");
    assert!(
        service_account.contains(r#"name="f.service_account_json""#),
        "{service_account}"
    );
    assert!(
        client_credentials.contains(r#"name="f.client_secret""#) && client_credentials.contains(r#"type="password""#)
    );
    assert!(ses.contains(r#"name="f.secret_access_key""#) && ses.contains(r#"name="f.region""#));
    assert!(microsoft.contains(r#"name="f.tenant""#), "{microsoft}");
    assert!(
        microsoft.contains("Connect Microsoft"),
        "the delegated flow is offered too"
    );
}
both_backends!(the_pages_offer_each_machine_credential_with_its_key_file_as_a_text_area);

async fn the_worker_mints_again_before_expiry_without_anyone_asking(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let endpoint = TokenEndpoint::start("s", "").await;
    let app = minted_app(&db).await;
    let (_, view) = create(&app, client_credentials(&endpoint, "s")).await;
    let id = view["id"].as_str().unwrap().to_owned();
    let (_, due, _) = app.refresh_state(&id).await;

    let early = credgate::oauth::worker::try_refresh_due(&app.state, 10).await.unwrap();
    app.clock.advance(due.unwrap() - app.clock.now() + 1);
    let step = credgate::oauth::worker::try_refresh_due(&app.state, 10).await.unwrap();
    let resolved = resolve(&app, &id).await;

    assert_eq!(early.refreshed, 0, "nothing is due before its time");
    assert_eq!(step.refreshed, 1, "the worker minted again");
    assert_eq!(
        endpoint.mints(),
        2,
        "one on create, one by the worker; the resolve needed none"
    );
    assert_eq!(
        resolved["access_token"],
        endpoint.with(|s| s.issued[1].clone()).as_str()
    );
}
both_backends!(the_worker_mints_again_before_expiry_without_anyone_asking);
