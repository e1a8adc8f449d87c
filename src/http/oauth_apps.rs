//! `/integrations/oauth-apps`: an organization's own OAuth app per provider
//! (bring your own client), admin only. The client secret goes in and is
//! never returned.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::view::time;
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, ApiQuery, Caller, Role};
use super::AppState;
use crate::oauth_apps::{self as apps, AppInput, AppView};

/// OAuth app routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_apps))
        .routes(routes!(put_app, delete_app))
}

const ADMIN: &[Role] = &[Role::Admin];

/// The organization's own client for a provider.
// `Debug` prints no secret.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PutApp {
    #[schema(min_length = 1, max_length = 512, pattern = "^[!-~]{1,512}$")]
    client_id: String,
    /// Sent to the provider only; never returned.
    #[schema(value_type = String, min_length = 1, max_length = 4096, pattern = "^[ -~]{1,4096}$")]
    client_secret: SecretString,
    /// The scopes connections ask for (default: the provider file's).
    #[schema(schema_with = scopes_schema)]
    scopes: Option<Vec<String>>,
    /// Microsoft: the directory (tenant) the app lives in.
    tenant: Option<String>,
    /// When the client secret expires (the provider's console says).
    client_secret_expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for PutApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutApp")
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

/// At most 100 scopes, each an RFC 6749 §3.3 scope token, or `null`.
fn scopes_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(512))
                .pattern(Some("^[!#-\\[\\]-~]{1,512}$")),
        )
        .max_items(Some(100))
        .build()
}

/// An app as the API shows it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
struct AppResponse {
    provider: String,
    client_id: String,
    scopes: Vec<String>,
    #[schema(required = true)]
    tenant: Option<String>,
    #[schema(required = true)]
    client_secret_expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// Credentials connected through this app.
    credentials: i64,
}

impl From<AppView> for AppResponse {
    fn from(v: AppView) -> Self {
        Self {
            provider: v.provider,
            client_id: v.client_id,
            scopes: v.scopes,
            tenant: v.tenant,
            client_secret_expires_at: v.client_secret_expires_at.map(time),
            created_at: time(v.created_at),
            updated_at: time(v.updated_at),
            credentials: v.credentials,
        }
    }
}

/// The organization's own OAuth apps.
#[derive(Debug, Serialize, ToSchema)]
struct AppList {
    items: Vec<AppResponse>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteQuery {
    #[serde(default)]
    force: bool,
}

/// List the organization's own OAuth apps (admin)
#[utoipa::path(get, path = "/integrations/oauth-apps", tag = "oauth-apps",
    responses((status = 200, body = AppList), (status = 403, body = Problem)))]
async fn list_apps(State(state): State<AppState>, caller: Caller) -> Result<Json<AppList>, ApiError> {
    caller.require(&state, ADMIN, None).await?;
    let items = apps::list(&state, &caller).await?;
    Ok(Json(AppList {
        items: items.into_iter().map(AppResponse::from).collect(),
    }))
}

/// Set the organization's own OAuth app for a provider (admin)
#[utoipa::path(put, path = "/integrations/oauth-apps/{provider}", tag = "oauth-apps",
    params(("provider" = String, Path, description = "a provider whose file declares oauth2")),
    request_body = PutApp,
    responses((status = 200, body = AppResponse, description = "set (never the secret)"),
              (status = 403, body = Problem), (status = 404, body = Problem, description = "no such OAuth provider"),
              (status = 422, body = Problem)))]
async fn put_app(
    State(state): State<AppState>,
    caller: Caller,
    Path(provider): Path<String>,
    ApiJson(body): ApiJson<PutApp>,
) -> Result<(StatusCode, Json<AppResponse>), ApiError> {
    caller.require(&state, ADMIN, None).await?;
    let input = AppInput {
        client_id: body.client_id,
        client_secret: body.client_secret,
        scopes: body.scopes,
        tenant: body.tenant,
        client_secret_expires_at: body.client_secret_expires_at.map(|t| t.timestamp()),
    };
    let (_, view) = apps::put(&state, &caller, &provider, input).await?;
    Ok((StatusCode::OK, Json(view.into())))
}

/// Delete the organization's own OAuth app for a provider (admin)
#[utoipa::path(delete, path = "/integrations/oauth-apps/{provider}", tag = "oauth-apps",
    params(("provider" = String, Path), ("force" = Option<bool>, Query, description = "delete even while credentials connected through it exist")),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "`in_use`: credentials were connected through it")))]
async fn delete_app(
    State(state): State<AppState>,
    caller: Caller,
    Path(provider): Path<String>,
    ApiQuery(query): ApiQuery<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    caller.require(&state, ADMIN, None).await?;
    apps::delete(&state, &caller, &provider, query.force).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_body_prints_no_secret() {
        let body: PutApp =
            serde_json::from_value(serde_json::json!({"client_id": "id", "client_secret": "SENTINEL-app"})).unwrap();

        let printed = format!("{body:?}");

        assert!(!printed.contains("SENTINEL"), "{printed}");
    }
}
