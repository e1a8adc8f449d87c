//! `POST /integrations/sessions`: a hosted-page session for one user; the
//! answer's `url` opens `/connect` or `/manage` once.

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::credentials::{parse_id, view::time};
use super::error::{ApiError, Problem};
use super::extract::{ApiJson, Caller, NoStore};
use super::AppState;
use crate::sessions::{self, NewSession, Purpose};

/// Session routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_session))
}

/// Which page the session opens.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum PurposeBody {
    Connect,
    Manage,
}

/// A session request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateSession {
    /// The person the pages act for; default: the API key's user.
    #[schema(max_length = 200)]
    user_id: Option<String>,
    purpose: PurposeBody,
    /// Providers offered (default: all).
    #[schema(min_items = 1)]
    providers: Option<Vec<String>>,
    /// `connect`: re-connect or re-enter this credential; `manage`: open it.
    credential_id: Option<String>,
    /// Where to send the person at the end (one of `CREDGATE_ALLOWED_RETURN_URLS`).
    return_to: Option<String>,
    /// Seconds, 60 to 3600 (default 1800).
    #[schema(minimum = 60, maximum = 3600)]
    expires_in: Option<i64>,
}

/// The page's one-time URL.
#[derive(Debug, Serialize, ToSchema)]
struct SessionCreated {
    /// Opens once; send the person's browser here.
    url: String,
    expires_at: DateTime<Utc>,
}

/// Open a hosted-page session for a user
#[utoipa::path(post, path = "/integrations/sessions", tag = "sessions",
    request_body = CreateSession,
    responses((status = 201, body = SessionCreated), (status = 403, body = Problem),
              (status = 404, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn create_session(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateSession>,
) -> Result<(StatusCode, NoStore<SessionCreated>), ApiError> {
    let input = NewSession {
        user_id: body.user_id,
        purpose: match body.purpose {
            PurposeBody::Connect => Purpose::Connect,
            PurposeBody::Manage => Purpose::Manage,
        },
        providers: body.providers,
        credential_id: body.credential_id.as_deref().map(parse_id).transpose()?,
        return_to: body.return_to,
        expires_in: body.expires_in,
    };
    let opened = sessions::create(&state, &caller, input).await?;
    let url = format!(
        "{}/{}?session={}",
        state.config.public_url,
        opened.purpose.as_str(),
        opened.token.expose_secret()
    );
    Ok((
        StatusCode::CREATED,
        NoStore(SessionCreated {
            url,
            expires_at: time(opened.expires_at),
        }),
    ))
}
