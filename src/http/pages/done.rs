//! `/connect/done`: the end of a connect journey. It tells the opener (the
//! allowed return origins only) and closes, or goes back to `return_to`, or
//! says what happened.

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

use super::form::oauth_words;
use super::layout::page;
use super::{failure, ok, Session};
use crate::credentials;
use crate::http::AppState;
use crate::ids::CredentialId;
use crate::oauth::return_to::allowed_origins;

pub fn router() -> Router<AppState> {
    Router::new().route("/connect/done", get(done))
}

#[derive(Debug, Deserialize)]
struct DoneQuery {
    result: Option<String>,
    credential_id: Option<String>,
    code: Option<String>,
}

/// The end: tells the opener (allowed origins only) and closes, or goes
/// back to `return_to`, or says what happened.
async fn done(State(state): State<AppState>, session: Session, Query(query): Query<DoneQuery>) -> Response {
    let success = query.result.as_deref() == Some("success");
    let credential = match (query.credential_id.as_deref().map(CredentialId::parse), success) {
        (Some(Err(_)), true) => return failure(&state, &crate::error::Error::NotFound).into_response(),
        (Some(Ok(id)), true) => match credentials::read(&state, &session.principal(), &id).await {
            Ok((row, _)) => Some(row),
            Err(e) => return failure(&state, &e).into_response(),
        },
        _ => None,
    };
    let code = query.code.as_deref().unwrap_or("provider_error");
    let code = if code.len() <= 64 && code.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        code
    } else {
        "provider_error"
    };
    let message = match &credential {
        Some(row) => {
            json!({"source": "credgate", "result": "success", "credential_id": row.id, "provider": row.provider})
        }
        None => json!({"source": "credgate", "result": "error", "code": code}),
    };
    let return_to = session
        .return_to
        .as_deref()
        .and_then(|r| url::Url::parse(r).ok())
        .map(|mut u| {
            {
                let mut pairs = u.query_pairs_mut();
                match &credential {
                    Some(row) => pairs
                        .append_pair("credential_id", &row.id)
                        .append_pair("result", "success"),
                    None => pairs.append_pair("result", "error").append_pair("code", code),
                };
            }
            u.to_string()
        });
    let origins = Value::from(allowed_origins(&state.config.allowed_return_urls));
    let body: Markup = html! {
        div #done data-message=(message.to_string()) data-origins=(origins.to_string()) data-return-to=[return_to.as_deref()] {
            @match &credential {
                Some(row) => {
                    p.notice.ok role="status" { "✓ Connected: " strong { (row.name) } "." }
                }
                None => { p.notice.bad role="alert" { "✗ " (oauth_words(code)) } }
            }
            @if let Some(url) = &return_to {
                p { a.button.primary href=(url) { "Continue" } }
            } @else {
                p { "You can close this window." }
            }
        }
    };
    let title = if credential.is_some() {
        "Connected"
    } else {
        "Not connected"
    };
    ok(&state, page(title, &session, body)).into_response()
}
