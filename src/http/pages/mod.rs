//! The hosted pages a person sees in a browser: `/connect` (connect an
//! account) and `/manage` (their credentials, and the organization's
//! secrets by name at `/manage/secrets`). Server-rendered (maud), with
//! one small script and one stylesheet of our own served from here: no CDN,
//! no build step.
//!
//! A page session (see [`crate::sessions`]) is opened by its one-time URL
//! (`?session=…`), which is traded for an HttpOnly, SameSite=Strict cookie
//! scoped to the page's path, and the browser is sent on to a URL without
//! the token. Every page acts as the session's user through the domain
//! layer. Every state-changing request carries the session's CSRF token and,
//! when the browser sends one, a same-origin `Origin`.

mod connect;
mod delete;
mod detail;
mod done;
mod edit;
mod form;
mod layout;
mod manage;
mod oauth_result;
mod popup;
mod secrets;

pub use oauth_result::result_page;

use axum::extract::{FromRequest, FromRequestParts, Request};
use std::net::IpAddr;

use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
use secrecy::{ExposeSecret, SecretString};

use super::AppState;
use crate::ids::CredentialId;
use crate::oauth::return_to::allowed_origins;
use crate::sessions::{self, PageSession, Purpose};

/// The page routes (not part of the API document).
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/pages/assets/app.js", get(script))
        .route("/pages/assets/app.css", get(stylesheet))
        .merge(connect::router())
        .merge(manage::router())
        .merge(delete::router())
        .merge(done::router())
        .merge(detail::router())
        .merge(edit::router())
        .merge(popup::router())
        .merge(secrets::router())
}

/// A credential named in a page's path: a path that is not a credential
/// id is the page's "not found".
#[derive(Debug)]
pub struct CredentialPath(pub CredentialId);

impl FromRequestParts<AppState> for CredentialPath {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        CredentialId::parse(&raw)
            .map(CredentialPath)
            .map_err(|_| failure(state, &crate::error::Error::NotFound).into_response())
    }
}

const SCRIPT: &str = include_str!("assets/app.js");
const STYLESHEET: &str = include_str!("assets/app.css");

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

fn cookie_name(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Connect => "credgate_connect",
        Purpose::Manage => "credgate_manage",
    }
}

/// The pages' HTML response: the headers every page carries (a strict CSP
/// whose `frame-ancestors` are the allowed return origins, no caching, no
/// Referer).
pub struct Html {
    status: StatusCode,
    markup: Markup,
    frame_ancestors: String,
    cookie: Option<String>,
}

impl Html {
    pub(super) fn new(state: &AppState, status: StatusCode, markup: Markup) -> Self {
        let origins = allowed_origins(&state.config.allowed_return_urls);
        let frame_ancestors = if origins.is_empty() {
            "'none'".to_owned()
        } else {
            origins.join(" ")
        };
        Self {
            status,
            markup,
            frame_ancestors,
            cookie: None,
        }
    }
}

impl IntoResponse for Html {
    fn into_response(self) -> Response {
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             form-action 'self'; base-uri 'none'; frame-ancestors {}",
            self.frame_ancestors
        );
        let mut response = (self.status, self.markup.into_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        if let Ok(v) = HeaderValue::from_str(&csp) {
            headers.insert(header::CONTENT_SECURITY_POLICY, v);
        }
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // The page that opens a link still has the token in its URL: it
        // sends no Referer at all. The others send one to credgate only, so
        // that the browser sends a real `Origin` with their forms (under
        // `no-referrer` it sends `Origin: null`).
        let referrer = if self.cookie.is_some() {
            "no-referrer"
        } else {
            "same-origin"
        };
        headers.insert(header::REFERRER_POLICY, HeaderValue::from_static(referrer));
        headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        if let Some(cookie) = self.cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
            headers.insert(header::SET_COOKIE, cookie);
        }
        response
    }
}

/// A page in a session: 200 with the given markup.
pub fn ok(state: &AppState, markup: Markup) -> Html {
    Html::new(state, StatusCode::OK, markup)
}

/// A page that says, in words, why nothing can be shown.
pub fn refusal(state: &AppState, status: StatusCode, title: &str, words: &str) -> Html {
    Html::new(
        state,
        status,
        layout::bare(title, html! { p.notice.bad role="alert" { (words) } }),
    )
}

fn expired(state: &AppState) -> Html {
    refusal(
        state,
        StatusCode::FORBIDDEN,
        "This link has expired or was already used",
        "For your safety, each link to this page opens only once and for a limited time. \
         Go back to the application that sent you here and open the page again from there.",
    )
}

/// Why a page request has no session.
pub struct NoSession(Html);

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        self.0.into_response()
    }
}

/// The session a page request runs in, from its cookie (the path says
/// which: `/connect…` or `/manage…`).
pub struct Session(pub PageSession);

impl std::ops::Deref for Session {
    type Target = PageSession;
    fn deref(&self) -> &PageSession {
        &self.0
    }
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<SecretString> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| SecretString::from(v.to_owned()))
}

impl FromRequestParts<AppState> for Session {
    type Rejection = NoSession;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let purpose = if parts.uri.path().starts_with("/manage") {
            Purpose::Manage
        } else {
            Purpose::Connect
        };
        let ip = crate::http::auth::client_ip(parts, &state.trusted_proxies);
        session_from(state, &parts.headers, ip, purpose).await.map(Session)
    }
}

/// The live session of `purpose` whose cookie `headers` carry. A cookie
/// that names no live session counts as a failed authentication of `ip`.
pub async fn session_from(
    state: &AppState,
    headers: &HeaderMap,
    ip: IpAddr,
    purpose: Purpose,
) -> Result<PageSession, NoSession> {
    let cookie = cookie_value(headers, cookie_name(purpose)).ok_or_else(|| NoSession(expired(state)))?;
    match sessions::current(state, &cookie).await {
        Ok(Some(session)) if session.purpose == purpose => Ok(session),
        Ok(_) => Err(NoSession(unknown(state, ip))),
        Err(e) => Err(NoSession(failure(state, &e))),
    }
}

/// The answer to an unknown link or cookie: the words for an expired
/// session, or, once `ip` has failed too often, a 429 page (the same limit
/// as failed API keys, so guessing is slow).
fn unknown(state: &AppState, ip: IpAddr) -> Html {
    match state.limits.check_auth_failure(ip) {
        Ok(()) => expired(state),
        Err(_) => refusal(
            state,
            StatusCode::TOO_MANY_REQUESTS,
            "Too many attempts",
            "Too many links that do not open came from your address. Wait a minute, then open the page again \
             from the application that sent you here.",
        ),
    }
}

/// A domain failure as a page (a store outage, a bug): words, no details.
pub fn failure(state: &AppState, e: &crate::error::Error) -> Html {
    if matches!(e, crate::error::Error::Internal(_)) {
        tracing::error!(error = %e, "page failed");
    }
    let status = match e {
        crate::error::Error::StoreUnavailable(_) | crate::error::Error::MasterKeyMissing { .. } => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        crate::error::Error::NotFound => StatusCode::NOT_FOUND,
        crate::error::Error::Forbidden => StatusCode::FORBIDDEN,
        crate::error::Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        _ => StatusCode::CONFLICT,
    };
    refusal(state, status, "This did not work", &layout::words(e))
}

/// Is this state-changing request from the page itself? The session's CSRF
/// token (a form field or the `X-CSRF-Token` header) must match, and an
/// `Origin`, when sent, must be credgate's own.
pub fn same_page(state: &AppState, session: &PageSession, headers: &HeaderMap, form_token: Option<&str>) -> bool {
    let own = url::Url::parse(&state.config.public_url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default();
    let origin_ok = headers
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|o| o == own);
    let token = headers
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
        .or(form_token)
        .unwrap_or("");
    origin_ok && session.csrf_ok(token)
}

/// A state-changing request from a page, checked: its session (from the
/// cookie), and its form, whose CSRF token (or `X-CSRF-Token` header) and
/// `Origin` passed [`same_page`]. Every page POST takes this, so none can
/// forget the check.
pub struct Posted {
    pub session: PageSession,
    pub form: Vec<(String, String)>,
}

impl FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (mut parts, body) = req.into_parts();
        let Session(session) = Session::from_request_parts(&mut parts, state)
            .await
            .map_err(IntoResponse::into_response)?;
        let bytes = axum::body::to_bytes(body, super::MAX_BODY_BYTES)
            .await
            .map_err(|_| forged(state).into_response())?;
        let form = form::pairs(&bytes);
        if !same_page(state, &session, &parts.headers, form::value(&form, "csrf")) {
            return Err(forged(state).into_response());
        }
        Ok(Self { session, form })
    }
}

/// The refusal for a request that fails [`same_page`].
pub fn forged(state: &AppState) -> Html {
    refusal(
        state,
        StatusCode::FORBIDDEN,
        "This request was refused",
        "It did not come from this page (its security token is missing or wrong). Reload the page and try again.",
    )
}

/// `GET /connect?session=…` and `GET /manage?session=…`: trades the URL's
/// one-time token for the cookie and moves on to the page without the
/// token. `None`: no token in the URL.
///
/// The move is made by the page's script (`location.replace`), not by a
/// redirect: a redirect would continue the navigation the calling platform
/// started, which is cross-site, so the browser would withhold the
/// SameSite=Strict cookie from the next page; a navigation the page starts
/// itself is same-site. It also drops the token from the history.
pub async fn enter(state: &AppState, ip: IpAddr, purpose: Purpose, token: Option<&str>) -> Option<Response> {
    let token = token?;
    let (session, cookie) = match sessions::enter(state, token, purpose).await {
        Ok(Some((session, cookie))) if session.purpose == purpose => (session, cookie),
        Ok(_) => return Some(unknown(state, ip).into_response()),
        Err(e) => return Some(failure(state, &e).into_response()),
    };
    let secure = if state.config.public_url.starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let max_age = (session.expires_at - state.now()).max(0);
    let set_cookie = format!(
        "{}={}; Path=/{}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}",
        cookie_name(purpose),
        cookie.expose_secret(),
        purpose.as_str(),
    );
    let next = match (&session.credential_id, purpose) {
        (Some(id), Purpose::Manage) => format!("/manage/credentials/{id}"),
        _ => format!("/{}", purpose.as_str()),
    };
    let body = html! {
        div #continue data-next=(next) {
            p { "Opening your page…" }
            p { a.button.primary href=(next) { "Continue" } }
        }
    };
    let mut html = Html::new(state, StatusCode::OK, layout::bare("Opening", body));
    html.cookie = Some(set_cookie);
    Some(html.into_response())
}
