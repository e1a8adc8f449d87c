//! `POST /integrations/credentials/{id}/resolve`: the one route that returns
//! secret values, to the workflow engine at execution time, audited as a use.

use axum::extract::{Path, State};
use axum::Json;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::view::time;
use crate::error::{ApiError, Problem};
use crate::http::extract::{Caller, RESOLVE};
use crate::http::AppState;
use crate::oauth::refresh::{ensure_fresh, refresh_credential, Mode};
use crate::store::AuditEvent;

/// Resolve a credential's values for execution (role `engine` only)
#[utoipa::path(post, path = "/integrations/credentials/{id}/resolve", tag = "credentials",
    responses((status = 200, description = "`{id, provider, auth_type, fields, access_token?, expires_at?}` with decrypted values"),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn resolve_credential(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    caller.require(&state, RESOLVE, Some(&id)).await?;
    let mut row = super::load(&state, &caller, &id).await?;
    if row.auth_type == "oauth2" {
        row = ensure_fresh(&state, row, state.config.resolve_margin_secs as i64).await?;
    }
    let (fields, groups) = super::decrypted(&state, &row).await?;
    let mut body = Map::new();
    body.insert("id".into(), row.id.clone().into());
    body.insert("provider".into(), row.provider.clone().into());
    body.insert("auth_type".into(), row.auth_type.clone().into());
    body.insert("fields".into(), Value::Object(fields));
    // The refresh token never leaves credgate: it alone refreshes, so a
    // rotated token can never be used twice by someone else.
    if let Some(access) = groups.get("tokens").and_then(|t| t.get("access_token")) {
        body.insert("access_token".into(), access.expose_secret().to_owned().into());
    }
    if let Some(expires_at) = row.expires_at {
        body.insert(
            "expires_at".into(),
            serde_json::to_value(time(expires_at)).expect("times serialize"),
        );
    }
    let event = AuditEvent::success(&row.org_id, &row.id, "credential.resolve", &caller.actor());
    state.store.record_use(&row.org_id, &row.id, &event).await?;
    Ok(Json(Value::Object(body)))
}

/// Refresh an OAuth credential's access token now
#[utoipa::path(post, path = "/integrations/credentials/{id}/refresh", tag = "credentials",
    responses((status = 200, body = super::view::Credential), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "needs_reauth"), (status = 503, body = Problem)))]
pub(super) async fn refresh_now(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<super::view::Credential>, ApiError> {
    caller.require(&state, crate::http::extract::MANAGE, Some(&id)).await?;
    let row = super::load(&state, &caller, &id).await?;
    if row.auth_type != "oauth2" {
        return Err(ApiError::field("id", "only OAuth credentials can be refreshed"));
    }
    let row = refresh_credential(&state, &row.org_id, &row.id, Mode::Now).await?;
    Ok(Json(super::view::Credential::from(&row)))
}
