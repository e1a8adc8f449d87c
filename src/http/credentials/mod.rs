//! `/integrations/credentials`: create, list, get, patch, delete, batch
//! delete and audit. Secrets go in, never come out (see `resolve`).

mod resolve;
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
use crate::crypto::SecretMap;
use crate::error::{ApiError, Problem};
use crate::providers::{AuthKind, FieldError, Provider, ValidatedFields};
use crate::store::{AuditEvent, CredentialFilter, CredentialRow, NewCredential, SecretUpdate, StoreError};
use view::{AuditEventView, Credential, CredentialPage};

/// Credential routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_credentials, create_credential))
        .routes(routes!(get_credential, patch_credential, delete_credential))
        .routes(routes!(batch_delete_credentials))
        .routes(routes!(list_audit_events))
        .routes(routes!(resolve::resolve_credential))
        .routes(routes!(resolve::refresh_now))
}

/// Most credentials on one page.
pub const MAX_PER_PAGE: i64 = 50;
const MAX_NAME_LEN: usize = 200;
const STATUSES: &[&str] = &["active", "expired", "needs_reauth", "error"];

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateCredential {
    name: String,
    provider: String,
    auth_type: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    fields: Map<String, Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchCredential {
    name: Option<String>,
    #[schema(value_type = Option<Object>)]
    fields: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct BatchDelete {
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
    page: Option<String>,
    per_page: Option<String>,
}

/// A path id that is not a UUID cannot exist: 404, as for any unknown id.
pub(crate) fn parse_id(id: &str) -> Result<String, ApiError> {
    Uuid::parse_str(id)
        .map(|u| u.to_string())
        .map_err(|_| ApiError::NotFound)
}

fn check_name(name: &str) -> Result<String, FieldError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(FieldError::new("name", "must not be empty"));
    }
    if name.chars().count() > MAX_NAME_LEN || name.chars().any(char::is_control) {
        return Err(FieldError::new(
            "name",
            format!("must be at most {MAX_NAME_LEN} printable characters"),
        ));
    }
    Ok(name.to_owned())
}

/// Looks up a provider and one of its auth types, or names the bad field.
fn provider_auth<'a>(
    state: &'a AppState,
    provider: &str,
    auth_type: &str,
) -> Result<(&'a Provider, AuthKind), Vec<FieldError>> {
    let provider = state.registry.get(provider).ok_or_else(|| {
        vec![FieldError::new(
            "provider",
            "is not a known provider (see GET /integrations/providers)",
        )]
    })?;
    let kind = AuthKind::parse(auth_type)
        .filter(|k| provider.auth_type(*k).is_some())
        .ok_or_else(|| {
            vec![FieldError::new(
                "auth_type",
                format!("is not an auth type of provider {}", provider.id),
            )]
        })?;
    Ok((provider, kind))
}

fn validate_fields(
    provider: &Provider,
    kind: AuthKind,
    fields: &Map<String, Value>,
) -> Result<ValidatedFields, Vec<FieldError>> {
    let defs = &provider.auth_type(kind).expect("checked by provider_auth").fields;
    crate::providers::validate_fields(defs, fields)
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
    let mut errors = Vec::new();
    let name = check_name(&body.name).map_err(|e| errors.push(e)).ok();
    let validated = match provider_auth(&state, &body.provider, &body.auth_type) {
        Ok((_, AuthKind::Oauth2)) => {
            errors.push(FieldError::new(
                "auth_type",
                "oauth2 credentials are created by the authorize flow (GET /integrations/{provider}/authorize)",
            ));
            None
        }
        Ok((provider, kind)) => validate_fields(provider, kind, &body.fields)
            .map_err(|e| errors.extend(e))
            .ok(),
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let (Some(name), Some(validated), true) = (name, validated, errors.is_empty()) else {
        return Err(ApiError::Validation(errors));
    };
    let id = Uuid::new_v4().to_string();
    let (secret_ct, key_version) = state
        .vault
        .seal(&caller.org_id, &id, &[("fields", &validated.secret)])
        .await?;
    let new = NewCredential {
        id: id.clone(),
        org_id: caller.org_id.clone(),
        name,
        provider: body.provider.clone(),
        auth_type: body.auth_type.clone(),
        status: "active".into(),
        fields: Value::Object(validated.public).to_string(),
        secret_names: serde_json::to_string(&validated.secret.names()).expect("strings serialize"),
        secret_ct,
        key_version,
        account_id: None,
        account_email: None,
        account_name: None,
        scopes: None,
        expires_at: None,
        created_by: caller.actor(),
    };
    let event = AuditEvent::success(&caller.org_id, &id, "credential.create", &caller.actor())
        .with_detail(serde_json::json!({"provider": new.provider, "auth_type": new.auth_type}));
    match state
        .store
        .insert_credential(&new, state.config.max_per_provider.into(), &event)
        .await
    {
        Err(StoreError::QuotaExceeded { limit }) => {
            return Err(ApiError::QuotaExceeded {
                provider: new.provider,
                limit,
            })
        }
        other => other?,
    }
    let row = state
        .store
        .credential(&caller.org_id, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    let detail = serde_json::json!({"name": row.name});
    state
        .webhooks
        .emit("credential.created", &row.org_id, &row.id, &row.provider, detail);
    Ok((StatusCode::CREATED, Json(Credential::from(&row))))
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
    params(("provider" = Option<String>, Query), ("status" = Option<String>, Query), ("q" = Option<String>, Query),
           ("page" = Option<i64>, Query), ("per_page" = Option<i64>, Query, description = "at most 50")),
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
    if let Some(status) = &query.status {
        if !STATUSES.contains(&status.as_str()) {
            errors.push(FieldError::new(
                "status",
                format!("must be one of: {}", STATUSES.join(", ")),
            ));
        }
    }
    if query.q.as_ref().is_some_and(|q| q.len() > MAX_NAME_LEN) {
        errors.push(FieldError::new(
            "q",
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = CredentialFilter {
        provider: query.provider.filter(|p| !p.is_empty()),
        status: query.status,
        q: query.q.filter(|q| !q.is_empty()),
        page,
        per_page,
    };
    let (rows, total) = state.store.list_credentials(&caller.org_id, &filter).await?;
    Ok(Json(CredentialPage {
        items: rows.iter().map(Credential::from).collect(),
        page,
        per_page,
        total,
    }))
}

/// Loads a credential of the caller's organization, 404 otherwise.
pub(crate) async fn load(state: &AppState, caller: &Caller, id: &str) -> Result<CredentialRow, ApiError> {
    let id = parse_id(id)?;
    state
        .store
        .credential(&caller.org_id, &id)
        .await?
        .ok_or(ApiError::NotFound)
}

/// A credential's field values with its secrets decrypted, and its sealed
/// groups (for the OAuth tokens). Only resolve and probes call this.
pub(crate) async fn decrypted(
    state: &AppState,
    row: &CredentialRow,
) -> Result<(Map<String, Value>, std::collections::BTreeMap<String, SecretMap>), ApiError> {
    use secrecy::ExposeSecret;
    let groups = state
        .vault
        .open(&row.org_id, &row.id, &row.secret_ct, row.key_version)
        .await?;
    let mut fields: Map<String, Value> = serde_json::from_str(&row.fields).unwrap_or_default();
    if let Some(secrets) = groups.get("fields") {
        for (name, value) in &secrets.0 {
            fields.insert(name.clone(), Value::String(value.expose_secret().to_owned()));
        }
    }
    Ok((fields, groups))
}

/// Get a credential
#[utoipa::path(get, path = "/integrations/credentials/{id}", tag = "credentials",
    responses((status = 200, body = Credential), (status = 404, body = Problem)))]
async fn get_credential(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Credential>, ApiError> {
    caller.require(&state, READ, Some(&id)).await?;
    Ok(Json(Credential::from(&load(&state, &caller, &id).await?)))
}

/// Rename a credential and/or replace all its fields (secrets re-entered)
#[utoipa::path(patch, path = "/integrations/credentials/{id}", tag = "credentials",
    request_body = PatchCredential,
    responses((status = 200, body = Credential), (status = 404, body = Problem), (status = 422, body = Problem)))]
async fn patch_credential(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchCredential>,
) -> Result<Json<Credential>, ApiError> {
    caller.require(&state, MANAGE, Some(&id)).await?;
    let row = load(&state, &caller, &id).await?;
    if body.name.is_none() && body.fields.is_none() {
        return Err(ApiError::field("body", "give `name`, `fields` or both"));
    }
    let name = body
        .name
        .as_deref()
        .map(check_name)
        .transpose()
        .map_err(|e| ApiError::Validation(vec![e]))?;
    let update = match &body.fields {
        None => None,
        Some(fields) => {
            let (provider, kind) =
                provider_auth(&state, &row.provider, &row.auth_type).map_err(ApiError::Validation)?;
            let validated = validate_fields(provider, kind, fields).map_err(ApiError::Validation)?;
            // OAuth tokens are not fields: they survive a fields update.
            let groups = state
                .vault
                .open(&row.org_id, &row.id, &row.secret_ct, row.key_version)
                .await?;
            let tokens = groups.get("tokens").cloned().unwrap_or_default();
            let mut sealed: Vec<(&str, &SecretMap)> = vec![("fields", &validated.secret)];
            if kind == AuthKind::Oauth2 {
                sealed.push(("tokens", &tokens));
            }
            let (secret_ct, key_version) = state.vault.seal(&row.org_id, &row.id, &sealed).await?;
            Some(SecretUpdate {
                fields: Value::Object(validated.public).to_string(),
                secret_names: serde_json::to_string(&validated.secret.names()).expect("strings serialize"),
                secret_ct,
                key_version,
            })
        }
    };
    let changed: Vec<&str> = [("name", name.is_some()), ("fields", update.is_some())]
        .into_iter()
        .filter_map(|(k, on)| on.then_some(k))
        .collect();
    let event = AuditEvent::success(&row.org_id, &row.id, "credential.update", &caller.actor())
        .with_detail(serde_json::json!({ "changed": changed }));
    let row = state
        .store
        .update_credential(&row.org_id, &row.id, name.as_deref(), update.as_ref(), &event)
        .await?;
    Ok(Json(Credential::from(&row)))
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
    let deleted = state
        .store
        .delete_credentials(&caller.org_id, &[id], &caller.actor())
        .await?;
    if deleted.is_empty() {
        return Err(ApiError::NotFound);
    }
    super::after_delete(&state, deleted);
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
    let deleted_rows = state
        .store
        .delete_credentials(&caller.org_id, &wanted, &caller.actor())
        .await?;
    let deleted: Vec<String> = deleted_rows.iter().map(|r| r.id.clone()).collect();
    not_found.extend(wanted.into_iter().filter(|id| !deleted.contains(id)));
    super::after_delete(&state, deleted_rows);
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
    let events = state.store.audit_events(&caller.org_id, &id, 500).await?;
    // Events outlive a deleted credential; an id with neither is unknown.
    if events.is_empty() && state.store.credential(&caller.org_id, &id).await?.is_none() {
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
