//! The HTTP API: one module per resource, each with its own `router()`,
//! merged here with the middleware every request passes through.

pub mod auth;
pub mod credentials;
pub mod error;
mod events;
pub mod extract;
mod oauth;
mod oauth_apps;
mod openapi;
pub mod ops;
mod pages;
mod probes;
mod providers;
mod proxy;
pub mod ratelimit;
mod schemas;
mod secrets;
pub mod serve;
mod sessions;
mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use crate::context::Context;
use crate::metrics::{RequestLabels, RouteLabels};
use error::{ApiError, LoggedError};
use ratelimit::RateLimits;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Everything a handler can reach: the domain context, and what only
/// HTTP needs (rate limits, the API key cache), in one allocation that
/// every request shares. Cloning it (axum does, for each request's
/// extractors and middleware) counts one reference; cloning the parts took
/// about 30 (6 % of credgate's samples during resolves). Derefs to the parts,
/// and through them to the context.
#[derive(Debug, Clone)]
pub struct AppState(Arc<SharedState>);

impl AppState {
    pub fn new(parts: SharedState) -> Self {
        Self(Arc::new(parts))
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;
    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The parts of [`AppState`].
#[derive(Debug)]
pub struct SharedState {
    pub ctx: Context,
    pub limits: Arc<RateLimits>,
    /// Recently verified API keys.
    pub keys: Arc<auth::KeyCache>,
    /// Reverse proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Arc<Vec<ipnet::IpNet>>,
    /// `/readyz`'s last answer about the store.
    pub ready: Arc<ops::ReadyCache>,
    /// Listing pages' items as JSON, for the pages the store serves again.
    pub listings: Arc<credentials::RenderedPages>,
}

impl std::ops::Deref for SharedState {
    type Target = Context;
    fn deref(&self) -> &Context {
        &self.ctx
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "credgate", description = "OAuth-aware integration connector gateway"),
    components(schemas(error::Problem)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("api_key", Vec::<String>::new())]);
    }
}

/// The OpenAPI document and the routes it describes.
fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    api_with(true)
}

fn api_with(metrics: bool) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(providers::router())
        .merge(credentials::router())
        .merge(oauth::router())
        .merge(oauth_apps::router())
        .merge(probes::router())
        .merge(events::router())
        .merge(webhooks::router())
        .merge(secrets::router())
        .merge(sessions::router())
        .merge(ops::router(metrics))
        .split_for_parts()
}

/// The OpenAPI 3.1 document, exact (see `openapi`), for `registry`'s providers.
pub fn openapi(registry: &crate::providers::Registry) -> serde_json::Value {
    openapi::exact(api().1, registry)
}

/// The whole application router.
pub fn app(state: AppState) -> Router {
    build(state, api_with(true))
}

/// The application without `/metrics` (served on `CREDGATE_OPS_LISTEN`).
pub fn app_without_metrics(state: AppState) -> Router {
    build(state, api_with(false))
}

/// `/healthz`, `/readyz` and `/metrics` alone: a worker-only process's
/// listen address, or `CREDGATE_OPS_LISTEN`.
pub fn ops_app(state: AppState) -> Router {
    let (router, _) = OpenApiRouter::new().merge(ops::router(true)).split_for_parts();
    layered(state, router)
}

fn build(state: AppState, (router, doc): (Router<AppState>, utoipa::openapi::OpenApi)) -> Router {
    let doc = Arc::new(openapi::exact(doc, &state.registry));
    let router = router
        .route("/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .merge(pages::router())
        .merge(proxy::router());
    layered(state, router)
}

/// The fallbacks and layers every router of ours has.
fn layered(state: AppState, router: Router<AppState>) -> Router {
    router
        .fallback(|| async { ApiError::NotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
        }))
        .with_state(state)
}

/// Per request: a span named by the matched route (never the query string,
/// which may carry an OAuth code) with the client's address, and, once a
/// caller is known, its organization and key id; metrics; and one log line
/// at `info` (`error` for a failure of ours).
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Labels come from closed sets only: a known method (anything else is
    // refused here, before routing: no resource takes it) and the matched
    // route template.
    let Some(method) = known_method(request.method()) else {
        let response = ApiError::MethodNotAllowed.into_response();
        record(&state, "OTHER", "unmatched", response.status().as_u16(), Instant::now());
        return response;
    };
    let method = method.to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let (parts, body) = request.into_parts();
    let client = auth::client_ip(&parts, &state.trusted_proxies);
    let request = Request::from_parts(parts, body);
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        client = %client,
        org = tracing::field::Empty,
        key_id = tracing::field::Empty,
        credential = tracing::field::Empty,
        provider = tracing::field::Empty,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let status = response.status().as_u16();
    record(&state, &method, &route, status, started);
    let _entered = span.enter();
    match response.extensions().get::<LoggedError>() {
        Some(e) if e.server_side => {
            tracing::error!(status, duration_ms, code = e.code, error = %e.message, "request failed")
        }
        Some(e) => tracing::info!(status, duration_ms, code = e.code, error = %e.message, "request refused"),
        None => tracing::info!(status, duration_ms, "request"),
    }
    response
}

/// The methods credgate knows; anything else is 405 before routing.
fn known_method(method: &axum::http::Method) -> Option<&'static str> {
    use axum::http::Method;
    // The methods of RFC 9110 and PATCH; a route answers 405 to those it
    // does not take.
    [
        (Method::GET, "GET"),
        (Method::HEAD, "HEAD"),
        (Method::POST, "POST"),
        (Method::PUT, "PUT"),
        (Method::PATCH, "PATCH"),
        (Method::DELETE, "DELETE"),
        (Method::OPTIONS, "OPTIONS"),
        (Method::TRACE, "TRACE"),
        (Method::CONNECT, "CONNECT"),
    ]
    .into_iter()
    .find(|(m, _)| m == method)
    .map(|(_, name)| name)
}

fn record(state: &AppState, method: &str, route: &str, status: u16, started: Instant) {
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.to_owned(),
            route: route.to_owned(),
            status,
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels {
            method: method.to_owned(),
            route: route.to_owned(),
        })
        .observe(started.elapsed().as_secs_f64());
}
