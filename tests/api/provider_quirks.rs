//! Slack and Notion, connected through stand-ins that keep what each
//! service documents of its OAuth endpoints:
//!
//! - Slack (`oauth/v2/authorize`, `oauth.v2.access`): scopes joined by
//!   commas (a space is `invalid_scope`); a form-encoded token request;
//!   every answer is HTTP 200, errors as `{"ok": false, "error": …}`; the
//!   workspace (`team`) in the token response; with token rotation on, a
//!   12-hour access token and a refresh token that rotates.
//! - Notion (`v1/oauth/token`): a JSON body only (a form is 400
//!   `invalid_request`), the client in HTTP Basic; the workspace in the
//!   token response; `/v1/users/me` refuses a request without
//!   `Notion-Version` (400 `missing_version`).
//!
//! Each is driven authorize → callback → resolve (→ refresh).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use crate::helpers::{test_config, TestApp, TestDb};
use crate::oauth::{callback, consent, RETURN_TO};

/// What a stand-in saw and handed out.
#[derive(Default)]
struct Seen {
    client_id: String,
    client_secret: String,
    /// The authorize request's `scope`, as sent.
    scope: Option<String>,
    /// Content types of token requests.
    token_content_types: Vec<String>,
    /// Whether each token request authenticated the client as the service wants.
    client_authenticated: Vec<bool>,
    codes: HashMap<String, String>,
    access: Vec<String>,
    refresh: Vec<String>,
    refresh_grants: usize,
    /// `Notion-Version` of identity requests.
    versions: Vec<Option<String>>,
    /// Every token and code handed out.
    issued: Vec<String>,
}

type Shared = Arc<Mutex<Seen>>;

struct StandIn {
    base: String,
    seen: Shared,
}

impl StandIn {
    async fn start(router: Router<Shared>) -> Self {
        let seen: Shared = Arc::new(Mutex::new(Seen {
            client_id: format!("cid-{}", uuid::Uuid::new_v4().simple()),
            client_secret: format!("CLIENTSECRET{}", uuid::Uuid::new_v4().simple()),
            ..Seen::default()
        }));
        let app = router.with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, seen }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Seen) -> R) -> R {
        f(&mut self.seen.lock().unwrap())
    }

    /// An app whose `provider` points here.
    async fn app(&self, db: &TestDb, provider: &str, paths: [(&str, &str); 3]) -> TestApp {
        let mut config = test_config(db);
        let p = provider.to_uppercase();
        let (id, secret) = self.with(|s| (s.client_id.clone(), s.client_secret.clone()));
        config
            .provider_overrides
            .insert(format!("CREDGATE_PROVIDER_{p}_CLIENT_ID"), id);
        config
            .provider_overrides
            .insert(format!("CREDGATE_PROVIDER_{p}_CLIENT_SECRET"), secret);
        for (field, path) in paths {
            config
                .provider_overrides
                .insert(format!("CREDGATE_PROVIDER_{p}_{field}"), format!("{}{path}", self.base));
        }
        config.allowed_return_urls = vec!["https://app.example.com/".into()];
        TestApp::spawn_with(config).await
    }
}

fn redirect_with(redirect: &str, pairs: &[(&str, &str)]) -> Response {
    let mut target = url::Url::parse(redirect).unwrap();
    for (k, v) in pairs {
        target.query_pairs_mut().append_pair(k, v);
    }
    Redirect::to(target.as_str()).into_response()
}

fn basic_of(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(value).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    Some((id.to_owned(), secret.to_owned()))
}

// ---- Slack ----

async fn slack_authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut seen = s.lock().unwrap();
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    seen.scope = q.get("scope").cloned();
    if q.get("client_id") != Some(&seen.client_id) {
        return (StatusCode::BAD_REQUEST, "invalid_client_id").into_response();
    }
    // Slack's v2 authorize takes a comma-separated list.
    if q.get("scope").is_some_and(|s| s.contains(' ')) {
        return redirect_with(&redirect, &[("error", "invalid_scope"), ("state", &state)]);
    }
    let code = format!("SLACKCODE{}", uuid::Uuid::new_v4().simple());
    seen.codes.insert(code.clone(), redirect.clone());
    seen.issued.push(code.clone());
    redirect_with(&redirect, &[("code", &code), ("state", &state)])
}

/// Every answer is 200; errors are `{"ok": false, "error": …}`.
async fn slack_token(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Json<Value> {
    let mut seen = s.lock().unwrap();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.token_content_types.push(content_type.clone());
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Json(json!({"ok": false, "error": "invalid_arguments"}));
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let in_body =
        form.get("client_id") == Some(&seen.client_id) && form.get("client_secret") == Some(&seen.client_secret);
    let in_basic = basic_of(&headers) == Some((seen.client_id.clone(), seen.client_secret.clone()));
    seen.client_authenticated.push(in_body || in_basic);
    if !(in_body || in_basic) {
        return Json(json!({"ok": false, "error": "invalid_client_id"}));
    }
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") | None => {
            let Some(code) = form.get("code") else {
                return Json(json!({"ok": false, "error": "invalid_code"}));
            };
            if seen.codes.remove(code).is_none() {
                return Json(json!({"ok": false, "error": "invalid_code"}));
            }
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(at) = seen.refresh.iter().position(|r| *r == rt) else {
                return Json(json!({"ok": false, "error": "invalid_refresh_token"}));
            };
            seen.refresh.remove(at);
            seen.refresh_grants += 1;
        }
        Some(_) => return Json(json!({"ok": false, "error": "invalid_grant_type"})),
    }
    let access = format!("xoxe.xoxb-1-{}", uuid::Uuid::new_v4().simple());
    let refresh = format!("xoxe-1-{}", uuid::Uuid::new_v4().simple());
    seen.access.push(access.clone());
    seen.refresh.push(refresh.clone());
    seen.issued.extend([access.clone(), refresh.clone()]);
    Json(json!({
        "ok": true,
        "access_token": access,
        "token_type": "bot",
        "scope": "chat:write,channels:read",
        "bot_user_id": "U0BOT",
        "app_id": "A0APP",
        "team": {"name": "Acme Corp", "id": "T0ACME"},
        "enterprise": null,
        "is_enterprise_install": false,
        "expires_in": 120,
        "refresh_token": refresh,
    }))
}

async fn slack() -> StandIn {
    StandIn::start(
        Router::new()
            .route("/oauth/v2/authorize", get(slack_authorize))
            .route("/api/oauth.v2.access", post(slack_token)),
    )
    .await
}

const SLACK_PATHS: [(&str, &str); 3] = [
    ("AUTHORIZATION_URL", "/oauth/v2/authorize"),
    ("TOKEN_URL", "/api/oauth.v2.access"),
    ("USERINFO_URL", "/api/auth.test"),
];

async fn resolve(app: &TestApp, id: &str) -> (StatusCode, Value) {
    app.as_(&app.org.engine)
        .post(&format!("/integrations/credentials/{id}/resolve"), json!({}))
        .await
}

/// The connect flow; returns the callback's redirect query.
async fn connect(app: &TestApp, provider: &str) -> HashMap<String, String> {
    let url = crate::oauth::authorize(
        app,
        provider,
        &format!(
            "return_to={}",
            url::form_urlencoded::byte_serialize(RETURN_TO.as_bytes()).collect::<String>()
        ),
    )
    .await;
    let back = consent(app, &url).await;
    let res = callback(app, &back).await;
    assert_eq!(res.status(), StatusCode::FOUND, "{}", res.text().await.unwrap());
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    url::Url::parse(&location).unwrap().query_pairs().into_owned().collect()
}

async fn slack_connects_with_comma_scopes_names_the_workspace_and_refreshes(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let slack = slack().await;
    let app = slack.app(&db, "slack", SLACK_PATHS).await;

    let back = connect(&app, "slack").await;
    let id = back["credential_id"].clone();
    let (_, credential) = app
        .as_(&app.org.admin)
        .get(&format!("/integrations/credentials/{id}"))
        .await;
    let (status, resolved) = resolve(&app, &id).await;
    let (again, second) = resolve(&app, &id).await;

    assert_eq!(back["result"], "success", "{back:?}");
    assert_eq!(
        slack.with(|s| s.scope.clone()).as_deref(),
        Some("chat:write,channels:read")
    );
    assert!(slack.with(|s| s.client_authenticated.iter().all(|ok| *ok)));
    assert_eq!(credential["account"]["id"], "T0ACME", "{credential}");
    assert_eq!(credential["account"]["display_name"], "Acme Corp");
    assert_eq!(credential["scopes"], json!(["chat:write", "channels:read"]));
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(again, StatusCode::OK);
    assert_eq!(
        slack.with(|s| s.refresh_grants),
        2,
        "a 120 s token inside the resolve margin is refreshed, with the rotated refresh token"
    );
    let current = second["access_token"].as_str().unwrap().to_owned();
    assert!(slack.with(|s| s.access.last() == Some(&current)));
    let printed = format!("{credential}");
    for token in slack.with(|s| s.issued.clone()) {
        assert!(!printed.contains(&token), "no token in the record");
    }
}
crate::both_backends!(slack_connects_with_comma_scopes_names_the_workspace_and_refreshes);

/// Slack's refusal is a 200 with `"ok": false`: a rejected refresh token
/// is the grant gone (`needs_reauth`), not an unreadable answer.
async fn slack_errors_answered_with_200_are_read_as_errors(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let slack = slack().await;
    let app = slack.app(&db, "slack", SLACK_PATHS).await;
    let id = connect(&app, "slack").await["credential_id"].clone();
    slack.with(|s| s.refresh.clear());

    let (status, problem) = resolve(&app, &id).await;
    let (_, credential) = app
        .as_(&app.org.admin)
        .get(&format!("/integrations/credentials/{id}"))
        .await;

    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "needs_reauth", "{problem}");
    assert_eq!(credential["status"], "needs_reauth");
}
crate::both_backends!(slack_errors_answered_with_200_are_read_as_errors);

// ---- Notion ----

async fn notion_authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut seen = s.lock().unwrap();
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    if q.get("client_id") != Some(&seen.client_id) || q.get("owner").map(String::as_str) != Some("user") {
        return (StatusCode::BAD_REQUEST, "invalid_request").into_response();
    }
    let code = format!("NOTIONCODE{}", uuid::Uuid::new_v4().simple());
    seen.codes.insert(code.clone(), redirect.clone());
    seen.issued.push(code.clone());
    redirect_with(&redirect, &[("code", &code), ("state", &state)])
}

fn notion_error(status: StatusCode, error: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": error}))).into_response()
}

async fn notion_token(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mut seen = s.lock().unwrap();
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    seen.token_content_types.push(content_type.clone());
    let authenticated = basic_of(&headers) == Some((seen.client_id.clone(), seen.client_secret.clone()));
    seen.client_authenticated.push(authenticated);
    if !content_type.starts_with("application/json") {
        return notion_error(StatusCode::BAD_REQUEST, "invalid_request");
    }
    if !authenticated {
        return notion_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return notion_error(StatusCode::BAD_REQUEST, "invalid_request");
    };
    match request["grant_type"].as_str() {
        Some("authorization_code") => {
            let code = request["code"].as_str().unwrap_or_default();
            match seen.codes.remove(code) {
                Some(redirect) if request["redirect_uri"].as_str() == Some(redirect.as_str()) => {}
                _ => return notion_error(StatusCode::BAD_REQUEST, "invalid_grant"),
            }
        }
        Some("refresh_token") => {
            let rt = request["refresh_token"].as_str().unwrap_or_default().to_owned();
            let Some(at) = seen.refresh.iter().position(|r| *r == rt) else {
                return notion_error(StatusCode::BAD_REQUEST, "invalid_grant");
            };
            seen.refresh.remove(at);
            seen.refresh_grants += 1;
        }
        _ => return notion_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
    let access = format!("ntn_{}", uuid::Uuid::new_v4().simple());
    let refresh = format!("nrt_{}", uuid::Uuid::new_v4().simple());
    seen.access.push(access.clone());
    seen.refresh.push(refresh.clone());
    seen.issued.extend([access.clone(), refresh.clone()]);
    Json(json!({
        "access_token": access,
        "token_type": "bearer",
        "refresh_token": refresh,
        "bot_id": "b0t-1d",
        "workspace_id": "ws-acme-1",
        "workspace_name": "Acme HQ",
        "workspace_icon": null,
        "owner": {"type": "user", "user": {"object": "user", "id": "u-1", "person": {"email": "ada@acme.example"}}},
        "duplicated_template_id": null,
        "request_id": "req-1",
    }))
    .into_response()
}

async fn notion_me(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let mut seen = s.lock().unwrap();
    let version = headers
        .get("notion-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    seen.versions.push(version.clone());
    if version.is_none() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"object": "error", "status": 400, "code": "missing_version",
                        "message": "Notion-Version header failed validation"})),
        )
            .into_response();
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !seen.access.iter().any(|a| a == token) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"object": "error", "code": "unauthorized"})),
        )
            .into_response();
    }
    Json(
        json!({"object": "user", "id": "b0t-1d", "name": "credgate", "type": "bot",
                "bot": {"owner": {"type": "workspace", "workspace": true}, "workspace_name": "Acme HQ"}}),
    )
    .into_response()
}

async fn notion_connects_with_a_json_token_request_and_names_the_workspace(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let notion = StandIn::start(
        Router::new()
            .route("/v1/oauth/authorize", get(notion_authorize))
            .route("/v1/oauth/token", post(notion_token))
            .route("/v1/users/me", get(notion_me)),
    )
    .await;
    let app = notion
        .app(
            &db,
            "notion",
            [
                ("AUTHORIZATION_URL", "/v1/oauth/authorize"),
                ("TOKEN_URL", "/v1/oauth/token"),
                ("USERINFO_URL", "/v1/users/me"),
            ],
        )
        .await;

    let back = connect(&app, "notion").await;
    let id = back["credential_id"].clone();
    let (_, credential) = app
        .as_(&app.org.admin)
        .get(&format!("/integrations/credentials/{id}"))
        .await;
    let (status, resolved) = resolve(&app, &id).await;
    let (tested, result) = app
        .as_(&app.org.admin)
        .post(&format!("/integrations/credentials/{id}/test"), json!({}))
        .await;

    assert_eq!(back["result"], "success", "{back:?}");
    assert!(notion.with(|s| s.token_content_types.iter().all(|c| c.starts_with("application/json"))));
    assert!(
        notion.with(|s| s.client_authenticated.iter().all(|ok| *ok)),
        "HTTP Basic"
    );
    assert_eq!(credential["account"]["id"], "ws-acme-1", "{credential}");
    assert_eq!(credential["account"]["display_name"], "Acme HQ");
    assert_eq!(credential["account"]["email"], "ada@acme.example");
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert!(notion.with(|s| s
        .access
        .contains(&resolved["access_token"].as_str().unwrap().to_owned())));
    assert_eq!(tested, StatusCode::OK);
    assert_eq!(result["ok"], true, "{result}");
    assert_eq!(
        notion.with(|s| s.versions.clone()),
        vec![Some("2022-06-28".to_owned())],
        "the identity request carries Notion-Version"
    );
}
crate::both_backends!(notion_connects_with_a_json_token_request_and_names_the_workspace);

// ---- GitHub ----

async fn github_authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut seen = s.lock().unwrap();
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    seen.scope = q.get("scope").cloned();
    if q.get("client_id") != Some(&seen.client_id) {
        return (StatusCode::NOT_FOUND, "unknown client").into_response();
    }
    let code = format!("{:x}", uuid::Uuid::new_v4().as_u128());
    seen.codes
        .insert(code.clone(), q.get("code_challenge").cloned().unwrap_or_default());
    seen.issued.push(code.clone());
    redirect_with(&redirect, &[("code", &code), ("state", &state)])
}

/// Errors are HTTP 200 with `error`; the answer is a form unless JSON is asked for.
async fn github_token(State(s): State<Shared>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mut seen = s.lock().unwrap();
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let json_wanted = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/json"));
    let answer = |doc: Value| -> Response {
        if json_wanted {
            Json(doc).into_response()
        } else {
            let text = doc
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().map_or_else(|| v.to_string(), str::to_owned)))
                .collect::<Vec<_>>()
                .join("&");
            ([("content-type", "application/x-www-form-urlencoded")], text).into_response()
        }
    };
    let authenticated =
        form.get("client_id") == Some(&seen.client_id) && form.get("client_secret") == Some(&seen.client_secret);
    seen.client_authenticated.push(authenticated);
    if !authenticated {
        return answer(json!({"error": "incorrect_client_credentials"}));
    }
    match form.get("grant_type").map(String::as_str) {
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(at) = seen.refresh.iter().position(|r| *r == rt) else {
                return answer(json!({"error": "bad_refresh_token",
                                     "error_description": "The refresh token passed is incorrect or expired."}));
            };
            seen.refresh.remove(at);
            seen.refresh_grants += 1;
        }
        _ => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(challenge) = seen.codes.remove(&code) else {
                return answer(json!({"error": "bad_verification_code",
                                     "error_description": "The code passed is incorrect or expired."}));
            };
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            let derived = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(<sha2::Sha256 as sha2::Digest>::digest(verifier.as_bytes()));
            if !challenge.is_empty() && derived != challenge {
                return answer(json!({"error": "bad_verification_code"}));
            }
        }
    }
    let access = format!("ghu_{}", uuid::Uuid::new_v4().simple());
    let refresh = format!("ghr_{}", uuid::Uuid::new_v4().simple());
    seen.access.push(access.clone());
    seen.refresh.push(refresh.clone());
    seen.issued.extend([access.clone(), refresh.clone()]);
    answer(json!({"access_token": access, "token_type": "bearer", "scope": "",
                  "expires_in": 120, "refresh_token": refresh, "refresh_token_expires_in": 15897600}))
}

async fn github_user(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let seen = s.lock().unwrap();
    if headers.get("user-agent").is_none() {
        return (
            StatusCode::FORBIDDEN,
            "Request forbidden by administrative rules. Please make sure your request has a User-Agent header",
        )
            .into_response();
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("token ")))
        .unwrap_or_default();
    if !seen.access.iter().any(|a| a == token) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    }
    Json(json!({"login": "octocat", "id": 583231, "name": "The Octocat", "email": null})).into_response()
}

/// GitHub: a form token request answered in JSON on request, a numeric
/// account id, and a GitHub App's expiring user token refreshed (a dead
/// refresh token, answered with 200, is `needs_reauth`).
async fn github_connects_names_the_user_and_refreshes_its_expiring_token(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let github = StandIn::start(
        Router::new()
            .route("/login/oauth/authorize", get(github_authorize))
            .route("/login/oauth/access_token", post(github_token))
            .route("/user", get(github_user)),
    )
    .await;
    let app = github
        .app(
            &db,
            "github",
            [
                ("AUTHORIZATION_URL", "/login/oauth/authorize"),
                ("TOKEN_URL", "/login/oauth/access_token"),
                ("USERINFO_URL", "/user"),
            ],
        )
        .await;

    let id = connect(&app, "github").await["credential_id"].clone();
    let (_, credential) = app
        .as_(&app.org.admin)
        .get(&format!("/integrations/credentials/{id}"))
        .await;
    let (status, resolved) = resolve(&app, &id).await;
    github.with(|s| s.refresh.clear());
    let (dead, problem) = resolve(&app, &id).await;

    assert_eq!(credential["account"]["id"], "583231", "{credential}");
    assert_eq!(credential["account"]["display_name"], "octocat");
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(
        github.with(|s| s.refresh_grants),
        1,
        "a 120 s token is refreshed on resolve"
    );
    assert!(github.with(|s| s.access.last().cloned()) == resolved["access_token"].as_str().map(str::to_owned));
    assert_eq!(dead, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "needs_reauth");
}
crate::both_backends!(github_connects_names_the_user_and_refreshes_its_expiring_token);

// ---- HubSpot ----

async fn hubspot_authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut seen = s.lock().unwrap();
    let redirect = q.get("redirect_uri").cloned().unwrap_or_default();
    let state = q.get("state").cloned().unwrap_or_default();
    seen.scope = q.get("scope").cloned();
    let code = format!("hs-{}", uuid::Uuid::new_v4().simple());
    seen.codes.insert(code.clone(), redirect.clone());
    seen.issued.push(code.clone());
    redirect_with(&redirect, &[("code", &code), ("state", &state)])
}

fn hubspot_error(status: &str, message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"status": status, "message": message, "correlationId": "c0rr-1"})),
    )
        .into_response()
}

/// Errors are `{"status": "BAD_REFRESH_TOKEN", …}`; the refresh token stays.
async fn hubspot_token(State(s): State<Shared>, axum::Form(form): axum::Form<HashMap<String, String>>) -> Response {
    let mut seen = s.lock().unwrap();
    let authenticated =
        form.get("client_id") == Some(&seen.client_id) && form.get("client_secret") == Some(&seen.client_secret);
    seen.client_authenticated.push(authenticated);
    if !authenticated {
        return hubspot_error("BAD_CLIENT_ID", "missing or unknown client id");
    }
    let refresh = match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            if seen.codes.remove(&code).is_none() {
                return hubspot_error("BAD_AUTH_CODE", "missing or unknown auth code");
            }
            let refresh = uuid::Uuid::new_v4().to_string();
            seen.refresh.push(refresh.clone());
            seen.issued.push(refresh.clone());
            refresh
        }
        Some("refresh_token") => {
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            if !seen.refresh.contains(&rt) {
                return hubspot_error("BAD_REFRESH_TOKEN", "missing or unknown refresh token");
            }
            seen.refresh_grants += 1;
            rt
        }
        _ => return hubspot_error("BAD_GRANT_TYPE", "unknown grant type"),
    };
    let access = format!("CJ{}", uuid::Uuid::new_v4().simple());
    seen.access.push(access.clone());
    seen.issued.push(access.clone());
    // HubSpot's tokens last 1800 s; 120 s here puts one inside the resolve margin.
    Json(json!({"token_type": "bearer", "refresh_token": refresh, "access_token": access, "expires_in": 120}))
        .into_response()
}

async fn hubspot_details(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let seen = s.lock().unwrap();
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !seen.access.iter().any(|a| a == token) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"status": "error", "category": "INVALID_AUTHENTICATION"})),
        )
            .into_response();
    }
    Json(
        json!({"portalId": 62515, "uiDomain": "app.hubspot.com", "timeZone": "US/Eastern",
                "dataHostingLocation": "na1"}),
    )
    .into_response()
}

/// HubSpot: the refresh token is kept across refreshes, and its own error
/// shape (`BAD_REFRESH_TOKEN`) is read as the grant gone.
async fn hubspot_connects_refreshes_and_reads_its_own_error_shape(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let hubspot = StandIn::start(
        Router::new()
            .route("/oauth/authorize", get(hubspot_authorize))
            .route("/oauth/v1/token", post(hubspot_token))
            .route("/account-info/v3/details", get(hubspot_details)),
    )
    .await;
    let app = hubspot
        .app(
            &db,
            "hubspot",
            [
                ("AUTHORIZATION_URL", "/oauth/authorize"),
                ("TOKEN_URL", "/oauth/v1/token"),
                ("USERINFO_URL", "/account-info/v3/details"),
            ],
        )
        .await;

    let id = connect(&app, "hubspot").await["credential_id"].clone();
    let (_, credential) = app
        .as_(&app.org.admin)
        .get(&format!("/integrations/credentials/{id}"))
        .await;
    let (first, _) = resolve(&app, &id).await;
    let (second, _) = resolve(&app, &id).await;
    hubspot.with(|s| s.refresh.clear());
    let (dead, problem) = resolve(&app, &id).await;

    assert_eq!(
        hubspot.with(|s| s.scope.clone()).as_deref(),
        Some("oauth crm.objects.contacts.read")
    );
    assert_eq!(credential["account"]["id"], "62515", "{credential}");
    assert_eq!((first, second), (StatusCode::OK, StatusCode::OK));
    assert_eq!(
        hubspot.with(|s| s.refresh_grants),
        2,
        "the same refresh token serves twice"
    );
    assert_eq!(dead, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "needs_reauth", "{problem}");
}
crate::both_backends!(hubspot_connects_refreshes_and_reads_its_own_error_shape);

// ---- Google Sheets (Google's stand-in) ----

async fn google_sheets_connects_and_refreshes_like_google(backend: crate::helpers::Backend) {
    use crate::oauth_server::{AuthServer, Flavor};
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    google.with(|i| i.expires_in = 120);
    let app = crate::oauth::oauth_app(&db, &[(&google, "google_sheets")], |_| {}).await;

    let id = connect(&app, "google_sheets").await["credential_id"].clone();
    let (status, resolved) = resolve(&app, &id).await;

    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert_eq!(google.with(|i| i.refresh_grants), 1);
    assert!(google.access_valid(resolved["access_token"].as_str().unwrap()));
}
crate::both_backends!(google_sheets_connects_and_refreshes_like_google);

/// Every provider file that declares `oauth2`, and where it is proven
/// against a stand-in of its service.
const PROVEN: [(&str, &str); 9] = [
    (
        "github",
        "provider_quirks::github_connects_names_the_user_and_refreshes_its_expiring_token",
    ),
    (
        "google",
        "oauth::google_connect_stores_an_active_credential_and_never_shows_a_token",
    ),
    (
        "google_sheets",
        "provider_quirks::google_sheets_connects_and_refreshes_like_google",
    ),
    (
        "hubspot",
        "provider_quirks::hubspot_connects_refreshes_and_reads_its_own_error_shape",
    ),
    (
        "mcp",
        "mcp::an_mcp_server_connects_through_discovery_registration_pkce_and_its_resource",
    ),
    (
        "microsoft",
        "minted::microsoft_delegated_connects_refreshes_with_rotation_and_names_the_account",
    ),
    (
        "notion",
        "provider_quirks::notion_connects_with_a_json_token_request_and_names_the_workspace",
    ),
    ("sharepoint", "refresh (the Microsoft stand-in)"),
    (
        "slack",
        "provider_quirks::slack_connects_with_comma_scopes_names_the_workspace_and_refreshes",
    ),
];

#[test]
fn every_oauth2_provider_file_is_proven_against_a_stand_in() {
    let catalog = credgate::providers::load_catalog(None, &Default::default()).unwrap();
    let mut oauth: Vec<&str> = catalog
        .iter()
        .filter(|p| p.oauth.is_some())
        .map(|p| p.id.as_str())
        .collect();
    oauth.sort_unstable();
    let proven: Vec<&str> = PROVEN.iter().map(|(id, _)| *id).collect();

    assert_eq!(
        oauth, proven,
        "an oauth2 provider file without a stand-in test (or a stale entry)"
    );
}
