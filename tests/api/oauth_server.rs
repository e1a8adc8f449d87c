//! A stand-in authorization server on loopback that behaves as Google's and
//! Microsoft's document: single-use codes bound to `redirect_uri` and the
//! PKCE challenge, client authentication, Google's refresh token on first
//! consent only, Microsoft's rotation on every use with family revocation on
//! reuse, OpenID userinfo or Graph `/me`, and RFC 7009 revocation.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How a held refresh request is answered when released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// As the server would.
    Normal,
    /// `invalid_grant`, whatever the token.
    InvalidGrant,
}

/// Holds refresh requests: the n-th to arrive waits until `release(n, …)`.
#[derive(Default)]
pub struct Gate {
    arrived: std::sync::atomic::AtomicUsize,
    answers: Mutex<HashMap<usize, Answer>>,
    notify: tokio::sync::Notify,
}

impl Gate {
    /// Waits (at most 10 s) until `n` requests arrived.
    pub async fn arrivals(&self, n: usize) {
        for _ in 0..1000 {
            if self.arrived.load(std::sync::atomic::Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} refresh requests never arrived");
    }

    /// Lets the `n`-th request (1-based) go on with `answer`.
    pub fn release(&self, n: usize, answer: Answer) {
        self.answers.lock().unwrap().insert(n, answer);
        self.notify.notify_waiters();
    }

    async fn pass(&self) -> Answer {
        let n = self.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(answer) = self.answers.lock().unwrap().remove(&n) {
                return answer;
            }
            notified.await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Google,
    Microsoft,
}

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
}

impl User {
    pub fn new(n: u32) -> Self {
        Self {
            id: format!("1098{n:08}"),
            email: format!("user{n}@example.com"),
            name: format!("User {n}"),
        }
    }
}

struct Code {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    user: User,
    used: bool,
}

struct Refresh {
    client_id: String,
    user: User,
    family: String,
    used: bool,
}

/// Knobs and records of the stand-in.
pub struct Inner {
    pub flavor: Flavor,
    pub client_id: String,
    pub client_secret: String,
    /// More clients it knows (an organization's own app): id → secret.
    pub other_clients: HashMap<String, String>,
    /// Every token request's grant type and client id, in order.
    pub token_clients: Vec<(String, String)>,
    /// Client ids that revocation requests authenticated as.
    pub revoke_clients: Vec<String>,
    pub basic_auth: bool,
    pub user: User,
    pub deny: bool,
    pub send_iss: Option<String>,
    /// `0`: the answer has no `expires_in` (a token that does not expire).
    pub expires_in: u64,
    /// Written after every access token handed out from now on (a token
    /// longer than the last, as Microsoft's grow with their claims).
    pub token_tail: String,
    /// Sent as `refresh_token_expires_in` with every token (GitHub apps).
    pub refresh_token_expires_in: Option<u64>,
    pub token_delay: Option<Duration>,
    /// Token requests received (counted before `token_delay`).
    pub token_requests: usize,
    /// Holds refresh requests until the test releases them, one by one.
    pub refresh_gate: Option<Arc<Gate>>,
    /// Holds every token answer, once the grant is made (a code used, a
    /// refresh token rotated): a provider whose answer is slow to arrive.
    pub answer_gate: Option<Arc<Gate>>,
    pub token_status: Option<StatusCode>,
    pub identity_status: Option<StatusCode>,
    pub tenant_seen: Option<String>,
    pub consented: HashSet<String>,
    codes: HashMap<String, Code>,
    access: HashMap<String, User>,
    refresh: HashMap<String, Refresh>,
    revoked_families: HashSet<String>,
    /// Every token and code handed out, to look for in logs and responses.
    pub issued: Vec<String>,
    pub revoked: Vec<String>,
    pub refresh_grants: usize,
    pub reuse_detected: usize,
}

#[derive(Clone)]
pub struct AuthServer {
    pub base: String,
    pub inner: Arc<Mutex<Inner>>,
}

impl AuthServer {
    pub async fn start(flavor: Flavor) -> Self {
        let inner = Arc::new(Mutex::new(Inner {
            flavor,
            client_id: format!("client-{}", Uuid::new_v4().simple()),
            client_secret: format!("CLIENTSECRET{}", Uuid::new_v4().simple()),
            other_clients: HashMap::new(),
            token_clients: Vec::new(),
            revoke_clients: Vec::new(),
            basic_auth: false,
            user: User::new(1),
            deny: false,
            send_iss: None,
            expires_in: if flavor == Flavor::Google { 3599 } else { 4493 },
            token_tail: String::new(),
            refresh_token_expires_in: None,
            token_delay: None,
            token_requests: 0,
            refresh_gate: None,
            answer_gate: None,
            token_status: None,
            identity_status: None,
            tenant_seen: None,
            consented: HashSet::new(),
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            revoked_families: HashSet::new(),
            issued: Vec::new(),
            revoked: Vec::new(),
            refresh_grants: 0,
            reuse_detected: 0,
        }));
        let app = Router::new()
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/{tenant}/oauth2/v2.0/authorize", get(authorize_tenant))
            .route("/{tenant}/oauth2/v2.0/token", post(token_tenant))
            .route("/userinfo", get(identity))
            .route("/v1.0/me", get(identity))
            .route("/revoke", post(revoke))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, inner }
    }

    pub fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        f(&mut self.inner.lock().unwrap())
    }

    /// `CREDGATE_PROVIDER_*` overrides pointing `provider` at this server.
    pub fn overrides(&self, provider: &str) -> Vec<(String, String)> {
        let p = provider.to_uppercase();
        let (id, secret, flavor) = self.with(|i| (i.client_id.clone(), i.client_secret.clone(), i.flavor));
        let mut v = vec![
            (format!("CREDGATE_PROVIDER_{p}_CLIENT_ID"), id),
            (format!("CREDGATE_PROVIDER_{p}_CLIENT_SECRET"), secret),
        ];
        match flavor {
            Flavor::Google => {
                v.push((
                    format!("CREDGATE_PROVIDER_{p}_AUTHORIZATION_URL"),
                    format!("{}/authorize", self.base),
                ));
                v.push((
                    format!("CREDGATE_PROVIDER_{p}_TOKEN_URL"),
                    format!("{}/token", self.base),
                ));
                v.push((
                    format!("CREDGATE_PROVIDER_{p}_USERINFO_URL"),
                    format!("{}/userinfo", self.base),
                ));
                v.push((
                    format!("CREDGATE_PROVIDER_{p}_REVOCATION_URL"),
                    format!("{}/revoke", self.base),
                ));
            }
            Flavor::Microsoft => {
                v.push((
                    format!("CREDGATE_PROVIDER_{p}_AUTHORIZATION_URL"),
                    format!("{}/{{tenant}}/oauth2/v2.0/authorize", self.base),
                ));
                v.push((
                    format!("CREDGATE_PROVIDER_{p}_TOKEN_URL"),
                    format!("{}/{{tenant}}/oauth2/v2.0/token", self.base),
                ));
                v.push((
                    format!("CREDGATE_PROVIDER_{p}_USERINFO_URL"),
                    format!("{}/v1.0/me", self.base),
                ));
            }
        }
        v
    }

    /// Revokes every grant (a user removed the app's access).
    pub fn revoke_everything(&self) {
        self.with(|i| {
            let families: Vec<String> = i.refresh.values().map(|r| r.family.clone()).collect();
            i.revoked_families.extend(families);
        });
    }

    /// Is this access token one the server issued and still honours?
    pub fn access_valid(&self, token: &str) -> bool {
        self.with(|i| i.access.contains_key(token))
    }
}

type Shared = Arc<Mutex<Inner>>;

async fn authorize_tenant(
    State(s): State<Shared>,
    Path(tenant): Path<String>,
    q: Query<HashMap<String, String>>,
) -> Response {
    s.lock().unwrap().tenant_seen = Some(tenant);
    authorize(State(s), q).await
}

async fn authorize(State(s): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    let mut i = s.lock().unwrap();
    let bad = |m: &str| (StatusCode::BAD_REQUEST, m.to_owned()).into_response();
    let Some(client_id) = q
        .get("client_id")
        .filter(|c| **c == i.client_id || i.other_clients.contains_key(*c))
    else {
        return bad("unknown client");
    };
    if q.get("response_type").map(String::as_str) != Some("code")
        || q.get("code_challenge_method").map(String::as_str) != Some("S256")
    {
        return bad("S256 PKCE and response_type=code required");
    }
    let (Some(redirect), Some(state), Some(challenge)) =
        (q.get("redirect_uri"), q.get("state"), q.get("code_challenge"))
    else {
        return bad("missing parameters");
    };
    let mut target = url::Url::parse(redirect).unwrap();
    if i.deny {
        target
            .query_pairs_mut()
            .append_pair("error", "access_denied")
            .append_pair("state", state);
    } else {
        let code = format!("CODE-{}", Uuid::new_v4().simple());
        i.issued.push(code.clone());
        let user = i.user.clone();
        i.codes.insert(
            code.clone(),
            Code {
                client_id: client_id.clone(),
                redirect_uri: redirect.clone(),
                challenge: challenge.clone(),
                user,
                used: false,
            },
        );
        target
            .query_pairs_mut()
            .append_pair("code", &code)
            .append_pair("state", state);
    }
    if let Some(iss) = &i.send_iss {
        target.query_pairs_mut().append_pair("iss", iss);
    }
    Redirect::to(target.as_str()).into_response()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, Json(json!({"error": error, "error_description": description}))).into_response()
}

/// The client that authenticated, if one did.
fn client_ok(i: &Inner, headers: &HeaderMap, form: &HashMap<String, String>) -> Option<String> {
    let clients = std::iter::once((&i.client_id, &i.client_secret)).chain(i.other_clients.iter());
    for (id, secret) in clients {
        let ok = if i.basic_auth {
            let expected = format!("Basic {}", STANDARD.encode(format!("{id}:{secret}")));
            headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str())
        } else {
            form.get("client_id") == Some(id) && form.get("client_secret") == Some(secret)
        };
        if ok {
            return Some(id.clone());
        }
    }
    None
}

fn access_token(i: &mut Inner, user: &User) -> String {
    let token = match i.flavor {
        Flavor::Google => format!("ya29.AT-{}", Uuid::new_v4().simple()),
        Flavor::Microsoft => {
            let claims = json!({"tid": "72f988bf-86f1-41af-91ab-2d7cd011db47", "oid": user.id, "jti": Uuid::new_v4().to_string()});
            format!(
                "eyJ0eXAiOiJKV1QifQ.{}.AT-{}",
                URL_SAFE_NO_PAD.encode(claims.to_string()),
                Uuid::new_v4().simple()
            )
        }
    };
    let token = format!("{token}{}", i.token_tail);
    i.access.insert(token.clone(), user.clone());
    i.issued.push(token.clone());
    token
}

async fn token_tenant(
    State(s): State<Shared>,
    Path(_tenant): Path<String>,
    headers: HeaderMap,
    form: Form<HashMap<String, String>>,
) -> Response {
    token(State(s), headers, form).await
}

async fn token(State(s): State<Shared>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> Response {
    let answer = token_answer(s.clone(), headers, form).await;
    let held = s.lock().unwrap().answer_gate.clone();
    if let Some(gate) = held {
        gate.pass().await;
    }
    answer
}

async fn token_answer(s: Shared, headers: HeaderMap, form: HashMap<String, String>) -> Response {
    let gate = s.lock().unwrap().refresh_gate.clone();
    if let (Some(gate), Some("refresh_token")) = (gate, form.get("grant_type").map(String::as_str)) {
        if gate.pass().await == Answer::InvalidGrant {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "the refresh token is not valid",
            );
        }
    }
    let delay = {
        let mut i = s.lock().unwrap();
        i.token_requests += 1;
        i.token_delay
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let mut i = s.lock().unwrap();
    if let Some(status) = i.token_status {
        let mut r = oauth_error(status, "temporarily_unavailable", "try later");
        if status == StatusCode::TOO_MANY_REQUESTS {
            r.headers_mut().insert("retry-after", "2".parse().unwrap());
        }
        return r;
    }
    let Some(client) = client_ok(&i, &headers, &form) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client authentication failed",
        );
    };
    let grant_type = form.get("grant_type").cloned().unwrap_or_default();
    i.token_clients.push((grant_type, client.clone()));
    match form.get("grant_type").map(String::as_str) {
        Some("authorization_code") => {
            let code = form.get("code").cloned().unwrap_or_default();
            let Some(grant) = i.codes.get_mut(&code) else {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "unknown code");
            };
            if grant.used {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "code already used");
            }
            grant.used = true;
            if grant.client_id != client {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "the code was issued to another client",
                );
            }
            if form.get("redirect_uri") != Some(&grant.redirect_uri) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri mismatch");
            }
            let verifier = form.get("code_verifier").cloned().unwrap_or_default();
            if URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) != grant.challenge {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "code_verifier does not match");
            }
            let user = grant.user.clone();
            let at = access_token(&mut i, &user);
            let mut body = json!({"access_token": at, "token_type": "Bearer", "expires_in": i.expires_in,
                                  "scope": "openid email profile https://www.googleapis.com/auth/drive.readonly"});
            if i.expires_in == 0 {
                // An access token that does not expire (Slack's, Notion's).
                body.as_object_mut().unwrap().remove("expires_in");
            }
            if let Some(n) = i.refresh_token_expires_in {
                body["refresh_token_expires_in"] = json!(n);
            }
            let first_consent = i.consented.insert(user.id.clone());
            if i.flavor == Flavor::Microsoft || first_consent {
                let rt = format!("RT-{}", Uuid::new_v4().simple());
                i.refresh.insert(
                    rt.clone(),
                    Refresh {
                        client_id: client.clone(),
                        user,
                        family: Uuid::new_v4().to_string(),
                        used: false,
                    },
                );
                i.issued.push(rt.clone());
                body["refresh_token"] = json!(rt);
            }
            if i.flavor == Flavor::Microsoft {
                body["scope"] = json!("User.Read Sites.Read.All Files.Read.All");
            }
            Json(body).into_response()
        }
        Some("refresh_token") => {
            i.refresh_grants += 1;
            let rt = form.get("refresh_token").cloned().unwrap_or_default();
            let Some(r) = i.refresh.get(&rt) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "AADSTS70000: unknown refresh token",
                );
            };
            let (user, family, used) = (r.user.clone(), r.family.clone(), r.used);
            if r.client_id != client {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "AADSTS70000: the refresh token was issued to another client",
                );
            }
            if i.revoked_families.contains(&family) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "AADSTS70008: the refresh token was revoked",
                );
            }
            if used {
                // Reuse of a rotated token: revoke the whole family (RFC 9700 §4.14).
                i.reuse_detected += 1;
                i.revoked_families.insert(family);
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "AADSTS70008: refresh token reuse detected",
                );
            }
            let at = access_token(&mut i, &user);
            let mut body = json!({"access_token": at, "token_type": "Bearer", "expires_in": i.expires_in});
            if i.expires_in == 0 {
                // An access token that does not expire (Slack's, Notion's).
                body.as_object_mut().unwrap().remove("expires_in");
            }
            if let Some(n) = i.refresh_token_expires_in {
                body["refresh_token_expires_in"] = json!(n);
            }
            if i.flavor == Flavor::Microsoft {
                i.refresh.get_mut(&rt).unwrap().used = true;
                let new_rt = format!("RT-{}", Uuid::new_v4().simple());
                i.refresh.insert(
                    new_rt.clone(),
                    Refresh {
                        client_id: client.clone(),
                        user,
                        family,
                        used: false,
                    },
                );
                i.issued.push(new_rt.clone());
                body["refresh_token"] = json!(new_rt);
            }
            Json(body).into_response()
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type", "grant type"),
    }
}

async fn identity(State(s): State<Shared>, headers: HeaderMap) -> Response {
    let i = s.lock().unwrap();
    if let Some(status) = i.identity_status {
        return (status, Json(json!({"error": {"code": "InternalServerError"}}))).into_response();
    }
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Some(user) = i.access.get(token) else {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_token"}))).into_response();
    };
    let body: Value = match i.flavor {
        Flavor::Google => json!({"sub": user.id, "email": user.email, "email_verified": true, "name": user.name}),
        Flavor::Microsoft => json!({"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#users/$entity",
            "id": user.id, "mail": null, "userPrincipalName": user.email, "displayName": user.name}),
    };
    Json(body).into_response()
}

async fn revoke(State(s): State<Shared>, headers: HeaderMap, Form(form): Form<HashMap<String, String>>) -> StatusCode {
    let mut i = s.lock().unwrap();
    if let Some(client) = client_ok(&i, &headers, &form) {
        i.revoke_clients.push(client);
    }
    if let Some(t) = form.get("token") {
        i.revoked.push(t.clone());
        i.access.remove(t);
        // Revoking a refresh token ends its grant (RFC 7009 §2.1).
        if let Some(family) = i.refresh.get(t).map(|r| r.family.clone()) {
            i.revoked_families.insert(family);
        }
    }
    StatusCode::OK
}
