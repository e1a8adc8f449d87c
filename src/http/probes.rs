//! Test-connection routes: the four probes with values from the request,
//! and `POST /integrations/credentials/{id}/test` with stored values.

use axum::extract::{Path, State};
use axum::Json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::parse_id;
use super::extract::{ApiJson, Caller, READ};
use super::AppState;
use crate::http::error::{ApiError, Problem};
use crate::probes::{self, LlmRequest, PostgresRequest, Probe, ProbeResult, SftpRequest, TelegramRequest};
use crate::providers::FieldError;

/// Probe routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(test_sftp))
        .routes(routes!(test_postgres))
        .routes(routes!(test_llm))
        .routes(routes!(test_telegram))
        .routes(routes!(test_credential))
}

/// Checks role, the organization's probe rate and the request, then probes.
async fn probe<P: Probe>(state: &AppState, caller: &Caller, req: &P) -> Result<Json<ProbeResult>, ApiError> {
    caller.require(state, READ, None).await?;
    state.limits.check_probe(&caller.org_id)?;
    req.validate().map_err(field_errors)?;
    Ok(Json(probes::run(&state.probes, &caller.org_id, req).await))
}

fn field_errors(errors: Vec<FieldError>) -> ApiError {
    ApiError::Validation(errors)
}

/// Test an SFTP server
#[utoipa::path(post, path = "/integrations/sftp/test-connection", tag = "probes",
    request_body(content = Object, description = "`{host, port?: 22, username, password?, private_key?, passphrase?, host_key_sha256?, path?}`"),
    responses((status = 200, body = ProbeResult, description = "`{ok, latency_ms, detail, error?}`"), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn test_sftp(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<SftpRequest>,
) -> Result<Json<ProbeResult>, ApiError> {
    probe(&state, &caller, &req).await
}

/// Test a PostgreSQL server
#[utoipa::path(post, path = "/integrations/postgres/test-connection", tag = "probes",
    request_body(content = Object, description = "`{connection_string}` or `{host, port?: 5432, database, username, password, sslmode?}`"),
    responses((status = 200, body = ProbeResult, description = "`{ok, latency_ms, detail?, error?}`: with `use` alone, `ok`, `latency_ms` and `error.code`"), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn test_postgres(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<PostgresRequest>,
) -> Result<Json<ProbeResult>, ApiError> {
    probe(&state, &caller, &req).await
}

/// Test an LLM API key
#[utoipa::path(post, path = "/integrations/llm/test-connection", tag = "probes",
    request_body(content = Object, description = "`{provider_type: openai|anthropic|openai_compatible, api_key, base_url?, organization_id?}`"),
    responses((status = 200, body = ProbeResult), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn test_llm(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<LlmRequest>,
) -> Result<Json<ProbeResult>, ApiError> {
    probe(&state, &caller, &req).await
}

/// Test a Telegram bot token
#[utoipa::path(post, path = "/integrations/telegram/test-connection", tag = "probes",
    request_body(content = Object, description = "`{bot_token}`"),
    responses((status = 200, body = ProbeResult), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn test_telegram(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<TelegramRequest>,
) -> Result<Json<ProbeResult>, ApiError> {
    probe(&state, &caller, &req).await
}

/// Test a saved credential with its stored values; updates `status` and `last_tested_at`
#[utoipa::path(post, path = "/integrations/credentials/{id}/test", tag = "credentials",
    responses((status = 200, body = ProbeResult), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "`no_probe`: the provider has no connection test (custom, webhook secrets)"),
              (status = 429, body = Problem)))]
async fn test_credential(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProbeResult>, ApiError> {
    caller.require(&state, READ, Some(&id)).await?;
    let id = parse_id(&id)?;
    crate::credentials::read(&state, &caller, &id).await?;
    state.limits.check_probe(&caller.org_id)?;
    Ok(Json(crate::execution::test(&state, &caller, &id).await?))
}
