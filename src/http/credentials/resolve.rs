//! `POST /integrations/credentials/{id}/resolve`: the one route that returns
//! secret values, to the workflow engine at execution time, audited as a use;
//! and `POST …/refresh`.

use axum::extract::{Path, State};
use axum::Json;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::parse_id;
use super::view::{time, Credential};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{Caller, MANAGE, RESOLVE};
use crate::http::AppState;
use crate::model::AuthKind;
use crate::oauth::refresh::{refresh_credential, Mode};

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
    let resolved = crate::execution::resolve(&state, &caller.org_id, &parse_id(&id)?, &caller.actor()).await?;
    let row = &resolved.row;
    let mut body = Map::new();
    body.insert("id".into(), row.id.clone().into());
    body.insert("provider".into(), row.provider.clone().into());
    body.insert("auth_type".into(), row.auth_type.as_str().into());
    body.insert("fields".into(), Value::Object(resolved.fields.clone()));
    if let Some(access) = &resolved.access_token {
        body.insert("access_token".into(), access.expose_secret().to_owned().into());
    }
    if let Some(expires_at) = row.expires_at {
        body.insert(
            "expires_at".into(),
            serde_json::to_value(time(expires_at)).expect("times serialize"),
        );
    }
    Ok(Json(Value::Object(body)))
}

/// Refresh an OAuth credential's access token now (concurrent calls share one provider call)
#[utoipa::path(post, path = "/integrations/credentials/{id}/refresh", tag = "credentials",
    responses((status = 200, body = Credential), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "needs_reauth"), (status = 503, body = Problem)))]
pub(super) async fn refresh_now(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Credential>, ApiError> {
    caller.require(&state, MANAGE, Some(&id)).await?;
    let row = crate::credentials::get(&state, &caller.org_id, &parse_id(&id)?).await?;
    if row.auth_type != AuthKind::Oauth2 {
        return Err(ApiError::Conflict(
            "not_oauth",
            "only OAuth credentials have tokens to refresh".into(),
        ));
    }
    let row = refresh_credential(&state, &row.org_id, &row.id, Mode::Now).await?;
    Ok(Json(Credential::from(&row)))
}
