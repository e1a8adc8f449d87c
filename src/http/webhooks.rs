//! `/integrations/webhooks`: an organization's own webhook endpoints, admin
//! only. A secret is shown once, when it is made (create, rotate-secret).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::view::time;
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Caller, Role};
use super::AppState;
use crate::ids::WebhookId;
use crate::store::DeliveryRow;
use crate::webhook_endpoints::{self as endpoints, EndpointChanges, EndpointInput, EndpointView, EVENT_TYPES};

/// Webhook endpoint routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(update_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(test_webhook))
        .routes(routes!(list_deliveries))
}

const ADMIN: &[Role] = &[Role::Admin];

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    /// Where notifications are POSTed (http or https; it must resolve to an
    /// address credgate's egress policy admits).
    #[schema(min_length = 1, max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    url: String,
    /// The notification types it gets; left out or `null`: every type.
    #[schema(schema_with = events_schema)]
    events: Option<Vec<String>>,
    /// At most 500 characters, without control characters.
    #[schema(max_length = 500, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    description: Option<String>,
}

/// Changes to an endpoint; what is left out stays.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchWebhook {
    /// A new URL, checked as on create; pending deliveries go to it.
    #[schema(min_length = 1, max_length = 2048, pattern = "^[Hh][Tt][Tt][Pp][Ss]?://")]
    url: Option<String>,
    /// New types; `null`: every type.
    #[serde(default, deserialize_with = "given")]
    #[schema(schema_with = events_schema)]
    events: Option<Option<Vec<String>>>,
    /// At most 500 characters, without control characters.
    #[schema(max_length = 500, pattern = "^[^\\u0000-\\u001F\\u007F-\\u009F]*$")]
    description: Option<String>,
}

/// A field that may be given as `null`: absent is `None`, `null` is
/// `Some(None)`.
fn given<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<Vec<String>>>, D::Error> {
    Option::<Vec<String>>::deserialize(d).map(Some)
}

/// One to 20 notification types, or `null` (every type).
fn events_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(EVENT_TYPES.iter().copied())),
        )
        .min_items(Some(1))
        .max_items(Some(20))
        .build()
}

/// An endpoint as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
struct WebhookResponse {
    id: WebhookId,
    url: String,
    /// The types it gets; `null`: every type.
    #[schema(required = true)]
    events: Option<Vec<String>>,
    description: String,
    created_at: DateTime<Utc>,
    /// While a rotated-out secret still signs beside the current one: until when.
    #[schema(required = true)]
    previous_secret_until: Option<DateTime<Utc>>,
}

impl From<EndpointView> for WebhookResponse {
    fn from(v: EndpointView) -> Self {
        Self {
            id: v.id,
            url: v.url,
            events: v.events,
            description: v.description,
            created_at: time(v.created_at),
            previous_secret_until: v.previous_secret_until.map(time),
        }
    }
}

/// An endpoint with its signing secret, shown this once.
#[derive(Serialize, ToSchema)]
struct WebhookWithSecret {
    #[serde(flatten)]
    endpoint: WebhookResponse,
    /// `whsec_…`: verify deliveries with it (Standard Webhooks); never shown again.
    secret: String,
}

/// The organization's endpoints.
#[derive(Debug, Serialize, ToSchema)]
struct WebhookList {
    items: Vec<WebhookResponse>,
}

/// One notification to one endpoint.
#[derive(Debug, Serialize, ToSchema)]
struct DeliveryView {
    id: i64,
    /// The notification's id: the `webhook-id` header, the same on every attempt.
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    /// `pending`, `delivered` or `failed` (given up; a test delivery is tried once).
    state: &'static str,
    attempts: i64,
    /// The endpoint's HTTP status at the last attempt; `null` when it did not answer.
    #[schema(required = true)]
    status: Option<i64>,
    #[schema(required = true)]
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    #[schema(required = true)]
    delivered_at: Option<DateTime<Utc>>,
    #[schema(required = true)]
    next_attempt_at: Option<DateTime<Utc>>,
}

impl From<DeliveryRow> for DeliveryView {
    fn from(d: DeliveryRow) -> Self {
        let state = match (d.delivered_at, d.next_attempt_at) {
            (Some(_), _) => "delivered",
            (None, Some(_)) => "pending",
            (None, None) if d.failed_at.is_some() => "failed",
            // Being sent for the first time (a test delivery).
            (None, None) => "pending",
        };
        Self {
            id: d.id,
            event_id: d.event_id,
            kind: d.kind,
            state,
            attempts: d.attempts,
            status: d.last_status,
            last_error: d.last_error,
            created_at: time(d.created_at),
            delivered_at: d.delivered_at.map(time),
            next_attempt_at: d.next_attempt_at.map(time),
        }
    }
}

/// An endpoint's recent deliveries, newest first.
#[derive(Debug, Serialize, ToSchema)]
struct DeliveryList {
    items: Vec<DeliveryView>,
}

/// A path id that is not a UUID cannot exist: 404, as for any unknown id.
fn parse_id(id: &str) -> Result<WebhookId, ApiError> {
    WebhookId::parse(id).map_err(|_| ApiError::NotFound)
}

fn with_secret(view: EndpointView, secret: &secrecy::SecretString) -> WebhookWithSecret {
    WebhookWithSecret {
        endpoint: view.into(),
        secret: secret.expose_secret().to_owned(),
    }
}

/// Create a webhook endpoint (admin)
#[utoipa::path(post, path = "/integrations/webhooks", tag = "webhooks",
    request_body = CreateWebhook,
    responses((status = 201, body = WebhookWithSecret, description = "created; the secret is shown this once"),
              (status = 403, body = Problem), (status = 409, body = Problem, description = "`quota_exceeded`: 20 endpoints"),
              (status = 422, body = Problem, description = "a bad field, or a URL that resolves to a denied address")))]
async fn create_webhook(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<WebhookWithSecret>), ApiError> {
    caller.require(&state, ADMIN, None).await?;
    let input = EndpointInput {
        url: body.url,
        events: body.events,
        description: body.description,
    };
    let (view, secret) = endpoints::create(&state, &caller, input).await?;
    Ok((StatusCode::CREATED, Json(with_secret(view, &secret))))
}

/// List the organization's webhook endpoints (admin)
#[utoipa::path(get, path = "/integrations/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList), (status = 403, body = Problem)))]
async fn list_webhooks(State(state): State<AppState>, caller: Caller) -> Result<Json<WebhookList>, ApiError> {
    caller.require(&state, ADMIN, None).await?;
    let items = endpoints::list(&state, &caller).await?;
    Ok(Json(WebhookList {
        items: items.into_iter().map(WebhookResponse::from).collect(),
    }))
}

/// Change a webhook endpoint's URL, types or description (admin)
#[utoipa::path(patch, path = "/integrations/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    request_body = PatchWebhook,
    responses((status = 200, body = WebhookResponse, description = "the endpoint as it now is; its secret is unchanged"),
              (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem, description = "a bad field, or a URL that resolves to a denied address")))]
async fn update_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<PatchWebhook>,
) -> Result<Json<WebhookResponse>, ApiError> {
    caller.require(&state, ADMIN, None).await?;
    let changes = EndpointChanges {
        url: body.url,
        events: body.events,
        description: body.description,
    };
    let view = endpoints::update(&state, &caller, &parse_id(&id)?, changes).await?;
    Ok(Json(view.into()))
}

/// Delete a webhook endpoint and its pending deliveries (admin)
#[utoipa::path(delete, path = "/integrations/webhooks/{id}", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 204, description = "deleted"), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn delete_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(&state, ADMIN, None).await?;
    endpoints::delete(&state, &caller, &parse_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Give a webhook endpoint a new secret (admin); the old one signs too for 24 hours
#[utoipa::path(post, path = "/integrations/webhooks/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, body = WebhookWithSecret, description = "the new secret, shown this once"),
              (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
async fn rotate_secret(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<WebhookWithSecret>, ApiError> {
    caller.require(&state, ADMIN, None).await?;
    let (view, secret) = endpoints::rotate(&state, &caller, &parse_id(&id)?).await?;
    Ok(Json(with_secret(view, &secret)))
}

/// Send a `webhook.test` notification to the endpoint now (admin)
#[utoipa::path(post, path = "/integrations/webhooks/{id}/test", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, body = DeliveryView, description = "the delivery's outcome (delivered or failed)"),
              (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn test_webhook(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeliveryView>, ApiError> {
    caller.require(&state, ADMIN, None).await?;
    let delivery = endpoints::test(&state, &caller, &parse_id(&id)?).await?;
    Ok(Json(delivery.into()))
}

/// A webhook endpoint's recent deliveries, newest first (admin)
#[utoipa::path(get, path = "/integrations/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path)),
    responses((status = 200, body = DeliveryList), (status = 403, body = Problem), (status = 404, body = Problem)))]
async fn list_deliveries(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeliveryList>, ApiError> {
    caller.require(&state, ADMIN, None).await?;
    let items = endpoints::deliveries(&state, &caller, &parse_id(&id)?).await?;
    Ok(Json(DeliveryList {
        items: items.into_iter().map(DeliveryView::from).collect(),
    }))
}
