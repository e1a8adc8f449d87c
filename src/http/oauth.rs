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
use super::oauth_page::result_page;
use super::AppState;
use crate::http::error::{ApiError, Problem};
use crate::model::Access;
use crate::oauth::flow::{self, CallbackQuery, StartRequest};
use crate::providers::{validate_fields, AuthKind};

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
}

#[derive(Debug, Serialize, ToSchema)]
struct AuthorizeResponse {
    authorize_url: String,
    expires_at: chrono::DateTime<chrono::Utc>,
}

/// Does `candidate` start with an allowed prefix *and* share its origin?
/// (A bare string prefix would let `https://app.example.com.evil.net` pass.)
pub fn return_to_allowed(allowed: &[String], candidate: &str) -> bool {
    let Ok(url) = url::Url::parse(candidate) else {
        return false;
    };
    if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() || url.password().is_some() {
        return false;
    }
    allowed.iter().any(|prefix| {
        let Ok(base) = url::Url::parse(prefix) else {
            return false;
        };
        let path_ok = base.path().ends_with('/')
            || url.path() == base.path()
            || url.path().starts_with(&format!("{}/", base.path()));
        candidate.starts_with(prefix.as_str()) && url.origin() == base.origin() && path_ok
    })
}

/// The origins of the allowed return URLs (popup `postMessage` targets).
fn allowed_origins(allowed: &[String]) -> Vec<String> {
    let mut origins: Vec<String> = allowed
        .iter()
        .filter_map(|u| url::Url::parse(u).ok())
        .map(|u| u.origin().ascii_serialization())
        .filter(|o| o != "null")
        .collect();
    origins.dedup();
    origins
}

/// Start connecting an account
#[utoipa::path(get, path = "/integrations/{provider}/authorize", tag = "oauth",
    params(("provider" = String, Path), ("name" = Option<String>, Query), ("return_to" = Option<String>, Query),
           ("credential_id" = Option<String>, Query, description = "re-authorize this credential in place"),
           ("tenant" = Option<String>, Query, description = "SharePoint: directory (tenant) id or domain")),
    responses((status = 302, description = "to the provider"), (status = 200, body = AuthorizeResponse),
              (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn authorize(
    State(state): State<AppState>,
    caller: Caller,
    Path(provider_id): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<AuthorizeQuery>,
) -> Result<Response, ApiError> {
    caller.require(&state, MANAGE, query.credential_id.as_deref()).await?;
    let provider = state
        .registry
        .get(&provider_id)
        .filter(|p| p.oauth.is_some())
        .ok_or(ApiError::NotFound)?;
    let settings = provider.oauth.as_ref().expect("filtered");
    if settings.client_id.is_empty() {
        return Err(ApiError::Conflict(
            "provider_not_configured",
            format!(
                "set CREDGATE_PROVIDER_{}_CLIENT_ID and _CLIENT_SECRET to connect {}",
                provider_id.to_uppercase(),
                provider.display_name
            ),
        ));
    }
    let mut errors = Vec::new();
    if let Some(r) = &query.return_to {
        if !return_to_allowed(&state.config.allowed_return_urls, r) {
            errors.push(crate::providers::FieldError::new(
                "return_to",
                "must start with one of CREDGATE_ALLOWED_RETURN_URLS",
            ));
        }
    }
    if let Some(name) = &query.name {
        if name.trim().is_empty() || name.chars().count() > 200 {
            errors.push(crate::providers::FieldError::new("name", "must be 1 to 200 characters"));
        }
    }
    let mut tenant = query.tenant.clone();
    if let Some(id) = &query.credential_id {
        let (existing, _) =
            crate::credentials::access::authorize(&state, &caller, &parse_id(id)?, Access::Manage).await?;
        if existing.provider != provider.id {
            return Err(ApiError::NotFound);
        }
        if tenant.is_none() {
            tenant = existing
                .fields
                .get("tenant")
                .and_then(|t| t.as_str())
                .map(str::to_owned);
        }
    }
    if let Some(t) = &query.tenant {
        let defs = &provider
            .auth_type(AuthKind::Oauth2)
            .map(|a| a.fields.clone())
            .unwrap_or_default();
        let mut submitted = serde_json::Map::new();
        submitted.insert("tenant".into(), t.clone().into());
        if let Err(e) = validate_fields(defs, &submitted) {
            errors.extend(
                e.into_iter()
                    .map(|e| crate::providers::FieldError::new("tenant", e.message)),
            );
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let started = flow::start(
        &state,
        provider,
        StartRequest {
            org_id: caller.org_id.clone(),
            actor: caller.actor(),
            owner: caller.user_id.clone(),
            name: query.name.map(|n| n.trim().to_owned()),
            return_to: query.return_to,
            credential_id: query.credential_id.map(|id| id.to_lowercase()),
            tenant,
        },
    )
    .await?;
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
    responses((status = 302, description = "to return_to with result=success|error"), (status = 200, description = "result page")))]
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
    let origins = allowed_origins(&state.config.allowed_return_urls);
    Ok(result_page(&provider.display_name, &finished.result, &origins))
}

#[cfg(test)]
mod tests {
    use super::return_to_allowed;

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
