//! `/integrations/credentials`: create, list, get, patch, delete, batch
//! delete and audit. Secrets go in, never come out (see `resolve`).

mod resolve;
mod sharing;
pub mod view;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::extract::{ApiJson, ApiQuery, Caller, MANAGE, READ};
use super::AppState;
use crate::credentials::{self, Changes, NewCredentialInput, MAX_NAME_LEN, MAX_PER_PAGE};
use crate::http::error::{ApiError, Problem};
use crate::model::{Access, CredentialStatus, Role};
use crate::providers::FieldError;
use crate::store::CredentialFilter;
use view::{AuditEventView, Credential, CredentialOut, CredentialPage};

/// Credential routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_credentials, create_credential))
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
}

/// A change. `Debug` shows field names only.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchCredential {
    #[schema(min_length = 1, max_length = 200)]
    name: Option<String>,
    #[schema(value_type = Option<Object>)]
    fields: Option<Map<String, Value>>,
}

impl From<CreateCredential> for NewCredentialInput {
    fn from(b: CreateCredential) -> Self {
        Self {
            name: b.name,
            provider: b.provider,
            auth_type: b.auth_type,
            fields: b.fields,
        }
    }
}

impl From<PatchCredential> for Changes {
    fn from(b: PatchCredential) -> Self {
        Self {
            name: b.name,
            fields: b.fields,
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

#[derive(Debug, Deserialize)]
struct ListQuery {
    provider: Option<String>,
    status: Option<String>,
    q: Option<String>,
    owner: Option<String>,
    shared: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
}

/// `?owner=`: only `me`.
#[derive(Debug, ToSchema)]
#[expect(dead_code, reason = "it documents the query parameter only")]
enum OwnerFilter {
    #[schema(rename = "me")]
    Me,
}

/// A path id that is not a UUID cannot exist: 404, as for any unknown id.
pub(crate) fn parse_id(id: &str) -> Result<String, ApiError> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound)
}

/// Create a credential
#[utoipa::path(post, path = "/integrations/credentials", tag = "credentials",
    request_body = CreateCredential,
    responses((status = 201, body = Credential), (status = 409, body = Problem), (status = 422, body = Problem)))]
async fn create_credential(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateCredential>,
) -> Result<(StatusCode, Json<Credential>), ApiError> {
    caller.require(&state, MANAGE, None).await?;
    let row = credentials::create(&state, &caller, body.into()).await?;
    Ok((
        StatusCode::CREATED,
        Json(Credential::new(&row, Access::Manage, Vec::new())),
    ))
}

fn parse_positive(field: &str, value: Option<&str>, default: i64, max: i64, errors: &mut Vec<FieldError>) -> i64 {
    let Some(raw) = value else { return default };
    match raw.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => n,
        _ => {
            errors.push(FieldError::new(field, format!("must be an integer from 1 to {max}")));
            default
        }
    }
}

/// List credentials
#[utoipa::path(get, path = "/integrations/credentials", tag = "credentials",
    params(("provider" = Option<String>, Query), ("status" = Option<CredentialStatus>, Query),
           ("q" = Option<String>, Query, max_length = 200, description = "part of the name, any case"),
           ("owner" = Option<OwnerFilter>, Query, description = "`me`: only the caller's own"),
           ("shared" = Option<bool>, Query, description = "only shared (team or users), or only not shared"),
           ("page" = Option<i64>, Query, minimum = 1, maximum = 1000000),
           ("per_page" = Option<i64>, Query, minimum = 1, maximum = 50, description = "at most 50")),
    responses((status = 200, body = CredentialPage), (status = 422, body = Problem)))]
async fn list_credentials(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<CredentialPage>, ApiError> {
    caller.require(&state, READ, None).await?;
    let mut errors = Vec::new();
    let page = parse_positive("page", query.page.as_deref(), 1, 1_000_000, &mut errors);
    let per_page = parse_positive(
        "per_page",
        query.per_page.as_deref(),
        MAX_PER_PAGE,
        MAX_PER_PAGE,
        &mut errors,
    );
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => {
            let parsed = CredentialStatus::parse(s);
            if parsed.is_none() {
                let names: Vec<&str> = CredentialStatus::ALL.iter().map(|s| s.as_str()).collect();
                errors.push(FieldError::new(
                    "status",
                    format!("must be one of: {}", names.join(", ")),
                ));
            }
            parsed
        }
    };
    if query.q.as_ref().is_some_and(|q| q.chars().count() > MAX_NAME_LEN) {
        errors.push(FieldError::new(
            "q",
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    for (field, value) in [("q", &query.q), ("provider", &query.provider)] {
        if value.as_ref().is_some_and(|v| v.chars().any(char::is_control)) {
            errors.push(FieldError::new(field, "must not contain control characters"));
        }
    }
    let owner_me = match query.owner.as_deref() {
        None => false,
        Some("me") => true,
        Some(_) => {
            errors.push(FieldError::new("owner", "must be `me`"));
            false
        }
    };
    let shared = match query.shared.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            errors.push(FieldError::new("shared", "must be true or false"));
            None
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = CredentialFilter {
        provider: query.provider.filter(|p| !p.is_empty()),
        status,
        q: query.q.filter(|q| !q.is_empty()),
        owner_me,
        shared,
        page,
        per_page,
        ..CredentialFilter::default()
    };
    let (rows, total) = credentials::list(&state, &caller, filter).await?;
    let shown: Vec<String> = rows
        .iter()
        .filter(|(_, access)| *access >= Access::View)
        .map(|(row, _)| row.id.clone())
        .collect();
    let mut grants = credentials::grants_of_many(&state, &shown).await?;
    Ok(Json(CredentialPage {
        items: rows
            .iter()
            .map(|(row, access)| CredentialOut::new(row, *access, grants.remove(&row.id).unwrap_or_default()))
            .collect(),
        page,
        per_page,
        total,
    }))
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
    Ok(Json(CredentialOut::new(&row, access, grants)))
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
    Ok(Json(Credential::new(&row, Access::Manage, grants)))
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
    let mut wanted: Vec<String> = Vec::new();
    let mut not_found = Vec::new();
    for raw in body.ids {
        match parse_id(&raw) {
            Ok(id) if !wanted.contains(&id) => wanted.push(id),
            Ok(_) => {}
            Err(_) => not_found.push(raw),
        }
    }
    let deleted = credentials::delete(&state, &caller, &wanted).await?;
    not_found.extend(wanted.into_iter().filter(|id| !deleted.contains(id)));
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
    let id = parse_id(&id)?;
    // Events outlive a deleted credential: admins still read them.
    let deleted = caller.role == Role::Admin
        && state.store.credential(&caller.org_id, &id).await?.is_none()
        && state.store.was_deleted(&caller.org_id, &id).await?;
    if !deleted {
        credentials::access::authorize(&state, &caller, &id, Access::View).await?;
    }
    let events = state.store.audit_events(&caller.org_id, &id, 500).await?;
    if events.is_empty() {
        return Err(ApiError::NotFound);
    }
    Ok(Json(
        events
            .into_iter()
            .map(|e| AuditEventView {
                id: e.id,
                action: e.action,
                outcome: e.outcome,
                actor: e.actor,
                detail: e.detail.and_then(|d| serde_json::from_str(&d).ok()),
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
