//! Remote MCP servers: discovery (RFC 9728, RFC 8414), dynamic registration
//! (RFC 7591), PKCE and the resource indicator (RFC 8707), against the MCP
//! Python SDK's own authorization-server routes (`mcp_server.py`, installed
//! by `scripts/install-test-deps.sh`); and hostile or broken metadata
//! against a loopback stand-in, each a 422 naming `server_url`.

use std::process::{Child, ChildStdin};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{captured_logs, test_config, TestApp, TestDb};
use crate::oauth::RETURN_TO;

/// The SDK's authorization server and an MCP endpoint at `{base}/mcp`.
pub struct McpServer {
    pub base: String,
    _child: Child,
    _stdin: ChildStdin,
}

impl McpServer {
    pub fn start() -> Self {
        let (base, child, stdin) = crate::helpers::python_stand_in("mcp_server.py");
        Self {
            base,
            _child: child,
            _stdin: stdin,
        }
    }

    pub fn url(&self) -> String {
        format!("{}/mcp", self.base)
    }

    pub async fn state(&self) -> Value {
        reqwest::get(format!("{}/_test/state", self.base))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

fn encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

async fn mcp_app(db: &TestDb, tweak: impl FnOnce(&mut credgate::config::Config)) -> TestApp {
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    config.allowed_return_urls = vec!["https://app.example.com/".into()];
    tweak(&mut config);
    TestApp::spawn_with(config).await
}

/// `GET /integrations/mcp/authorize` as JSON with `key`.
async fn authorize(app: &TestApp, key: &str, query: &str) -> (StatusCode, Value) {
    let res = app
        .client
        .get(format!("{}/integrations/mcp/authorize?{query}", app.base))
        .bearer_auth(key)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    (res.status(), res.json().await.unwrap())
}

/// The browser at the authorization server (which approves at once), then
/// back at credgate's callback; returns where credgate sent it.
async fn approve(app: &TestApp, authorize_url: &str) -> std::collections::HashMap<String, String> {
    let at_server = app.client.get(authorize_url).send().await.unwrap();
    assert_eq!(
        at_server.status(),
        StatusCode::FOUND,
        "{}",
        at_server.text().await.unwrap()
    );
    let back = at_server.headers()["location"].to_str().unwrap().to_owned();
    let done = app.client.get(&back).send().await.unwrap();
    assert_eq!(done.status(), StatusCode::FOUND);
    query_of(done.headers()["location"].to_str().unwrap())
}

async fn an_mcp_server_connects_through_discovery_registration_pkce_and_its_resource(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let server = McpServer::start();
    let app = mcp_app(&db, |_| {}).await;
    let query = format!(
        "server_url={}&return_to={}&name=Tools",
        encode(&server.url()),
        encode(RETURN_TO)
    );

    let (status, started) = authorize(&app, &app.org.member, &query).await;
    let asked = query_of(started["authorize_url"].as_str().unwrap());
    let done = approve(&app, started["authorize_url"].as_str().unwrap()).await;
    let id = done["credential_id"].clone();
    let (_, view) = app
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
    let token = resolved["access_token"].as_str().unwrap().to_owned();
    let with_token = app.client.get(server.url()).bearer_auth(&token).send().await.unwrap();
    let with_token_status = with_token.status();
    let seen_by_server: Value = with_token.json().await.unwrap();
    let (_, tested) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.admin,
            None,
        )
        .await;
    // Again in the same organization: the registration is reused.
    let (_, again) = authorize(&app, &app.org.member, &query).await;
    let other = app.new_org("Other").await;
    let (_, other_started) = authorize(&app, &other.member, &query).await;
    // The access token runs out: a refresh, for the same resource.
    reqwest::Client::new()
        .post(format!("{}/_test/expire_access_tokens", server.base))
        .send()
        .await
        .unwrap();
    let (refreshed, _) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/refresh"),
            &app.org.admin,
            None,
        )
        .await;
    let (_, resolved_again) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/resolve"),
            &app.org.engine,
            None,
        )
        .await;
    let new_token = resolved_again["access_token"].as_str().unwrap().to_owned();
    let new_token_status = app
        .client
        .get(server.url())
        .bearer_auth(&new_token)
        .send()
        .await
        .unwrap()
        .status();
    let (deleted, _) = app
        .call(
            Method::DELETE,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let state = server.state().await;
    let sql = app.sql().await;
    let registrations: Vec<(String, String)> = sqlx::query_as("SELECT org_id, app FROM oauth_apps ORDER BY org_id")
        .fetch_all(&sql)
        .await
        .unwrap();

    assert_eq!(status, StatusCode::OK, "{started}");
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(asked["resource"], server.url(), "RFC 8707");
    assert_eq!(asked["scope"], "mcp:tools", "the server's advertised scope");
    let registered = &state["registrations"][0];
    assert_eq!(asked["client_id"], registered["client_id"].as_str().unwrap());
    assert_eq!(registered["client_name"], "credgate");
    assert_eq!(
        registered["redirect_uris"][0],
        format!("{}/integrations/mcp/callback", app.base)
    );
    assert_eq!(done["result"], "success", "{done:?}");
    assert_eq!(view["provider"], "mcp");
    assert_eq!(view["status"], "active");
    assert_eq!(view["account"]["id"], server.url());
    assert_eq!(view["fields"]["server_url"], server.url());
    assert_eq!(view["scopes"], json!(["mcp:tools"]));
    assert_eq!(with_token_status, StatusCode::OK);
    assert_eq!(seen_by_server["resource"], server.url(), "{seen_by_server}");
    assert_eq!(tested["ok"], true, "{tested}");
    assert_eq!(
        query_of(again["authorize_url"].as_str().unwrap())["client_id"],
        asked["client_id"],
        "one registration per authorization server and organization"
    );
    assert_ne!(
        query_of(other_started["authorize_url"].as_str().unwrap())["client_id"],
        asked["client_id"],
        "another organization registers on its own"
    );
    assert_eq!(state["registrations"].as_array().unwrap().len(), 2);
    assert_eq!(registrations.len(), 2, "{registrations:?}");
    assert!(registrations.iter().all(|(_, a)| *a == format!("mcp:{}", server.base)));
    let grants: Vec<(&str, &str)> = state["token_requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["grant_type"].as_str().unwrap(), t["resource"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        grants,
        vec![
            ("authorization_code", server.url().as_str()),
            ("refresh_token", server.url().as_str())
        ]
    );
    assert_eq!(refreshed, StatusCode::OK);
    assert_ne!(new_token, token);
    assert_eq!(new_token_status, StatusCode::OK);
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(
        state["revoked"].as_array().unwrap().len(),
        1,
        "deleting revokes the grant: {state}"
    );
    let logs = captured_logs();
    for issued in state["issued"].as_array().unwrap() {
        let issued = issued.as_str().unwrap();
        assert!(!logs.contains(issued), "a token or code in the logs");
        assert!(!view.to_string().contains(issued));
    }
}
both_backends!(an_mcp_server_connects_through_discovery_registration_pkce_and_its_resource);

async fn two_first_connects_at_once_share_one_registration(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let server = McpServer::start();
    let app = mcp_app(&db, |_| {}).await;
    let query = format!("server_url={}&return_to={}", encode(&server.url()), encode(RETURN_TO));

    let ((_, a), (_, b)) = tokio::join!(
        authorize(&app, &app.org.member, &query),
        authorize(&app, &app.org.admin, &query)
    );
    let a_done = approve(&app, a["authorize_url"].as_str().unwrap()).await;
    let b_done = approve(&app, b["authorize_url"].as_str().unwrap()).await;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oauth_apps")
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    assert_eq!(
        query_of(a["authorize_url"].as_str().unwrap())["client_id"],
        query_of(b["authorize_url"].as_str().unwrap())["client_id"]
    );
    assert_eq!(stored, 1);
    assert_eq!(a_done["result"], "success", "{a_done:?}");
    assert_eq!(b_done["result"], "success", "{b_done:?}");
}
both_backends!(two_first_connects_at_once_share_one_registration);

/// What the hostile stand-in serves.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Hostile {
    NoMetadata,
    HtmlMetadata,
    HugeMetadata,
    OtherResource,
    MetadataAtPrivateAddress,
    IssuerMismatch,
    NoPkce,
    NoRegistration,
    TokenEndpointPrivate,
    RegistrationFails,
    Slow,
}

async fn hostile(kind: Hostile) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let b = base.clone();
    let mcp = move || {
        let b = b.clone();
        async move {
            let metadata = if kind == Hostile::MetadataAtPrivateAddress {
                "http://169.254.169.254/latest/meta-data".to_owned()
            } else {
                format!("{b}/.well-known/oauth-protected-resource/mcp")
            };
            let mut headers = HeaderMap::new();
            headers.insert(
                "www-authenticate",
                format!(r#"Bearer error="invalid_token", resource_metadata="{metadata}""#)
                    .parse()
                    .unwrap(),
            );
            (AxumStatus::UNAUTHORIZED, headers, "{}").into_response()
        }
    };
    let b = base.clone();
    let resource = move || {
        let b = b.clone();
        async move {
            match kind {
                Hostile::NoMetadata => AxumStatus::NOT_FOUND.into_response(),
                Hostile::HtmlMetadata => "<html>hello</html>".into_response(),
                Hostile::HugeMetadata => "x".repeat(1 << 20).into_response(),
                Hostile::Slow => {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    "{}".into_response()
                }
                Hostile::OtherResource => Json(json!({"resource": "https://elsewhere.example/mcp",
                    "authorization_servers": [b]}))
                .into_response(),
                _ => Json(json!({"resource": format!("{b}/mcp"), "authorization_servers": [b]})).into_response(),
            }
        }
    };
    let b = base.clone();
    let server = move || {
        let b = b.clone();
        async move {
            let mut doc = json!({
                "issuer": b, "authorization_endpoint": format!("{b}/authorize"),
                "token_endpoint": format!("{b}/token"), "registration_endpoint": format!("{b}/register"),
                "code_challenge_methods_supported": ["S256"], "token_endpoint_auth_methods_supported": ["client_secret_post"]
            });
            match kind {
                Hostile::IssuerMismatch => doc["issuer"] = json!("https://impostor.example"),
                Hostile::NoPkce => {
                    doc.as_object_mut().unwrap().remove("code_challenge_methods_supported");
                }
                Hostile::NoRegistration => {
                    doc.as_object_mut().unwrap().remove("registration_endpoint");
                }
                Hostile::TokenEndpointPrivate => doc["token_endpoint"] = json!("http://10.1.2.3/token"),
                _ => {}
            }
            Json(doc).into_response()
        }
    };
    let register = move || async move {
        if kind == Hostile::RegistrationFails {
            (AxumStatus::INTERNAL_SERVER_ERROR, "boom").into_response()
        } else {
            (
                AxumStatus::CREATED,
                Json(json!({"client_id": "c1", "client_secret": "s1"})),
            )
                .into_response()
        }
    };
    let app: Router = Router::new()
        .route("/mcp", get(mcp))
        .route("/.well-known/oauth-protected-resource/mcp", get(resource))
        .route("/.well-known/oauth-authorization-server", get(server))
        .route("/register", post(register));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn hostile_or_broken_mcp_metadata_is_a_422_naming_server_url_and_stores_nothing(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = mcp_app(&db, |c| c.provider_timeout_secs = 2).await;
    let closed = format!("http://{}/mcp", crate::ports::unused_addr());
    let mut cases: Vec<(String, String, &str)> = vec![
        ("not a URL".into(), "ftp://x.example/mcp".into(), "http or https"),
        ("nothing listening".into(), closed, "could not be reached"),
        ("a private address".into(), "http://10.9.8.7/mcp".into(), "not allowed"),
    ];
    for (kind, words) in [
        (Hostile::NoMetadata, "no protected-resource metadata"),
        (Hostile::HtmlMetadata, "not a JSON document"),
        (Hostile::HugeMetadata, "64 KiB"),
        (Hostile::OtherResource, "another resource"),
        (Hostile::MetadataAtPrivateAddress, "not allowed"),
        (Hostile::IssuerMismatch, "another issuer"),
        (Hostile::NoPkce, "PKCE"),
        (Hostile::NoRegistration, "dynamic client registration"),
        (Hostile::TokenEndpointPrivate, "not allowed"),
        (Hostile::RegistrationFails, "refused to register"),
        (Hostile::Slow, "in time"),
    ] {
        cases.push((format!("{kind:?}"), format!("{}/mcp", hostile(kind).await), words));
    }

    let mut seen = Vec::new();
    for (case, url, _) in &cases {
        let query = format!("server_url={}", encode(url));
        seen.push((case.clone(), authorize(&app, &app.org.member, &query).await));
    }
    let (missing, missing_problem) = authorize(&app, &app.org.member, "").await;
    let sql = app.sql().await;
    let apps: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oauth_apps")
        .fetch_one(&sql)
        .await
        .unwrap();
    let states: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oauth_states")
        .fetch_one(&sql)
        .await
        .unwrap();

    for ((case, (status, problem)), (_, _, words)) in seen.iter().zip(&cases) {
        assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{case}: {problem}");
        assert_eq!(problem["errors"][0]["field"], "server_url", "{case}: {problem}");
        let message = problem["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(words), "{case}: {message}");
        assert!(
            !message.contains("10.1.2.3") && !message.contains("169.254"),
            "{case}: {message}"
        );
    }
    assert_eq!(missing, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(missing_problem["errors"][0]["field"], "server_url");
    assert_eq!(apps, 0, "no registration kept from a failed discovery");
    assert_eq!(states, 0, "no flow started");
}
both_backends!(hostile_or_broken_mcp_metadata_is_a_422_naming_server_url_and_stores_nothing);

async fn the_connect_page_has_an_mcp_card_that_asks_for_the_server_url(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let server = McpServer::start();
    let app = mcp_app(&db, |_| {}).await;
    let url = crate::pages::open_session(&app, &app.org.admin, json!({"user_id": "u-3", "purpose": "connect"})).await;
    let (cookie, csrf) = crate::pages::sessions::cookie_and_csrf(&app, &url, "/connect").await;
    let index = app
        .client
        .get(format!("{}/connect", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let card = app
        .client
        .get(format!("{}/connect/mcp", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let started = app
        .client
        .get(format!(
            "{}/connect/mcp/oauth?csrf={csrf}&server_url={}",
            app.base,
            encode(&server.url())
        ))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let location = started.headers()["location"].to_str().unwrap().to_owned();
    let at_server = app.client.get(&location).send().await.unwrap();
    let back = at_server.headers()["location"].to_str().unwrap().to_owned();
    let result_page = app.client.get(&back).send().await.unwrap();
    let result_status = result_page.status();
    let (_, listed) = app
        .call(
            Method::GET,
            "/integrations/credentials?provider=mcp",
            &app.org.admin,
            None,
        )
        .await;

    assert!(index.contains("/connect/mcp"), "the MCP card is listed");
    assert!(card.contains(r#"name="server_url""#), "{card}");
    assert!(location.starts_with(&server.base), "{location}");
    assert_eq!(query_of(&location)["resource"], server.url());
    assert_eq!(result_status, StatusCode::OK);
    assert_eq!(listed["total"], 1, "{listed}");
    assert_eq!(listed["items"][0]["owner"], "u-3", "the page's user owns it");
}
both_backends!(the_connect_page_has_an_mcp_card_that_asks_for_the_server_url);
