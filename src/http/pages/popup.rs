//! The two links that start an OAuth flow in a popup: Connect on
//! `/connect/{provider}` and Re-authorize on a credential in `/manage`. Each
//! carries the session's CSRF token, starts the flow as the session's user
//! and sends the popup to the provider; the callback's result page tells the
//! opening page how it ended.

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

use super::connect::offered;
use super::form::CsrfQuery;
use super::CredentialPath;
use super::{failure, forged, same_page, Session};
use crate::credentials;
use crate::http::AppState;
use crate::oauth::flow::{self, AuthorizeInput};
use crate::sessions::PageSession;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/connect/{provider}/oauth", get(connect))
        .route("/manage/credentials/{id}/reauthorize", get(reauthorize))
}

/// Connect (or, for a session with a credential, re-connect) a provider.
async fn connect(
    State(state): State<AppState>,
    session: Session,
    Path(provider_id): Path<String>,
    headers: HeaderMap,
    Query(query): Query<CsrfQuery>,
) -> Response {
    if !same_page(&state, &session, &headers, query.csrf.as_deref()) {
        return forged(&state).into_response();
    }
    if let Err(refusal) = offered(&state, &session, &provider_id) {
        return refusal.into_response();
    }
    let input = AuthorizeInput {
        credential_id: session.credential_id.clone(),
        server_url: query.server_url.filter(|u| !u.trim().is_empty()),
        ..AuthorizeInput::default()
    };
    start(&state, &session, &provider_id, input).await
}

/// Re-authorize one credential in place.
async fn reauthorize(
    State(state): State<AppState>,
    session: Session,
    CredentialPath(id): CredentialPath,
    headers: HeaderMap,
    Query(query): Query<CsrfQuery>,
) -> Response {
    if !same_page(&state, &session, &headers, query.csrf.as_deref()) {
        return forged(&state).into_response();
    }
    let row = match credentials::read(&state, &session.principal(), &id).await {
        Ok((row, _)) => row,
        Err(e) => return failure(&state, &e).into_response(),
    };
    let input = AuthorizeInput {
        credential_id: Some(row.id),
        ..AuthorizeInput::default()
    };
    start(&state, &session, &row.provider, input).await
}

/// Starts the flow for the session's user and redirects to the provider.
async fn start(state: &AppState, session: &PageSession, provider_id: &str, input: AuthorizeInput) -> Response {
    match flow::authorize(state, &session.principal(), provider_id, input).await {
        Ok(started) => Redirect::to(&started.authorize_url).into_response(),
        Err(e) => failure(state, &e).into_response(),
    }
}
