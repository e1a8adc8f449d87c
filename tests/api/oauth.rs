//! OAuth connect flows against stand-in Google and Microsoft servers.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{captured_logs, test_config, TestApp, TestDb};
use crate::oauth_server::{AuthServer, Flavor, User};

pub const RETURN_TO: &str = "https://app.example.com/integrations";

pub async fn oauth_app(
    db: &TestDb,
    servers: &[(&AuthServer, &str)],
    tweak: impl FnOnce(&mut credgate::config::Config),
) -> TestApp {
    let mut config = test_config(db);
    for (server, provider) in servers {
        config.provider_overrides.extend(server.overrides(provider));
    }
    config.allowed_return_urls = vec!["https://app.example.com/".into()];
    tweak(&mut config);
    TestApp::spawn_with(config).await
}

fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

/// `GET authorize` as JSON; returns the provider URL.
pub async fn authorize(app: &TestApp, provider: &str, query: &str) -> String {
    let res = app
        .client
        .get(format!("{}/integrations/{provider}/authorize?{query}", app.base))
        .bearer_auth(&app.org.member)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body: Value = res.json().await.unwrap();
    body["authorize_url"].as_str().unwrap().to_owned()
}

/// The browser at the provider: consent, then the redirect back.
pub async fn consent(app: &TestApp, authorize_url: &str) -> String {
    let res = app.client.get(authorize_url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER, "{}", res.text().await.unwrap());
    res.headers()["location"].to_str().unwrap().to_owned()
}

/// Follows the provider's redirect into credgate's callback.
pub async fn callback(app: &TestApp, url: &str) -> reqwest::Response {
    app.client.get(url).send().await.unwrap()
}

/// The whole connect flow with `return_to`; returns the redirect's query.
pub async fn connect(app: &TestApp, provider: &str, extra: &str) -> HashMap<String, String> {
    let url = authorize(app, provider, &format!("return_to={}{extra}", urlencode(RETURN_TO))).await;
    let back = consent(app, &url).await;
    let res = callback(app, &back).await;
    assert_eq!(res.status(), StatusCode::FOUND);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(RETURN_TO), "{location}");
    query_of(&location)
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn google_connect_stores_an_active_credential_and_never_shows_a_token(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;

    let url = authorize(
        &app,
        "google",
        &format!("name=Drive&return_to={}", urlencode(RETURN_TO)),
    )
    .await;
    let params = query_of(&url);
    let back = consent(&app, &url).await;
    let res = callback(&app, &back).await;
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let result = query_of(&location);
    let id = result["credential_id"].clone();
    let (_, got) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
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

    assert!(params["state"].len() >= 43, "at least 256 random bits, url-safe");
    assert_eq!(params["code_challenge_method"], "S256");
    assert_eq!(params["access_type"], "offline");
    assert_eq!(params["prompt"], "consent");
    assert_eq!(params["include_granted_scopes"], "true");
    assert_eq!(
        params["redirect_uri"],
        format!("{}/integrations/google/callback", app.base)
    );
    assert_eq!(result["result"], "success");
    assert_eq!(got["status"], json!("active"));
    assert_eq!(got["name"], json!("Drive"));
    assert_eq!(got["auth_type"], json!("oauth2"));
    assert_eq!(
        got["account"],
        json!({"id": "109800000001", "email": "user1@example.com", "display_name": "User 1"})
    );
    assert!(got["scopes"].as_array().unwrap().contains(&json!("email")));
    let expires = chrono::DateTime::parse_from_rfc3339(got["expires_at"].as_str().unwrap()).unwrap();
    let lifetime = expires.timestamp() - chrono::Utc::now().timestamp();
    assert!(
        (3590..=3600).contains(&lifetime),
        "expires_in 3599 is honoured, got {lifetime}"
    );
    assert!(google.access_valid(resolved["access_token"].as_str().unwrap()));
    assert!(resolved.get("refresh_token").is_none() && !resolved.to_string().contains("RT-"));
    let issued = google.with(|i| i.issued.clone());
    let logs = captured_logs();
    for secret in &issued {
        assert!(!got.to_string().contains(secret));
        assert!(!logs.contains(secret), "a token or code reached the logs");
    }
}
both_backends!(google_connect_stores_an_active_credential_and_never_shows_a_token);

async fn connecting_the_same_account_again_updates_it_and_keeps_the_refresh_token(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;

    let first = connect(&app, "google", "").await;
    let row = app
        .state
        .store
        .credential(&app.org.id, &crate::helpers::cid(&first["credential_id"]))
        .await
        .unwrap()
        .unwrap();
    let tokens_before = app
        .state
        .vault
        .open(&row.org_id, &row.id, &row.secret_ct, row.key_version)
        .await
        .unwrap();
    let second = connect(&app, "google", "").await;
    let row = app
        .state
        .store
        .credential(&app.org.id, &crate::helpers::cid(&second["credential_id"]))
        .await
        .unwrap()
        .unwrap();
    let tokens_after = app
        .state
        .vault
        .open(&row.org_id, &row.id, &row.secret_ct, row.key_version)
        .await
        .unwrap();
    let (_, listed) = app
        .call(
            Method::GET,
            "/integrations/credentials?provider=google",
            &app.org.admin,
            None,
        )
        .await;

    use secrecy::ExposeSecret;
    let rt = |g: &std::collections::BTreeMap<String, credgate::crypto::SecretMap>| {
        g["tokens"].get("refresh_token").map(|t| t.expose_secret().to_owned())
    };
    assert_eq!(first["credential_id"], second["credential_id"]);
    assert_eq!(listed["total"], json!(1));
    assert!(rt(&tokens_before).is_some());
    assert_eq!(
        rt(&tokens_before),
        rt(&tokens_after),
        "Google sent no new refresh token: the old one stays"
    );
    assert_ne!(
        tokens_before["tokens"].get("access_token").unwrap().expose_secret(),
        tokens_after["tokens"].get("access_token").unwrap().expose_secret()
    );
}
both_backends!(connecting_the_same_account_again_updates_it_and_keeps_the_refresh_token);

async fn reauthorizing_a_credential_in_place_makes_it_active_again(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let first = connect(&app, "google", "").await;
    let id = first["credential_id"].clone();
    sqlx::query("UPDATE credentials SET status = 'needs_reauth', last_error = '{\"code\":\"needs_reauth\",\"message\":\"revoked\",\"at\":\"2026-01-01T00:00:00Z\"}' WHERE id = $1")
            .bind(&id).execute(&app.sql().await).await.unwrap();

    let again = connect(&app, "google", &format!("&credential_id={id}")).await;
    let (_, got) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    let (_, events) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(again["credential_id"], id);
    assert_eq!(got["status"], json!("active"));
    assert!(got.get("last_error").is_none());
    assert_eq!(events[0]["action"], json!("credential.reconnect"));
}
both_backends!(reauthorizing_a_credential_in_place_makes_it_active_again);

async fn replayed_forged_and_expired_states_are_rejected_and_store_nothing(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;

    let url = authorize(&app, "google", &format!("return_to={}", urlencode(RETURN_TO))).await;
    let back = consent(&app, &url).await;
    let first = callback(&app, &back).await;
    let replay = callback(&app, &back).await;
    let forged = callback(
        &app,
        &format!("{}/integrations/google/callback?state=forged&code=x", app.base),
    )
    .await;
    let url2 = authorize(&app, "google", &format!("return_to={}", urlencode(RETURN_TO))).await;
    app.clock.advance(credgate::oauth::STATE_TTL_SECS + 1);
    let expired = callback(&app, &consent(&app, &url2).await).await;
    let (_, listed) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;

    assert_eq!(first.status(), StatusCode::FOUND);
    assert_eq!(
        replay.status(),
        StatusCode::OK,
        "unknown state: no return_to to trust, so a page"
    );
    assert_eq!(replay.headers()["content-type"], "text/html; charset=utf-8");
    let page = replay.text().await.unwrap();
    assert!(page.contains("already used"), "{page}");
    assert!(page.contains("oauth_state_invalid"));
    assert!(forged.text().await.unwrap().contains("oauth_state_invalid"));
    let location = expired.headers()["location"].to_str().unwrap();
    assert_eq!(query_of(location)["code"], "oauth_state_invalid");
    assert_eq!(listed["total"], json!(1), "only the first callback stored a credential");
}
both_backends!(replayed_forged_and_expired_states_are_rejected_and_store_nothing);

async fn a_denied_consent_a_rejected_code_and_a_failing_identity_store_nothing(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let rt = format!("return_to={}", urlencode(RETURN_TO));

    google.with(|i| i.deny = true);
    let denied = connect(&app, "google", "").await;
    google.with(|i| i.deny = false);
    // A code bound to another authorization's PKCE challenge.
    let a = authorize(&app, "google", &rt).await;
    let b = authorize(&app, "google", &rt).await;
    let code_for_a = query_of(&consent(&app, &a).await)["code"].clone();
    let state_b = query_of(&b)["state"].clone();
    let mixed = callback(
        &app,
        &format!(
            "{}/integrations/google/callback?state={state_b}&code={code_for_a}",
            app.base
        ),
    )
    .await;
    google.with(|i| i.identity_status = Some(StatusCode::INTERNAL_SERVER_ERROR));
    let identity = connect(&app, "google", "").await;
    let (_, listed) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;

    assert_eq!(denied["result"], "error");
    assert_eq!(denied["code"], "access_denied");
    assert_eq!(
        query_of(mixed.headers()["location"].to_str().unwrap())["code"],
        "provider_error"
    );
    assert_eq!(identity["code"], "identity_failed");
    assert_eq!(listed["total"], json!(0));
}
both_backends!(a_denied_consent_a_rejected_code_and_a_failing_identity_store_nothing);

async fn a_callback_that_would_pass_the_limit_stores_nothing(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |c| c.max_per_provider = 1).await;

    let first = connect(&app, "google", "").await;
    google.with(|i| i.user = User::new(2));
    let second = connect(&app, "google", "").await;
    google.with(|i| i.user = User::new(1));
    let reconnect = connect(&app, "google", "").await;
    let (_, listed) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;

    assert_eq!(first["result"], "success");
    assert_eq!(second["code"], "quota_exceeded");
    assert_eq!(
        reconnect["result"], "success",
        "reconnecting an existing account adds nothing"
    );
    assert_eq!(listed["total"], json!(1));
}
both_backends!(a_callback_that_would_pass_the_limit_stores_nothing);

#[tokio::test]
async fn a_redirect_uri_one_character_off_a_bad_client_secret_and_a_slow_provider_fail_cleanly() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |c| c.provider_timeout_secs = 1).await;
    let rt = format!("return_to={}", urlencode(RETURN_TO));

    // The callback reaches credgate under another public URL (one character off).
    let mut config = app.config.clone();
    config.public_url = format!("{}/", app.base).replace("127.0.0.1", "127.0.0.01");
    config.listen = "127.0.0.1:0".parse().unwrap();
    let other = TestApp::spawn_with(config).await;
    let url = authorize(&app, "google", &rt).await;
    let back = consent(&app, &url).await.replace(&app.base, &other.base);
    let off = callback(&other, &back).await;

    google.with(|i| i.client_secret.push('x'));
    let bad_secret = connect(&app, "google", "").await;
    google.with(|i| {
        i.client_secret.pop();
        i.token_delay = Some(std::time::Duration::from_secs(3));
    });
    let slow = connect(&app, "google", "").await;
    google.with(|i| i.token_delay = None);
    let mut down_config = app.config.clone();
    down_config.listen = "127.0.0.1:0".parse().unwrap();
    down_config.provider_overrides.insert(
        "CREDGATE_PROVIDER_GOOGLE_TOKEN_URL".into(),
        "http://127.0.0.1:9/token".into(),
    );
    let down_app = TestApp::spawn_with(down_config).await;
    let down_url = authorize(&down_app, "google", &rt).await;
    let down = callback(&down_app, &consent(&down_app, &down_url).await).await;

    assert_eq!(
        query_of(off.headers()["location"].to_str().unwrap())["code"],
        "provider_error"
    );
    assert_eq!(bad_secret["code"], "provider_error");
    assert_eq!(slow["code"], "provider_unavailable");
    assert_eq!(
        query_of(down.headers()["location"].to_str().unwrap())["code"],
        "provider_unavailable"
    );
    let (_, listed) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;
    assert_eq!(listed["total"], json!(0));
}

#[tokio::test]
async fn without_return_to_a_popup_page_posts_to_allowed_origins_only() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;

    let url = authorize(&app, "google", "").await;
    let res = callback(&app, &consent(&app, &url).await).await;
    let csp = res.headers()["content-security-policy"].to_str().unwrap().to_owned();
    let page = res.text().await.unwrap();

    assert!(page.contains("account is connected"));
    assert!(page.contains(r#"<div id="done" data-message="#), "{page}");
    assert!(
        page.contains(r#"<script src="/pages/assets/app.js""#),
        "the pages' one script posts it"
    );
    // The allowed return origins, and credgate's own (its connect page opens
    // the provider in a popup); nothing else.
    let own = app.base.clone();
    assert!(
        page.contains(&format!(r#"[&quot;{own}&quot;,&quot;https://app.example.com&quot;]"#)),
        "{page}"
    );
    assert!(!page.contains("'*'") && !page.contains("&quot;*&quot;"));
    assert!(page.contains(r#"&quot;result&quot;:&quot;success&quot;"#));
    assert!(csp.contains("script-src 'self'") && !csp.contains("nonce") && !csp.contains("unsafe-inline"));
}

#[tokio::test]
async fn a_return_to_outside_the_allowed_list_is_refused_at_authorize() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;

    let evil = urlencode("https://app.example.com.evil.net/steal");
    let (status, problem) = app
        .call(
            Method::GET,
            &format!("/integrations/google/authorize?return_to={evil}"),
            &app.org.member,
            None,
        )
        .await;
    let (unknown, _) = app
        .call(Method::GET, "/integrations/sftp/authorize", &app.org.member, None)
        .await;
    let (engine, _) = app
        .call(Method::GET, "/integrations/google/authorize", &app.org.engine, None)
        .await;
    let redirect = app
        .client
        .get(format!("{}/integrations/google/authorize", app.base))
        .bearer_auth(&app.org.member)
        .send()
        .await
        .unwrap();

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], json!("return_to"));
    assert_eq!(unknown, StatusCode::NOT_FOUND, "sftp has no OAuth");
    assert_eq!(engine, StatusCode::FORBIDDEN);
    assert_eq!(redirect.status(), StatusCode::SEE_OTHER);
    assert!(redirect.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with(&google.base));
}

#[tokio::test]
async fn an_issuer_that_does_not_match_is_rejected() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;

    google.with(|i| i.send_iss = Some("https://evil.example".into()));
    let wrong = connect(&app, "google", "").await;
    google.with(|i| i.send_iss = Some("https://accounts.google.com".into()));
    let right = connect(&app, "google", "").await;

    assert_eq!(wrong["code"], "issuer_mismatch");
    assert_eq!(right["result"], "success");
}

async fn sharepoint_connects_through_a_tenant_with_basic_client_auth_and_graph_identity(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    ms.with(|i| i.basic_auth = true);
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |c| {
        c.provider_overrides
            .insert("CREDGATE_PROVIDER_SHAREPOINT_CLIENT_AUTH".into(), "basic".into());
    })
    .await;

    let result = connect(&app, "sharepoint", "&tenant=contoso.onmicrosoft.com").await;
    let id = &result["credential_id"];
    let (_, got) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(result["result"], "success");
    assert_eq!(
        ms.with(|i| i.tenant_seen.clone()).as_deref(),
        Some("contoso.onmicrosoft.com")
    );
    assert_eq!(
        got["account"]["email"],
        json!("user1@example.com"),
        "userPrincipalName when mail is null"
    );
    assert_eq!(got["account"]["display_name"], json!("User 1"));
    assert_eq!(got["fields"]["tenant"], json!("contoso.onmicrosoft.com"));
    assert_eq!(
        got["fields"]["tenant_id"],
        json!("72f988bf-86f1-41af-91ab-2d7cd011db47")
    );
    assert!(got["scopes"].as_array().unwrap().contains(&json!("Files.Read.All")));
}
both_backends!(sharepoint_connects_through_a_tenant_with_basic_client_auth_and_graph_identity);

#[tokio::test]
async fn the_sharepoint_tenant_is_common_unless_the_deployment_sets_one() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;

    let url = authorize(&app, "sharepoint", "").await;

    assert!(
        url.starts_with(&format!("{}/common/oauth2/v2.0/authorize", ms.base)),
        "{url}"
    );
    let scopes = query_of(&url)["scope"].clone();
    for s in ["offline_access", "User.Read", "Sites.Read.All", "Files.Read.All"] {
        assert!(scopes.split(' ').any(|x| x == s), "{scopes}");
    }
}

#[tokio::test]
async fn a_third_oauth_provider_needs_only_a_file() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let server = AuthServer::start(Flavor::Google).await;
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/providers")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let (client_id, client_secret) = server.with(|i| (i.client_id.clone(), i.client_secret.clone()));
    std::fs::write(
        dir.path().join("acme.toml"),
        format!(
            r#"display_name = "Acme Cloud"
authorization_url = "{base}/authorize"
token_url = "{base}/token"
userinfo_url = "{base}/userinfo"
client_id = "{client_id}"
client_secret = "{client_secret}"
scopes = ["read"]
[identity]
id = ["sub"]
email = ["email"]
[[auth_types]]
type = "oauth2"
"#,
            base = server.base
        ),
    )
    .unwrap();
    let app = oauth_app(&db, &[], |c| c.providers_dir = Some(dir.path().to_owned())).await;

    let result = connect(&app, "acme", "").await;
    let (_, catalog) = app
        .call(Method::GET, "/integrations/providers", &app.org.admin, None)
        .await;

    assert_eq!(result["result"], "success");
    assert!(catalog
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == "acme" && p["auth_types"] == json!(["oauth2"])));
}

#[tokio::test]
async fn deleting_a_google_credential_revokes_its_token_without_waiting() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let id = connect(&app, "google", "").await["credential_id"].clone();

    let (status, _) = app
        .call(
            Method::DELETE,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    let mut revoked = Vec::new();
    for _ in 0..50 {
        revoked = google.with(|i| i.revoked.clone());
        if !revoked.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(revoked.len(), 1);
    assert!(revoked[0].starts_with("RT-"), "the refresh token is revoked");
}
