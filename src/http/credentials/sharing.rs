//! `PUT /integrations/credentials/{id}/sharing` and `GET …/usage`.

use axum::extract::{Path, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::parse_id;
use super::view::{time, Credential};
use crate::credentials::{self, Sharing};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{ApiJson, Caller, MANAGE, READ};
use crate::http::AppState;
use crate::model::Access;

/// One user's grant, as sent.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct GrantBody {
    #[schema(min_length = 1, max_length = 200)]
    user_id: String,
    access: Access,
}

/// The whole sharing of a credential (it replaces the old one).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SharingBody {
    /// Everyone in the organization: `null`, `use`, `view` or `manage`.
    team: Option<Access>,
    #[serde(default)]
    #[schema(max_items = 100)]
    users: Vec<GrantBody>,
}

/// Change who may use a credential (`manage`)
#[utoipa::path(put, path = "/integrations/credentials/{id}/sharing", tag = "credentials",
    request_body = SharingBody,
    responses((status = 200, body = Credential), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub(super) async fn put_sharing(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<SharingBody>,
) -> Result<Json<Credential>, ApiError> {
    caller.require(&state, MANAGE, Some(&id)).await?;
    let id = parse_id(&id)?;
    let sharing = Sharing::parse(
        body.team,
        body.users.into_iter().map(|g| (g.user_id, g.access)).collect(),
    )?;
    let row = credentials::set_sharing(&state, &caller, &id, sharing).await?;
    let grants = credentials::grants(&state, &row.id).await?;
    Ok(Json(Credential::new(
        &row,
        Access::Manage,
        &grants,
        state.health_of(&row),
    )))
}

/// Uses of a credential in one workflow.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct WorkflowUse {
    workflow_id: String,
    uses: i64,
    last_used_at: chrono::DateTime<chrono::Utc>,
}

/// Who used a credential.
#[derive(Debug, Serialize, ToSchema)]
pub(super) struct UsageView {
    uses_total: i64,
    last_used_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Most recent first.
    workflows: Vec<WorkflowUse>,
}

/// A credential's uses, overall and by workflow (`view`)
#[utoipa::path(get, path = "/integrations/credentials/{id}/usage", tag = "credentials",
    responses((status = 200, body = UsageView), (status = 404, body = Problem)))]
pub(super) async fn get_usage(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<UsageView>, ApiError> {
    caller.require(&state, READ, Some(&id)).await?;
    let usage = credentials::usage(&state, &caller, &parse_id(&id)?).await?;
    Ok(Json(UsageView {
        uses_total: usage.uses_total,
        last_used_at: usage.last_used_at.map(time),
        workflows: usage
            .workflows
            .into_iter()
            .map(|(workflow_id, uses, last)| WorkflowUse {
                workflow_id,
                uses,
                last_used_at: time(last),
            })
            .collect(),
    }))
}
