//! `/integrations/credentials`: create, list, get, patch, delete, batch
//! delete and audit. Secrets go in, never come out (see `resolve`).

mod list;
mod resolve;
mod sharing;
pub mod view;

pub use list::RenderedPages;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{ApiJson, Caller, MANAGE, READ};
use super::AppState;
use crate::credentials::{self, Changes, NewCredentialInput};
use crate::http::error::{ApiError, Problem};
use crate::ids::CredentialId;
use crate::model::Access;
use view::{AuditEventView, Credential, CredentialOut};

/// Credential routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list::list_credentials, create_credential))
        .routes(routes!(get_credential, patch_credential, delete_credential))
        .routes(routes!(batch_delete_credentials))
        .routes(routes!(list_audit_events))
        .routes(routes!(resolve::resolve_credential))
        .routes(routes!(resolve::refresh_now))
        .routes(routes!(sharing::put_sharing))
        .routes(routes!(sharing::get_usage))
}

/// A new credential. `Debug` shows field names only.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateCredential {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    provider: String,
    auth_type: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    fields: Map<String, Value>,
    /// Key-value (`custom`) credentials: the field names shown in the clear.
    #[serde(default)]
    public: Vec<String>,
    /// When the secret itself ends (an API key's end date), RFC 3339.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
}

/// A change. `Debug` shows field names only.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchCredential {
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(value_type = Option<Object>)]
    fields: Option<Map<String, Value>>,
    /// Key-value (`custom`) credentials: the new fields shown in the clear.
    #[serde(default)]
    public: Vec<String>,
    /// When the secret itself ends, RFC 3339; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<Value>,
}

/// A field that may be given as `null`: absent is `None`, `null` is
/// `Some(Value::Null)`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(d).map(Some)
}

impl From<CreateCredential> for NewCredentialInput {
    fn from(b: CreateCredential) -> Self {
        Self {
            name: b.name,
            provider: b.provider,
            auth_type: b.auth_type,
            fields: b.fields,
            public: b.public,
            expires_at: b.expires_at,
        }
    }
}

impl From<PatchCredential> for Changes {
    fn from(b: PatchCredential) -> Self {
        Self {
            name: b.name,
            fields: b.fields,
            public: b.public,
            expires_at: b.expires_at.map(|v| match v {
                Value::Null => None,
                Value::String(s) => Some(s),
                other => Some(other.to_string()),
            }),
        }
    }
}

impl std::fmt::Debug for CreateCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateCredential")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for PatchCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PatchCredential")
            .field("name", &self.name)
            .field("fields", &self.fields.as_ref().map(|m| m.keys().collect::<Vec<_>>()))
            .finish()
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchDelete {
    #[schema(min_items = 1, max_items = 500)]
    ids: Vec<String>,
}

#[derive(Debug, serde::Serialize, ToSchema)]
struct BatchDeleteResult {
    deleted: Vec<String>,
    not_found: Vec<String>,
}

/// A path id that is not a UUID cannot exist: 404, as for any unknown id.
pub(crate) fn parse_id(id: &str) -> Result<CredentialId, ApiError> {
    CredentialId::parse(id).map_err(|_| ApiError::NotFound)
}

/// Create a credential
#[utoipa::path(post, path = "/integrations/credentials", tag = "credentials",
    request_body = CreateCredential,
    params(("Idempotency-Key" = Option<String>, Header,
        description = "kept 24 h per organization: a retry with the same key and body answers the first create again (with `Idempotent-Replayed: true`) and creates nothing more; another body is 422")),
    responses((status = 201, body = Credential), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_credential(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(body): ApiJson<CreateCredential>,
) -> Result<Response, ApiError> {
    caller.require(&state, MANAGE, None).await?;
    let Some(key) = headers.get("idempotency-key") else {
        let row = credentials::create(&state, &caller, body.into()).await?;
        return Ok((
            StatusCode::CREATED,
            Json(Credential::new(&row, Access::Manage, &[], state.health_of(&row))),
        )
            .into_response());
    };
    let key = key
        .to_str()
        .map_err(|_| ApiError::from(crate::error::Error::field("Idempotency-Key", "must be visible ASCII")))?;
    let created = credentials::create_once(&state, &caller, body.into(), key).await?;
    let body = Json(Credential::new(
        &created.row,
        Access::Manage,
        &[],
        state.health_of(&created.row),
    ));
    Ok(if created.replayed {
        (StatusCode::CREATED, [("idempotent-replayed", "true")], body).into_response()
    } else {
        (StatusCode::CREATED, body).into_response()
    })
}

/// Get a credential
#[utoipa::path(get, path = "/integrations/credentials/{id}", tag = "credentials",
    responses((status = 200, body = CredentialOut), (status = 404, body = Problem)))]
async fn get_credential(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CredentialOut>, ApiError> {
    caller.require(&state, READ, Some(&id)).await?;
    let (row, access) = credentials::read(&state, &caller, &parse_id(&id)?).await?;
    let grants = if access >= Access::View {
        credentials::grants(&state, &row.id).await?
    } else {
        Vec::new()
    };
    Ok(Json(CredentialOut::new(&row, access, &grants, state.health_of(&row))))
}

/// Rename a credential and/or replace all its fields (secrets re-entered)
#[utoipa::path(patch, path = "/integrations/credentials/{id}", tag = "credentials",
    request_body = PatchCredential,
    responses((status = 200, body = Credential), (status = 404, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)))]
async fn patch_credential(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchCredential>,
) -> Result<Json<Credential>, ApiError> {
    caller.require(&state, MANAGE, Some(&id)).await?;
    let id = parse_id(&id)?;
    let row = credentials::update(&state, &caller, &id, body.into()).await?;
    let grants = credentials::grants(&state, &row.id).await?;
    Ok(Json(Credential::new(
        &row,
        Access::Manage,
        &grants,
        state.health_of(&row),
    )))
}

/// Delete a credential
#[utoipa::path(delete, path = "/integrations/credentials/{id}", tag = "credentials",
    responses((status = 204), (status = 404, body = Problem)))]
async fn delete_credential(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&state, MANAGE, Some(&id)).await?;
    let id = parse_id(&id)?;
    // One credential: 403 when the caller may use but not manage it.
    credentials::access::authorize(&state, &caller, &id, Access::Manage).await?;
    let deleted = credentials::delete(&state, &caller, &[id]).await?;
    if deleted.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Delete several credentials
#[utoipa::path(post, path = "/integrations/credentials/batch-delete", tag = "credentials",
    request_body = BatchDelete,
    responses((status = 200, body = BatchDeleteResult), (status = 422, body = Problem)))]
async fn batch_delete_credentials(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<BatchDelete>,
) -> Result<Json<BatchDeleteResult>, ApiError> {
    caller.require(&state, MANAGE, None).await?;
    if body.ids.is_empty() || body.ids.len() > 500 {
        return Err(ApiError::field("ids", "must list from 1 to 500 ids"));
    }
    let mut wanted: Vec<CredentialId> = Vec::new();
    let mut not_found = Vec::new();
    for raw in body.ids {
        match parse_id(&raw) {
            Ok(id) if !wanted.contains(&id) => wanted.push(id),
            Ok(_) => {}
            Err(_) => not_found.push(raw),
        }
    }
    let deleted = credentials::delete(&state, &caller, &wanted).await?;
    not_found.extend(wanted.into_iter().filter(|id| !deleted.contains(id)).map(String::from));
    let deleted = deleted.into_iter().map(String::from).collect();
    Ok(Json(BatchDeleteResult { deleted, not_found }))
}

/// A credential's audit events, newest first
#[utoipa::path(get, path = "/integrations/credentials/{id}/audit", tag = "credentials",
    responses((status = 200, body = Vec<AuditEventView>), (status = 404, body = Problem)))]
async fn list_audit_events(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<AuditEventView>>, ApiError> {
    caller.require(&state, READ, Some(&id)).await?;
    let events = credentials::audit_log(&state, &caller, &parse_id(&id)?).await?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| AuditEventView {
                id: e.id,
                action: e.action,
                outcome: e.outcome,
                actor: e.actor,
                detail: e.detail,
                at: view::time(e.at),
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bodies_print_field_names_but_never_values() {
        let create: CreateCredential = serde_json::from_value(serde_json::json!({
            "name": "n", "provider": "p", "auth_type": "a", "fields": {"password": "SENTINEL-create"}
        }))
        .unwrap();
        let patch: PatchCredential =
            serde_json::from_value(serde_json::json!({"fields": {"password": "SENTINEL-patch"}})).unwrap();

        let printed = format!("{create:?} {patch:?}");

        assert!(printed.contains("password"), "{printed}");
        assert!(!printed.contains("SENTINEL"), "{printed}");
    }
}
