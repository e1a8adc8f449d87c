//! `/integrations/secrets`: secrets by name. Values go in (`PUT`) and come
//! out only through `resolve`, to the workflow engine; listings and every
//! other answer carry metadata only.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::view::time;
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Caller, NoStore, MANAGE, READ, RESOLVE};
use super::AppState;
use crate::named_secrets::{self, Written};
use crate::store::SecretMeta;

/// The pattern every name matches (also in the OpenAPI document).
pub const NAME_PATTERN: &str = "^[A-Z][A-Z0-9_]{0,127}$";

/// Named secret routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_secrets))
        .routes(routes!(put_secret, delete_secret))
        .routes(routes!(resolve_secrets))
}

/// A value to store.
// `Debug` prints no value.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PutSecret {
    /// The secret value, at most 64 KiB of UTF-8.
    #[schema(value_type = String, min_length = 1, max_length = 65536)]
    value: SecretString,
}

impl std::fmt::Debug for PutSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PutSecret").finish_non_exhaustive()
    }
}

/// A named secret as the API shows it: never its value.
#[derive(Debug, Serialize, ToSchema)]
struct SecretView {
    name: String,
    /// `api_key:{id}` or `user:{id}` of the first writer.
    created_by: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    /// The last resolve; `null` if never.
    #[schema(required = true)]
    last_used_at: Option<DateTime<Utc>>,
}

impl From<SecretMeta> for SecretView {
    fn from(m: SecretMeta) -> Self {
        Self {
            name: m.name,
            created_by: m.created_by,
            created_at: time(m.created_at),
            updated_at: time(m.updated_at),
            last_used_at: m.last_used_at.map(time),
        }
    }
}

/// The organization's named secrets, by name (at most 1000).
#[derive(Debug, Serialize, ToSchema)]
struct SecretList {
    items: Vec<SecretView>,
}

/// The names to resolve (its schema, with the names' pattern, is
/// `schemas::resolve_secrets`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveSecrets {
    names: Vec<String>,
}

/// The values found by name, and the names missing.
// `Debug` prints names only.
#[derive(Serialize, ToSchema)]
struct ResolvedSecrets {
    /// Values by name.
    secrets: BTreeMap<String, String>,
    /// Names asked for that do not exist.
    missing: Vec<String>,
}

impl std::fmt::Debug for ResolvedSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedSecrets")
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("missing", &self.missing)
            .finish()
    }
}

/// List named secrets (metadata only)
#[utoipa::path(get, path = "/integrations/secrets", tag = "secrets",
    responses((status = 200, body = SecretList)))]
async fn list_secrets(State(state): State<AppState>, caller: Caller) -> Result<Json<SecretList>, ApiError> {
    caller.require(&state, READ, None).await?;
    let items = named_secrets::list(&state, &caller).await?;
    Ok(Json(SecretList {
        items: items.into_iter().map(SecretView::from).collect(),
    }))
}

/// Create or replace a named secret (admin, member)
#[utoipa::path(put, path = "/integrations/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, pattern = "^[A-Z][A-Z0-9_]{0,127}$", description = "the secret's name")),
    request_body = PutSecret,
    responses((status = 201, body = SecretView, description = "created"),
              (status = 200, body = SecretView, description = "replaced"),
              (status = 409, body = Problem, description = "quota_exceeded: 1000 secrets already")))]
async fn put_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<PutSecret>,
) -> Result<(StatusCode, Json<SecretView>), ApiError> {
    caller.require(&state, MANAGE, None).await?;
    let (written, meta) = named_secrets::put(&state, &caller, &name, &body.value).await?;
    let status = match written {
        Written::Created => StatusCode::CREATED,
        Written::Replaced => StatusCode::OK,
    };
    Ok((status, Json(meta.into())))
}

/// Delete a named secret (admin, member)
#[utoipa::path(delete, path = "/integrations/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, pattern = "^[A-Z][A-Z0-9_]{0,127}$", description = "the secret's name")),
    responses((status = 204, description = "deleted"), (status = 404, body = Problem, description = "no secret of that name")))]
async fn delete_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&state, MANAGE, None).await?;
    named_secrets::delete(&state, &caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Resolve named secrets for execution (role `engine` only; each use audited)
#[utoipa::path(post, path = "/integrations/secrets/resolve", tag = "secrets",
    responses((status = 200, body = ResolvedSecrets, description = "the values found, and the names missing")))]
async fn resolve_secrets(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<ResolveSecrets>,
) -> Result<NoStore<ResolvedSecrets>, ApiError> {
    caller.require(&state, RESOLVE, None).await?;
    let resolved = named_secrets::resolve(&state, &caller, &body.names).await?;
    Ok(NoStore(ResolvedSecrets {
        secrets: resolved
            .values
            .iter()
            .map(|(name, value)| (name.clone(), value.expose_secret().to_owned()))
            .collect(),
        missing: resolved.missing,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_put_body_prints_no_value() {
        let body: PutSecret = serde_json::from_value(serde_json::json!({"value": "SENTINEL-put"})).unwrap();

        let printed = format!("{body:?}");

        assert!(!printed.contains("SENTINEL"), "{printed}");
    }

    #[test]
    fn the_documented_pattern_is_the_checked_one() {
        let re = regex::Regex::new(NAME_PATTERN).unwrap();
        for name in ["A", "SMTP_PASSWORD", "a", "_A", "A-B", "AB1_"] {
            assert_eq!(re.is_match(name), named_secrets::valid_name(name), "{name}");
        }
    }
}
