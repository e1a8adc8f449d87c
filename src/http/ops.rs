//! Operations routes: liveness, readiness, metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// Operations routes (no API key).
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

/// Liveness: the process answers
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200)))]
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the store is reachable
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200), (status = 503)))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.worker.stuck(state.now()) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "the refresh worker is stuck"})),
        );
    }
    if state.ready.store_reachable(&state.store, &state.metrics).await {
        (StatusCode::OK, Json(json!({"status": "ready"})))
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "store unreachable"})),
        )
    }
}

/// The store's reachability, asked at most once a second.
#[derive(Debug, Default)]
pub struct ReadyCache {
    last: tokio::sync::Mutex<Option<(std::time::Instant, bool)>>,
}

impl ReadyCache {
    async fn store_reachable(&self, store: &crate::store::Store, metrics: &crate::metrics::Metrics) -> bool {
        let mut last = self.last.lock().await;
        if let Some((at, ok)) = *last {
            if at.elapsed() < std::time::Duration::from_secs(1) {
                return ok;
            }
        }
        metrics.readiness_checks.inc();
        // Short of a second, so that `/readyz` answers within one.
        let ok = tokio::time::timeout(std::time::Duration::from_millis(800), store.ping())
            .await
            .unwrap_or(false);
        *last = Some((std::time::Instant::now(), ok));
        ok
    }
}

/// Prometheus metrics
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
