//! `POST /integrations/credentials/{id}/resolve`: the one route that returns
//! secret values, to the workflow engine at execution time, audited as a use;
//! and `POST …/refresh`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::Json;
use secrecy::ExposeSecret;
use serde_json::{Map, Value};

use super::parse_id;
use super::view::{time, Credential};
use crate::credentials::check_user_id;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::parse_json;
use crate::http::extract::{Caller, NoStore, MANAGE, RESOLVE};
use crate::http::AppState;
use crate::model::Access;
use crate::providers::FieldError;
use crate::store::Usage;

/// Whom and what a resolve is for (all optional).
#[derive(Debug, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ResolveBody {
    /// Act for this user (keys without a user only).
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    user_id: Option<String>,
    /// Recorded with the use.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    workflow_id: Option<String>,
    /// Recorded with the use.
    #[schema(min_length = 1, max_length = 200, pattern = r"^[^\u0000-\u001f\u007f-\u009f]*$")]
    run_id: Option<String>,
}

/// Resolve a credential's values for execution (role `engine` only)
#[utoipa::path(post, path = "/integrations/credentials/{id}/resolve", tag = "credentials",
    request_body(content = Option<ResolveBody>, description = "optional: `{user_id?, workflow_id?, run_id?}`"),
    responses((status = 200, description = "`{id, provider, auth_type, fields, access_token?, expires_at?}` with decrypted values"),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub(super) async fn resolve_credential(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<NoStore<Value>, ApiError> {
    caller.require(&state, RESOLVE, Some(&id)).await?;
    let body: ResolveBody = if body.iter().all(u8::is_ascii_whitespace) {
        ResolveBody::default()
    } else {
        parse_json(&body)?
    };
    let mut errors = Vec::new();
    let mut user = None;
    for (field, value) in [
        ("user_id", &body.user_id),
        ("workflow_id", &body.workflow_id),
        ("run_id", &body.run_id),
    ] {
        match value.as_deref().map(|v| check_user_id(field, v)) {
            Some(Err(e)) => errors.push(e),
            Some(Ok(id)) if field == "user_id" => user = Some(id),
            _ => {}
        }
    }
    if let (Some(own), Some(other)) = (&caller.user_id, &user) {
        if own != other {
            errors.push(FieldError::new("user_id", "this engine key acts for its own user only"));
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // The key's own user, else the user named, else the organization.
    let principal = caller.for_user(caller.user_id.clone().or(user));
    let usage = Usage {
        workflow_id: body.workflow_id,
        run_id: body.run_id,
    };
    let resolved = crate::execution::resolve(&state, &principal, &parse_id(&id)?, &usage).await?;
    let row = &resolved.row;
    let mut body = Map::new();
    body.insert("id".into(), row.id.as_str().into());
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
    Ok(NoStore(Value::Object(body)))
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
    let row = crate::oauth::refresh::refresh_now(&state, &caller, &parse_id(&id)?).await?;
    let grants = crate::credentials::grants(&state, &row.id).await?;
    Ok(Json(Credential::new(
        &row,
        Access::Manage,
        &grants,
        state.health_of(&row),
    )))
}
