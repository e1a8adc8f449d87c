//! **Test connection** on the connect form: the typed values probed as
//! they are, answered as JSON for the page's script.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::super::form::fields_from_form;
use super::super::{layout, Posted};
use super::Submitted;
use crate::error::Error;
use crate::http::AppState;
use crate::model::AuthKind;
use crate::providers::FieldError;

/// Test connection with the typed values: JSON for the page's script
/// (`ok`, `message` in words, `errors` by field).
pub(super) async fn test(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
    Posted { session, form }: Posted,
) -> Response {
    let reply = |status: StatusCode, ok: bool, message: String, errors: Vec<FieldError>| {
        (status, Json(json!({"ok": ok, "message": message, "errors": errors}))).into_response()
    };
    let Some(provider) = state.registry.get(&provider_id).filter(|p| session.offers(&p.id)) else {
        return reply(
            StatusCode::NOT_FOUND,
            false,
            "This provider is not offered here.".into(),
            vec![],
        );
    };
    let form = Submitted::from(form);
    let Some(auth) = form
        .auth_type
        .as_deref()
        .and_then(AuthKind::parse)
        .and_then(|k| provider.auth_type(k))
        .filter(|t| t.kind != AuthKind::Oauth2)
    else {
        return reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            false,
            "Pick how to sign in first.".into(),
            vec![],
        );
    };
    if let Err(limited) = state.limits.check_probe(&session.org_id) {
        let message = match limited {
            crate::http::error::ApiError::RateLimited { retry_after_secs } => {
                format!("Too many tests in a short time; wait {retry_after_secs} seconds and try again.")
            }
            _ => "Too many tests in a short time; wait a little and try again.".into(),
        };
        return reply(StatusCode::TOO_MANY_REQUESTS, false, message, vec![]);
    }
    let fields = fields_from_form(&auth.fields, &form.raw);
    let fields = match crate::providers::validate_for(provider.generic, &auth.fields, &fields, &[]) {
        Ok(_) => fields,
        Err(errors) => {
            return reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                false,
                "Some values need attention.".into(),
                errors,
            )
        }
    };
    match crate::execution::probe_fields(&state, &session.org_id, &provider.id, fields).await {
        Ok(result) => reply(StatusCode::OK, result.ok, layout::probe_words(&result), vec![]),
        Err(Error::Validation(errors)) => reply(
            StatusCode::UNPROCESSABLE_ENTITY,
            false,
            "Some values need attention.".into(),
            errors,
        ),
        Err(e) => reply(StatusCode::CONFLICT, false, layout::words(&e), vec![]),
    }
}
