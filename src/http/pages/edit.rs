//! Edit a credential from `/manage`: every field entered again (secrets are
//! never shown back), as the API's PATCH requires.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::html;

use super::connect::kv_names;
use super::form::{fields_from_form, key_value_from_form, key_value_rows, public_values, text_of, value};
use super::layout::{self, field_input, name_input, notice, other_errors, page};
use super::CredentialPath;
use super::{failure, Posted, Session};
use crate::credentials::{self, Changes};
use crate::error::Error;
use crate::http::AppState;
use crate::model::Access;
use crate::providers::{FieldError, Generic};
use crate::sessions::PageSession;
use crate::store::CredentialRow;

pub fn router() -> Router<AppState> {
    Router::new().route("/manage/credentials/{id}/edit", get(edit).post(save_edit))
}

async fn edit(State(state): State<AppState>, session: Session, CredentialPath(id): CredentialPath) -> Response {
    let row = match credentials::read(&state, &session.principal(), &id).await {
        Ok((row, Access::Manage)) => row,
        Ok(_) => return failure(&state, &Error::Forbidden).into_response(),
        Err(e) => return failure(&state, &e).into_response(),
    };
    let name = row.name.clone();
    let values = row.fields.clone();
    edit_form(&state, &session, &row, &name, &values, &[], None, StatusCode::OK)
}

#[expect(
    clippy::too_many_arguments,
    reason = "one form, its values, its errors and its status"
)]
fn edit_form(
    state: &AppState,
    session: &PageSession,
    row: &CredentialRow,
    name: &str,
    values: &serde_json::Map<String, serde_json::Value>,
    errors: &[FieldError],
    text: Option<String>,
    status: StatusCode,
) -> Response {
    let Some(auth) = state
        .registry
        .get(&row.provider)
        .and_then(|p| p.auth_type(row.auth_type))
    else {
        return failure(
            state,
            &Error::Conflict("no_form", "this credential's provider is no longer offered".into()),
        )
        .into_response();
    };
    let key_value = state.registry.get(&row.provider).and_then(|p| p.generic) == Some(Generic::KeyValue);
    let body = html! {
        p { a href=(format!("/manage/credentials/{}", row.id)) { "← Back" } }
        @if let Some(text) = &text { (notice(false, text)) }
        p.hint { "Enter every value again: secrets are never shown back, and saving replaces all of them." }
        form #credential-form method="post" action=(format!("/manage/credentials/{}/edit", row.id)) novalidate {
            input type="hidden" name="csrf" value=(session.csrf_token);
            (name_input(name, errors))
            @if key_value {
                (key_value_rows(&kv_names(row), errors))
            } @else {
                @for def in &auth.fields {
                    (field_input(def, text_of(values.get(&def.name)).as_deref(), errors))
                }
                (other_errors(errors, &auth.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>()))
            }
            div.actions { button.primary type="submit" { "Save" } }
        }
    };
    super::Html::new(state, status, page(&format!("Edit {}", row.name), session, body)).into_response()
}

async fn save_edit(
    State(state): State<AppState>,
    CredentialPath(id): CredentialPath,
    Posted { session, form }: Posted,
) -> Response {
    let who = session.principal();
    let row = match credentials::read(&state, &who, &id).await {
        Ok((row, _)) => row,
        Err(e) => return failure(&state, &e).into_response(),
    };
    let Some(defs) = state
        .registry
        .get(&row.provider)
        .and_then(|p| p.auth_type(row.auth_type))
        .map(|a| a.fields.clone())
    else {
        return failure(&state, &Error::NotFound).into_response();
    };
    let (fields, public) = if state.registry.get(&row.provider).and_then(|p| p.generic) == Some(Generic::KeyValue) {
        key_value_from_form(&form)
    } else {
        (fields_from_form(&defs, &form), Vec::new())
    };
    let name = value(&form, "name").unwrap_or_default().to_owned();
    let changes = Changes {
        name: Some(name.clone()),
        fields: Some(fields.clone()),
        public,
        expires_at: None,
    };
    match credentials::update(&state, &who, &id, changes).await {
        Ok(row) => Redirect::to(&format!("/manage/credentials/{}?saved=1", row.id)).into_response(),
        Err(Error::Validation(errors)) => {
            let values = public_values(&defs, &fields);
            edit_form(
                &state,
                &session,
                &row,
                &name,
                &values,
                &errors,
                None,
                StatusCode::UNPROCESSABLE_ENTITY,
            )
        }
        Err(e @ Error::NotFound) => failure(&state, &e).into_response(),
        Err(e) => {
            let values = public_values(&defs, &fields);
            edit_form(
                &state,
                &session,
                &row,
                &name,
                &values,
                &[],
                Some(layout::words(&e)),
                StatusCode::CONFLICT,
            )
        }
    }
}
