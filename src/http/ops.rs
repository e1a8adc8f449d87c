//! Operations routes: liveness, readiness, metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;

/// Operations routes (no API key): the health routes, and `/metrics`
/// unless it is served apart.
pub fn router(with_metrics: bool) -> OpenApiRouter<AppState> {
    let router = OpenApiRouter::new().routes(routes!(healthz)).routes(routes!(readyz));
    match with_metrics {
        true => router.routes(routes!(metrics)),
        false => router,
    }
}

/// `/healthz` and `/readyz`: what the process and the replica say of themselves.
#[derive(Debug, Serialize, ToSchema)]
struct Health {
    /// `ok`, `ready`, or what keeps the replica from being ready.
    status: String,
    /// The ids of master keys that wrap stored data keys and that this
    /// replica lacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    missing_master_keys: Option<Vec<String>>,
}

impl Health {
    fn says(status: &str) -> Json<Self> {
        Json(Self {
            status: status.to_owned(),
            missing_master_keys: None,
        })
    }
}

/// Liveness: the process answers
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Json<Health> {
    Health::says("ok")
}

/// Readiness: the store is reachable, and this replica's master keys open every stored data key
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Health), (status = 503, body = Health)))]
async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Health>) {
    let unready = |body: Json<Health>| (StatusCode::SERVICE_UNAVAILABLE, body);
    if state.worker.stuck(state.now()) {
        return unready(Health::says("the refresh worker is stuck"));
    }
    match state.ready.check(&state).await {
        Readiness::Ready => (StatusCode::OK, Health::says("ready")),
        Readiness::StoreUnreachable => unready(Health::says("store unreachable")),
        Readiness::KeysMissing(kids) => unready(Json(Health {
            status: "master keys missing: data keys in the store are wrapped by master keys this replica lacks \
                     (add them to CREDGATE_MASTER_KEYS)"
                .into(),
            missing_master_keys: Some(kids),
        })),
    }
}

/// What `/readyz` found.
#[derive(Debug, Clone)]
enum Readiness {
    Ready,
    StoreUnreachable,
    /// The ids of master keys that wrap stored data keys and that this
    /// replica does not have.
    KeysMissing(Vec<String>),
}

/// The last readiness check, made at most once a second.
#[derive(Debug, Default)]
pub struct ReadyCache {
    last: tokio::sync::Mutex<Option<(std::time::Instant, Readiness)>>,
}

impl ReadyCache {
    async fn check(&self, state: &AppState) -> Readiness {
        let mut last = self.last.lock().await;
        if let Some((at, found)) = &*last {
            if at.elapsed() < std::time::Duration::from_secs(1) {
                return found.clone();
            }
        }
        state.metrics.readiness_checks.inc();
        // Short of a second, so that `/readyz` answers within one.
        let found = tokio::time::timeout(std::time::Duration::from_millis(800), async {
            if !state.store.ping().await {
                return Readiness::StoreUnreachable;
            }
            match state.vault.missing_master_keys().await {
                Ok(kids) if kids.is_empty() => Readiness::Ready,
                Ok(kids) => Readiness::KeysMissing(kids),
                Err(_) => Readiness::StoreUnreachable,
            }
        })
        .await
        .unwrap_or(Readiness::StoreUnreachable);
        *last = Some((std::time::Instant::now(), found.clone()));
        found
    }
}

/// Prometheus metrics
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let unwritten = i64::try_from(state.outcomes.unwritten()).unwrap_or(i64::MAX);
    state.metrics.gateway_outcomes_unwritten.set(unwritten);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
