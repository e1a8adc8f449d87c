//! The small page a person sees after connecting when there is no
//! `return_to`: the result in words, on the pages' layout and CSP. Opened
//! as a popup, the pages' script posts the result to its opener (only to
//! the allowed origins, never `*`) and closes it.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{layout, Html};
use crate::http::AppState;
use crate::ids::CredentialId;
use crate::oauth_client::OAuthError;

/// Renders the result page; `origins` are where it may post its message.
pub fn result_page(
    state: &AppState,
    provider: &str,
    result: &Result<CredentialId, OAuthError>,
    origins: &[String],
) -> Response {
    let (title, words, message) = match result {
        Ok(id) => (
            "Connected",
            format!("Your {provider} account is connected. You can close this window."),
            serde_json::json!({"source": "credgate", "result": "success", "provider": provider, "credential_id": id}),
        ),
        Err(e) => (
            "Connection failed",
            format!("The {provider} account was not connected: {}.", e.message),
            serde_json::json!({"source": "credgate", "result": "error", "provider": provider, "code": e.code}),
        ),
    };
    let origins = serde_json::Value::from(origins.to_vec());
    let body = html! {
        div #done data-message=(message.to_string()) data-origins=(origins.to_string()) {
            p #result role=(if result.is_ok() { "status" } else { "alert" }) { (words) }
        }
    };
    Html::new(state, StatusCode::OK, layout::bare(title, body)).into_response()
}
