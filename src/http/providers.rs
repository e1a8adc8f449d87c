//! `GET /integrations/providers`: the catalog of providers and their fields.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::extract::{Caller, READ};
use super::AppState;
use crate::http::error::ApiError;
use crate::providers::{FieldKind, Provider};

/// Provider routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_providers))
}

#[derive(Debug, Serialize, ToSchema)]
struct FieldView {
    name: String,
    label: String,
    secret: bool,
    required: bool,
    /// `string`, `integer`, `port`, `boolean`, `url`, `hostname`, `private_key`, `enum`.
    #[serde(rename = "type")]
    kind: &'static str,
    /// The value used when the field is absent (a string, number or boolean).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<serde_json::Value>)]
    default: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    values: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
struct ProviderView {
    id: String,
    display_name: String,
    /// `oauth2`, `api_key`, `user_password`, `key_file`.
    auth_types: Vec<&'static str>,
    /// The fields of each auth type.
    fields: BTreeMap<&'static str, Vec<FieldView>>,
    /// Connect with `GET /integrations/{id}/authorize`; false until a client id is configured
    /// (the operator's, or the caller's organization's own app).
    #[serde(skip_serializing_if = "Option::is_none")]
    oauth_configured: Option<bool>,
}

fn view(p: &Provider, own_apps: &[String]) -> ProviderView {
    let fields = p
        .auth_types
        .iter()
        .map(|a| {
            let list = a
                .fields
                .iter()
                .map(|f| FieldView {
                    name: f.name.clone(),
                    label: f.label.clone(),
                    secret: f.secret,
                    required: f.required,
                    kind: match &f.kind {
                        FieldKind::String => "string",
                        FieldKind::Integer => "integer",
                        FieldKind::Port => "port",
                        FieldKind::Boolean => "boolean",
                        FieldKind::Url => "url",
                        FieldKind::Hostname => "hostname",
                        FieldKind::PrivateKey => "private_key",
                        FieldKind::Json => "json",
                        FieldKind::Enum(_) => "enum",
                    },
                    default: f.default.clone(),
                    values: match &f.kind {
                        FieldKind::Enum(v) => v.clone(),
                        _ => Vec::new(),
                    },
                })
                .collect();
            (a.kind.as_str(), list)
        })
        .collect();
    ProviderView {
        id: p.id.clone(),
        display_name: p.display_name.clone(),
        auth_types: p.auth_types.iter().map(|a| a.kind.as_str()).collect(),
        fields,
        oauth_configured: p
            .oauth
            .as_ref()
            .map(|o| !o.client_id.is_empty() || o.dynamic_registration || own_apps.contains(&p.id)),
    }
}

/// The provider catalog
#[utoipa::path(get, path = "/integrations/providers", tag = "providers",
    responses((status = 200, body = Vec<ProviderView>)))]
async fn list_providers(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<ProviderView>>, ApiError> {
    caller.require(&state, READ, None).await?;
    let own_apps = crate::oauth_apps::own_providers(&state, &caller.org_id).await?;
    Ok(Json(state.registry.iter().map(|p| view(p, &own_apps)).collect()))
}
