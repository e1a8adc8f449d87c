//! `/manage/secrets`: the organization's secrets by name — a table of names
//! with created, updated and last used; a form to add or replace one (the
//! value a password input, never filled or echoed back); delete with a
//! confirmation naming the secret. Acts as the session's user through
//! [`crate::named_secrets`].

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use maud::{html, Markup};
use secrecy::SecretString;
use serde::Deserialize;

use super::form;
use super::layout::{manage_tabs, notice, page, when};
use super::{failure, ok, refusal, Html, Posted, Session};
use crate::error::Error;
use crate::http::AppState;
use crate::named_secrets::{self, valid_name, Written, MAX_NAME_LEN};
use crate::providers::FieldError;
use crate::sessions::PageSession;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/manage/secrets", get(list).post(save))
        .route("/manage/secrets/{name}/delete", get(confirm_delete).post(delete_one))
}

/// What the list page says after a change (names only, checked).
#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    created: Option<String>,
    replaced: Option<String>,
    deleted: Option<String>,
    /// Fills the form's name, to replace that secret.
    name: Option<String>,
}

/// The name of `value` if it is one; anything else is not shown.
fn shown(value: Option<&String>) -> Option<&str> {
    value.map(String::as_str).filter(|n| valid_name(n))
}

async fn list(State(state): State<AppState>, session: Session, Query(query): Query<ListQuery>) -> Response {
    let message = match (
        shown(query.created.as_ref()),
        shown(query.replaced.as_ref()),
        shown(query.deleted.as_ref()),
    ) {
        (Some(n), _, _) => Some(format!("Secret {n} added.")),
        (_, Some(n), _) => Some(format!("Secret {n} replaced with the new value.")),
        (_, _, Some(n)) => Some(format!("Secret {n} deleted.")),
        _ => None,
    };
    let name = shown(query.name.as_ref()).unwrap_or_default().to_owned();
    render(&state, &session, StatusCode::OK, message, &name, &[]).await
}

/// The list and the form; `errors` sit beside their fields.
async fn render(
    state: &AppState,
    session: &PageSession,
    status: StatusCode,
    message: Option<String>,
    name: &str,
    errors: &[FieldError],
) -> Response {
    let items = match named_secrets::list(state, &session.principal()).await {
        Ok(items) => items,
        Err(e) => return failure(state, &e).into_response(),
    };
    let body = html! {
        (manage_tabs("/manage/secrets"))
        @if let Some(m) = &message { (notice(true, m)) }
        @if !errors.is_empty() { (notice(false, "The secret was not saved: see below.")) }
        p.hint {
            "Secrets by name are values your organization's workflows use by name, such as "
            code { "SMTP_PASSWORD" } ". They are write-only: nobody can read a value back here. "
            "To change one, save it again with a new value."
        }
        p.count { (items.len()) " " (if items.len() == 1 { "secret" } else { "secrets" }) }
        @if items.is_empty() {
            p.empty { "No secrets yet." }
        } @else {
            div.table-wrap {
                table.secrets {
                    thead { tr {
                        th scope="col" { "Name" }
                        th scope="col" { "Created" }
                        th scope="col" { "Updated" }
                        th scope="col" { "Last used" }
                        th scope="col" { "Actions" }
                    } }
                    tbody {
                        @for s in &items {
                            tr data-name=(s.name) {
                                td { code { (s.name) } }
                                td { (when(Some(s.created_at))) }
                                td { (when(Some(s.updated_at))) }
                                td { (when(s.last_used_at)) }
                                td { div.row-actions {
                                    a.button href=(format!("/manage/secrets?name={}#secret-form", s.name))
                                        aria-label=(format!("Replace {}", s.name)) { "Replace" }
                                    a.button.danger href=(format!("/manage/secrets/{}/delete", s.name))
                                        aria-label=(format!("Delete {}", s.name)) { "Delete" }
                                } }
                            }
                        }
                    }
                }
            }
        }
        h2 #add { "Add or replace a secret" }
        (secret_form(session, name, errors))
    };
    Html::new(state, status, page("Your organization's secrets", session, body)).into_response()
}

fn error_for<'a>(errors: &'a [FieldError], field: &str) -> Option<&'a str> {
    errors.iter().find(|e| e.field == field).map(|e| e.message.as_str())
}

/// Name and value; the value input never carries a value.
fn secret_form(session: &PageSession, name: &str, errors: &[FieldError]) -> Markup {
    let name_error = error_for(errors, "name");
    let value_error = error_for(errors, "value");
    html! {
        form #secret-form method="post" action="/manage/secrets" {
            input type="hidden" name="csrf" value=(session.csrf_token);
            div.field.invalid[name_error.is_some()] {
                label for="s-name" { "Name" span.req aria-hidden="true" { " *" } span.sr { " (required)" } }
                input #s-name name="name" type="text" value=(name) required maxlength=(MAX_NAME_LEN)
                    pattern="[A-Z][A-Z0-9_]*" autocomplete="off" spellcheck="false" autocapitalize="characters"
                    aria-describedby="s-name-hint" aria-invalid=[name_error.map(|_| "true")];
                p.hint #s-name-hint {
                    "Upper-case letters, digits and underscores, starting with a letter. "
                    "Saving an existing name replaces its value."
                }
                @if let Some(m) = name_error { p.field-error #s-name-error { "Name " (m) } }
            }
            div.field.invalid[value_error.is_some()] {
                label for="s-value" { "Value" span.req aria-hidden="true" { " *" } span.sr { " (required)" } }
                input #s-value name="value" type="password" required autocomplete="new-password" spellcheck="false"
                    aria-invalid=[value_error.map(|_| "true")];
                @if let Some(m) = value_error { p.field-error #s-value-error { "Value " (m) } }
            }
            div.actions { button.primary #save-secret type="submit" { "Save secret" } }
        }
    }
}

async fn save(State(state): State<AppState>, Posted { session, form }: Posted) -> Response {
    let name = form::value(&form, "name").unwrap_or_default().trim().to_owned();
    let value = SecretString::from(form::value(&form, "value").unwrap_or_default().to_owned());
    match named_secrets::put(&state, &session.principal(), &name, &value).await {
        Ok((Written::Created, meta)) => Redirect::to(&format!("/manage/secrets?created={}", meta.name)).into_response(),
        Ok((Written::Replaced, meta)) => {
            Redirect::to(&format!("/manage/secrets?replaced={}", meta.name)).into_response()
        }
        Err(Error::Validation(errors)) => {
            // A name that does not fit is not shown again: it may be a value
            // pasted into the wrong box.
            let name = if valid_name(&name) { name.as_str() } else { "" };
            render(&state, &session, StatusCode::UNPROCESSABLE_ENTITY, None, name, &errors).await
        }
        Err(e) => failure(&state, &e).into_response(),
    }
}

fn no_such_secret(state: &AppState) -> Response {
    refusal(
        state,
        StatusCode::NOT_FOUND,
        "No such secret",
        "This secret does not exist (it may have been deleted already).",
    )
    .into_response()
}

async fn confirm_delete(State(state): State<AppState>, session: Session, Path(name): Path<String>) -> Response {
    let items = match named_secrets::list(&state, &session.principal()).await {
        Ok(items) => items,
        Err(e) => return failure(&state, &e).into_response(),
    };
    let Some(secret) = items.into_iter().find(|s| s.name == name) else {
        return no_such_secret(&state);
    };
    let body = html! {
        p { "Delete the secret " strong { code { (secret.name) } } "? Workflows that use it will stop working. "
            "This cannot be undone." }
        form method="post" action=(format!("/manage/secrets/{}/delete", secret.name)) {
            input type="hidden" name="csrf" value=(session.csrf_token);
            div.actions {
                button.danger #confirm-delete type="submit" { "Delete " (secret.name) }
                a.button href="/manage/secrets" { "Cancel" }
            }
        }
    };
    ok(&state, page("Delete this secret?", &session, body)).into_response()
}

async fn delete_one(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Posted { session, .. }: Posted,
) -> Response {
    match named_secrets::delete(&state, &session.principal(), &name).await {
        Ok(()) => Redirect::to(&format!("/manage/secrets?deleted={name}")).into_response(),
        Err(Error::NotFound | Error::Validation(_)) => no_such_secret(&state),
        Err(e) => failure(&state, &e).into_response(),
    }
}
