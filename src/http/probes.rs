//! Test-connection routes: the four probes with values from the request,
//! and `POST /integrations/credentials/{id}/test` with stored values.

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Map, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::load;
use super::extract::{ApiJson, Caller, READ};
use super::AppState;
use crate::error::{ApiError, Problem};
use crate::oauth::refresh::ensure_fresh;
use crate::probes::{
    self, FailureCode, LlmRequest, PostgresRequest, Probe, ProbeFailure, ProbeResult, SftpRequest, TelegramRequest,
};
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
    Ok(Json(probes::run(&state.probes, req).await))
}

fn field_errors(errors: Vec<probes::FieldError>) -> ApiError {
    ApiError::Validation(
        errors
            .into_iter()
            .map(|e| FieldError::new(e.field, e.message))
            .collect(),
    )
}

/// Test an SFTP server
#[utoipa::path(post, path = "/integrations/sftp/test-connection", tag = "probes",
    request_body(content = Object, description = "`{host, port?: 22, username, password?, private_key?, passphrase?, host_key_sha256?, path?}`"),
    responses((status = 200, description = "ProbeResult `{ok, latency_ms, detail, error?}`"), (status = 422, body = Problem), (status = 429, body = Problem)))]
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
    responses((status = 200, description = "ProbeResult"), (status = 422, body = Problem), (status = 429, body = Problem)))]
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
    responses((status = 200, description = "ProbeResult"), (status = 422, body = Problem), (status = 429, body = Problem)))]
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
    responses((status = 200, description = "ProbeResult"), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn test_telegram(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(req): ApiJson<TelegramRequest>,
) -> Result<Json<ProbeResult>, ApiError> {
    probe(&state, &caller, &req).await
}

/// A probe request from stored values: the provider files use the probe
/// bodies' field names, so the decrypted fields deserialize directly.
fn request<P: serde::de::DeserializeOwned>(fields: Map<String, Value>) -> Result<P, ApiError> {
    serde_json::from_value(Value::Object(fields)).map_err(|_| {
        ApiError::Internal(anyhow::anyhow!(
            "the stored fields of this credential do not fit its probe"
        ))
    })
}

/// OAuth credentials: a fresh token, then the identity endpoint.
async fn probe_oauth(state: &AppState, row: crate::store::CredentialRow) -> ProbeResult {
    let started = std::time::Instant::now();
    let fail = |code, message: String| ProbeResult {
        ok: false,
        latency_ms: started.elapsed().as_millis() as u64,
        detail: json!({}),
        error: Some(ProbeFailure::new(code, message)),
    };
    let Some(settings) = state.registry.get(&row.provider).and_then(|p| p.oauth.as_ref()) else {
        return fail(FailureCode::Protocol, "the provider has no OAuth settings".into());
    };
    let row = match ensure_fresh(state, row, 60).await {
        Ok(row) => row,
        Err(ApiError::NeedsReauth(m)) => return fail(FailureCode::AuthFailed, m),
        Err(e) => return fail(FailureCode::ProviderError, e.to_string()),
    };
    let token = match state
        .vault
        .open(&row.org_id, &row.id, &row.secret_ct, row.key_version)
        .await
    {
        Ok(groups) => groups.get("tokens").and_then(|t| t.get("access_token").cloned()),
        Err(_) => None,
    };
    let Some(token) = token else {
        return fail(
            FailureCode::AuthFailed,
            "no access token is stored; re-authorize".into(),
        );
    };
    match crate::oauth::fetch_identity(&state.http, settings, &token).await {
        Ok(identity) => ProbeResult {
            ok: true,
            latency_ms: started.elapsed().as_millis() as u64,
            detail: json!({"account_id": identity.id, "email": identity.email, "display_name": identity.display_name}),
            error: None,
        },
        Err(e) => fail(FailureCode::AuthFailed, e.message),
    }
}

/// Test a saved credential with its stored values; updates `status` and `last_tested_at`
#[utoipa::path(post, path = "/integrations/credentials/{id}/test", tag = "credentials",
    responses((status = 200, description = "ProbeResult"), (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn test_credential(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProbeResult>, ApiError> {
    caller.require(&state, READ, Some(&id)).await?;
    let row = load(&state, &caller, &id).await?;
    state.limits.check_probe(&caller.org_id)?;
    let result = if row.auth_type == "oauth2" {
        probe_oauth(&state, row.clone()).await
    } else {
        let (mut fields, _) = super::credentials::decrypted(&state, &row).await?;
        match row.provider.as_str() {
            "sftp" => probes::run(&state.probes, &request::<SftpRequest>(fields)?).await,
            "postgresql" => probes::run(&state.probes, &request::<PostgresRequest>(fields)?).await,
            "openai" | "anthropic" | "openai_compatible" => {
                fields.insert("provider_type".into(), row.provider.clone().into());
                probes::run(&state.probes, &request::<LlmRequest>(fields)?).await
            }
            "telegram" => probes::run(&state.probes, &request::<TelegramRequest>(fields)?).await,
            other => {
                return Err(ApiError::Conflict(
                    "no_probe",
                    format!("credgate has no connection test for provider {other}"),
                ))
            }
        }
    };
    let fresh = state.store.credential(&row.org_id, &row.id).await?.unwrap_or(row);
    let (status, last_error) = match &result.error {
        None => ("active", None),
        Some(_) if fresh.status == "needs_reauth" => ("needs_reauth", fresh.last_error.clone()),
        Some(e) => (
            "error",
            Some(json!({"code": e.code.as_str(), "message": e.message, "at": chrono::Utc::now()}).to_string()),
        ),
    };
    state
        .store
        .record_test(&fresh.org_id, &fresh.id, status, last_error.as_deref())
        .await?;
    tracing::info!(credential = %fresh.id, ok = result.ok, "credential tested");
    Ok(Json(result))
}
