//! `GET /integrations/{provider}/authorize` and `…/callback`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::ClientIp;
use super::credentials::{parse_id, view::time};
use super::extract::{ApiQuery, Caller, MANAGE};
use super::pages::result_page;
use super::AppState;
use crate::http::error::{ApiError, Problem};
use crate::oauth::flow::{self, AuthorizeInput, CallbackQuery};

/// OAuth routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(authorize))
        .routes(routes!(callback))
}

#[derive(Debug, Deserialize)]
struct AuthorizeQuery {
    name: Option<String>,
    return_to: Option<String>,
    credential_id: Option<String>,
    tenant: Option<String>,
    server_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct AuthorizeResponse {
    authorize_url: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// Start connecting an account
#[utoipa::path(get, path = "/integrations/{provider}/authorize", tag = "oauth",
    params(("provider" = String, Path), ("name" = Option<String>, Query), ("return_to" = Option<String>, Query),
           ("credential_id" = Option<String>, Query, description = "re-authorize this credential in place"),
           ("tenant" = Option<String>, Query, description = "SharePoint: directory (tenant) id or domain"),
           ("server_url" = Option<String>, Query, description = "provider `mcp`: the MCP server's URL")),
    responses((status = 302, description = "to the provider"), (status = 200, body = AuthorizeResponse),
              (status = 404, body = Problem),
              (status = 409, body = Problem, description = "`provider_not_configured`: no OAuth client id is set"),
              (status = 422, body = Problem)))]
async fn authorize(
    State(state): State<AppState>,
    caller: Caller,
    Path(provider_id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<AuthorizeQuery>,
) -> Result<Response, ApiError> {
    caller.require(&state, MANAGE, query.credential_id.as_deref()).await?;
    let input = AuthorizeInput {
        name: query.name,
        return_to: query.return_to,
        credential_id: query.credential_id.as_deref().map(parse_id).transpose()?,
        tenant: query.tenant,
        server_url: query.server_url,
    };
    let started = flow::authorize(&state, &caller, &provider_id, input).await?;
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    if wants_json {
        let body = AuthorizeResponse {
            authorize_url: started.authorize_url,
            expires_at: time(started.expires_at),
        };
        return Ok(Json(body).into_response());
    }
    Ok(Redirect::to(&started.authorize_url).into_response())
}

/// The provider's redirect target (no API key: `state` carries the organization)
#[utoipa::path(get, path = "/integrations/{provider}/callback", tag = "oauth", security(()),
    params(("provider" = String, Path), ("state" = Option<String>, Query), ("code" = Option<String>, Query),
           ("error" = Option<String>, Query), ("iss" = Option<String>, Query)),
    responses((status = 302, description = "to return_to with result=success|error"), (status = 200, description = "result page", content_type = "text/html", body = String)))]
async fn callback(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Path(provider_id): Path<String>,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> Result<Response, ApiError> {
    state.limits.check_unauthenticated(ip)?;
    let provider = state
        .registry
        .get(&provider_id)
        .filter(|p| p.oauth.is_some())
        .ok_or(ApiError::NotFound)?;
    let finished = flow::finish(&state, provider, query).await;
    if let Some(return_to) = finished.return_to.as_deref().and_then(|r| url::Url::parse(r).ok()) {
        let mut target = return_to;
        {
            let mut pairs = target.query_pairs_mut();
            match &finished.result {
                Ok(id) => pairs.append_pair("credential_id", id).append_pair("result", "success"),
                Err(e) => pairs.append_pair("result", "error").append_pair("code", e.code),
            };
        }
        return Ok((
            StatusCode::FOUND,
            [
                (header::LOCATION, target.to_string()),
                (header::CACHE_CONTROL, "no-store".into()),
            ],
        )
            .into_response());
    }
    let origins = result_origins(&state);
    Ok(result_page(&state, &provider.display_name, &finished.result, &origins))
}

/// Where the result page may post its message: the allowed return origins,
/// and credgate's own (its connect page opens the provider in a popup).
fn result_origins(state: &AppState) -> Vec<String> {
    let mut allowed = state.config.allowed_return_urls.clone();
    allowed.push(state.config.public_url.clone());
    crate::oauth::return_to::allowed_origins(&allowed)
}

#[cfg(test)]
mod tests {
    use crate::oauth::return_to::return_to_allowed;

    #[test]
    fn return_to_must_share_origin_and_path_prefix() {
        let allowed = vec![
            "https://app.example.com".to_owned(),
            "https://x.example.org/settings/".to_owned(),
        ];
        assert!(return_to_allowed(
            &allowed,
            "https://app.example.com/integrations?tab=1"
        ));
        assert!(return_to_allowed(&allowed, "https://x.example.org/settings/connect"));
        assert!(!return_to_allowed(&allowed, "https://app.example.com.evil.net/"));
        assert!(!return_to_allowed(&allowed, "https://app.example.com@evil.net/"));
        assert!(!return_to_allowed(&allowed, "https://x.example.org/other"));
        assert!(!return_to_allowed(&allowed, "javascript:alert(1)"));
        assert!(!return_to_allowed(&[], "https://app.example.com/"));
    }
}
