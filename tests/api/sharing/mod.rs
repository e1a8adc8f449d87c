//! Personal and shared credentials: `use` < `view` < `manage`, checked in
//! one place for every route, and who used what.

mod audit;
mod listing;
mod matrix;
mod removal;
mod scenarios;

use credgate::api_tokens::NewKey;
use credgate::model::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::helpers::{pg_body, TestApp};

/// A key of the test organization for `user` (or none) with `role`.
pub async fn key(app: &TestApp, role: Role, user: Option<&str>) -> String {
    let user = user.map(|u| credgate::ids::UserId::parse(u).unwrap());
    let new = NewKey {
        user_id: user.as_ref(),
        ..NewKey::default()
    };
    credgate::api_tokens::create(&app.state.store, &app.org.id, role, new)
        .await
        .unwrap()
}

/// Creates a PostgreSQL credential with `key`; returns its id.
pub async fn create(app: &TestApp, key: &str, name: &str, secret: &str) -> String {
    let (status, body) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            key,
            Some(pg_body(name, secret)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

/// Replaces a credential's sharing with `key`.
pub async fn share(app: &TestApp, key: &str, id: &str, team: Value, users: Value) -> StatusCode {
    let body = json!({"team": team, "users": users});
    app.call(
        Method::PUT,
        &format!("/integrations/credentials/{id}/sharing"),
        key,
        Some(body),
    )
    .await
    .0
}

/// `POST …/resolve` with an engine key.
pub async fn resolve_for(app: &TestApp, engine: &str, id: &str, body: Option<Value>) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/integrations/credentials/{id}/resolve"),
        engine,
        body,
    )
    .await
}

/// Is credential `id` on this listing page?
pub fn listed(page: &Value, id: &str) -> bool {
    page["items"].as_array().unwrap().iter().any(|i| i["id"] == id)
}

/// alice and bob (members), an admin (user `root`) and an engine without
/// a user, of the test organization.
pub struct People {
    pub alice: String,
    pub bob: String,
    pub admin: String,
    pub engine: String,
}

impl People {
    pub async fn new(app: &TestApp) -> Self {
        Self {
            alice: key(app, Role::Member, Some("alice")).await,
            bob: key(app, Role::Member, Some("bob")).await,
            admin: key(app, Role::Admin, Some("root")).await,
            engine: key(app, Role::Engine, None).await,
        }
    }
}

/// How bob holds his level on alice's credential: granted to him by name, or
/// the team's level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    User,
    Team,
}

/// The caller's relation to the credential, in the matrix's column order.
pub const LEVELS: [&str; 6] = ["none", "use", "view", "manage", "owner", "admin"];

impl Via {
    /// The levels this way of sharing decides (owner and admin need none).
    pub fn levels(self) -> &'static [&'static str] {
        match self {
            Via::User => &LEVELS,
            Via::Team => &LEVELS[..4],
        }
    }

    /// The sharing (`team`, `users`) that gives bob `level` this way. For
    /// "none" by name, the credential is shared, but with carol.
    pub fn sharing(self, level: &str) -> (Value, Value) {
        match (self, level) {
            (_, "owner" | "admin") | (Via::Team, "none") => (Value::Null, json!([])),
            (Via::User, "none") => (Value::Null, json!([{"user_id": "carol", "access": "manage"}])),
            (Via::User, level) => (Value::Null, json!([{"user_id": "bob", "access": level}])),
            (Via::Team, level) => (json!(level), json!([])),
        }
    }
}

/// `GET /integrations/{provider}/authorize?{query}` with `key`, as JSON.
pub async fn authorize_as(app: &TestApp, key: &str, provider: &str, query: &str) -> (StatusCode, Value) {
    let res = app
        .client
        .get(format!("{}/integrations/{provider}/authorize?{query}", app.base))
        .bearer_auth(key)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Connects an OAuth account through `provider` with `key`; returns the
/// new credential's id.
pub async fn connect_as(app: &TestApp, key: &str, provider: &str) -> String {
    let return_to: String = url::form_urlencoded::byte_serialize(crate::oauth::RETURN_TO.as_bytes()).collect();
    let (status, started) = authorize_as(app, key, provider, &format!("return_to={return_to}")).await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let back = crate::oauth::consent(app, started["authorize_url"].as_str().unwrap()).await;
    let res = crate::oauth::callback(app, &back).await;
    let location = url::Url::parse(res.headers()["location"].to_str().unwrap()).unwrap();
    let id = location.query_pairs().find(|(k, _)| k == "credential_id");
    id.expect("the callback names the credential").1.into_owned()
}

/// The access.denied events in credential `id`'s audit log (read by `key`).
pub async fn denials(app: &TestApp, key: &str, id: &str) -> Vec<Value> {
    let (status, events) = app
        .call(Method::GET, &format!("/integrations/credentials/{id}/audit"), key, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{events}");
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "access.denied")
        .cloned()
        .collect()
}
