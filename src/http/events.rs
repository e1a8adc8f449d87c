//! `GET /integrations/events?after=ID`: an organization's notifications
//! (what the webhook receives), oldest first, with their delivery state.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::view::time;
use super::error::{ApiError, Problem};
use super::extract::{ApiQuery, Caller};
use super::AppState;
use crate::ids::CredentialId;
use crate::model::Role;
use crate::store::OutboxEvent;

/// Events returned per call.
const PAGE: i64 = 100;

/// Event routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<String>,
}

/// Where an event's delivery stands.
#[derive(Debug, Serialize, ToSchema)]
struct Delivery {
    /// `pending`, `delivered` or `failed` (given up after 25 hours).
    state: &'static str,
    attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivered_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

/// One notification.
#[derive(Debug, Serialize, ToSchema)]
struct EventView {
    /// Sequence number: pass the last one as `after` for the next page.
    id: i64,
    /// The `webhook-id` the receiver sees (stable across attempts).
    event_id: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    credential_id: Option<CredentialId>,
    at: DateTime<Utc>,
    /// The body the receiver gets.
    #[schema(value_type = Object)]
    payload: Value,
    delivery: Delivery,
}

#[derive(Debug, Serialize, ToSchema)]
struct EventPage {
    items: Vec<EventView>,
}

fn view(e: OutboxEvent) -> EventView {
    let state = match (e.delivered_at, e.failed_at) {
        (Some(_), _) => "delivered",
        (None, Some(_)) => "failed",
        _ => "pending",
    };
    EventView {
        id: e.id,
        event_id: e.event_id,
        kind: e.kind,
        credential_id: e.credential_id,
        at: time(e.created_at),
        payload: e.payload,
        delivery: Delivery {
            state,
            attempts: e.attempts,
            next_attempt_at: e.next_attempt_at.map(time),
            delivered_at: e.delivered_at.map(time),
            last_error: e.last_error,
        },
    }
}

/// The organization's notifications after `after`, oldest first (admin)
#[utoipa::path(get, path = "/integrations/events", tag = "events",
    params(("after" = Option<i64>, Query, minimum = 0, description = "the last `id` already seen")),
    responses((status = 200, body = EventPage), (status = 403, body = Problem), (status = 422, body = Problem)))]
async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    caller.require(&state, &[Role::Admin], None).await?;
    let after = match query.after.as_deref() {
        None | Some("") => 0,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .ok_or_else(|| ApiError::field("after", "must be a non-negative integer (an event `id`)"))?,
    };
    let events = state.store.events_after(&caller.org_id, after, PAGE).await?;
    Ok(Json(EventPage {
        items: events.into_iter().map(view).collect(),
    }))
}
