//! The HTTP API: one module per resource, each with its own `router()`,
//! merged here with the middleware every request passes through.

pub mod credentials;
pub mod error;
pub mod extract;
mod oauth;
mod oauth_page;
mod ops;
mod probes;
mod providers;
pub mod ratelimit;

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
/// HTTP needs (rate limits, the API key cache). Derefs to the context.
#[derive(Debug, Clone)]
pub struct AppState {
    pub ctx: Context,
    pub limits: Arc<RateLimits>,
    /// Recently verified API keys.
    pub keys: Arc<extract::KeyCache>,
}

impl std::ops::Deref for AppState {
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
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(providers::router())
        .merge(credentials::router())
        .merge(oauth::router())
        .merge(probes::router())
        .merge(ops::router())
        .split_for_parts()
}

/// The OpenAPI 3.1 document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api().1
}

/// The whole application router.
pub fn app(state: AppState) -> Router {
    let (router, doc) = api();
    let doc = Arc::new(doc);
    router
        .route("/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
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
/// which may carry an OAuth code), metrics, and one log line for errors.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let span = tracing::info_span!("request", method = %method, route = %route);
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            method: method.clone(),
            route: route.clone(),
            status,
        })
        .inc();
    state
        .metrics
        .latency
        .get_or_create(&RouteLabels { method, route })
        .observe(elapsed.as_secs_f64());
    let _entered = span.enter();
    match response.extensions().get::<LoggedError>() {
        Some(e) if e.server_side => tracing::error!(status, code = e.code, error = %e.message, "request failed"),
        Some(e) => tracing::info!(status, code = e.code, error = %e.message, "request refused"),
        None => tracing::debug!(status, elapsed_ms = elapsed.as_millis() as u64, "request done"),
    }
    response
}
