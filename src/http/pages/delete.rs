//! Deleting from `/manage`: one credential, with a confirmation naming it,
//! or the selected ones (at most a page's worth), with a confirmation
//! showing how many and which.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;

use super::layout::{notice, page};
use super::CredentialPath;
use super::{failure, ok, Posted, Session};
use crate::credentials::{self, MAX_PER_PAGE};
use crate::http::AppState;
use crate::ids::CredentialId;
use crate::model::Access;
use crate::sessions::PageSession;
use crate::store::CredentialRow;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/manage/credentials/{id}/delete", get(confirm_delete).post(delete_one))
        .route("/manage/delete-selected", post(confirm_selected))
        .route("/manage/delete-selected/confirm", post(delete_selected))
}

async fn confirm_delete(
    State(state): State<AppState>,
    session: Session,
    CredentialPath(id): CredentialPath,
) -> Response {
    let row = match credentials::read(&state, &session.principal(), &id).await {
        Ok((row, Access::Manage)) => row,
        Ok(_) => return failure(&state, &crate::error::Error::Forbidden).into_response(),
        Err(e) => return failure(&state, &e).into_response(),
    };
    let body = html! {
        p { "Delete " strong { "“" (row.name) "”" } "? Workflows that use it will stop working. This cannot be undone." }
        form method="post" action=(format!("/manage/credentials/{}/delete", row.id)) {
            input type="hidden" name="csrf" value=(session.csrf_token);
            div.actions {
                button.danger type="submit" { "Delete “" (row.name) "”" }
                a.button href=(format!("/manage/credentials/{}", row.id)) { "Cancel" }
            }
        }
    };
    ok(&state, page("Delete this credential?", &session, body)).into_response()
}

async fn delete_one(
    State(state): State<AppState>,
    CredentialPath(id): CredentialPath,
    Posted { session, .. }: Posted,
) -> Response {
    match credentials::delete(&state, &session.principal(), &[id]).await {
        Ok(deleted) if deleted.is_empty() => failure(&state, &crate::error::Error::NotFound).into_response(),
        Ok(deleted) => Redirect::to(&format!("/manage?deleted={}", deleted.len())).into_response(),
        Err(e) => failure(&state, &e).into_response(),
    }
}

/// The selected ids (at most a page's worth), those the user may manage.
async fn selected(
    state: &AppState,
    session: &PageSession,
    form: &[(String, String)],
) -> Result<Vec<CredentialRow>, crate::error::Error> {
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (_, id) in form.iter().filter(|(k, _)| k == "ids").take(MAX_PER_PAGE as usize) {
        let Ok(id) = CredentialId::parse(id) else { continue };
        if !seen.insert(id.clone()) {
            continue;
        }
        match credentials::read(state, &session.principal(), &id).await {
            Ok((row, Access::Manage)) => rows.push(row),
            Ok(_) | Err(crate::error::Error::NotFound | crate::error::Error::Forbidden) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(rows)
}

async fn confirm_selected(State(state): State<AppState>, Posted { session, form }: Posted) -> Response {
    let rows = match selected(&state, &session, &form).await {
        Ok(rows) => rows,
        Err(e) => return failure(&state, &e).into_response(),
    };
    if rows.is_empty() {
        let body = html! {
            (notice(false, "Select at least one credential you may delete, then press Delete selected."))
            p { a href="/manage" { "Back to your credentials" } }
        };
        return super::Html::new(
            &state,
            StatusCode::UNPROCESSABLE_ENTITY,
            page("Nothing selected", &session, body),
        )
        .into_response();
    }
    let n = rows.len();
    let title = format!("Delete {n} {}?", if n == 1 { "credential" } else { "credentials" });
    let body = html! {
        p { "Workflows that use them will stop working. This cannot be undone." }
        ul.names { @for row in &rows { li { (row.name) } } }
        form method="post" action="/manage/delete-selected/confirm" {
            input type="hidden" name="csrf" value=(session.csrf_token);
            @for row in &rows { input type="hidden" name="ids" value=(row.id); }
            div.actions {
                button.danger #confirm-delete type="submit" { "Delete " (n) " " (if n == 1 { "credential" } else { "credentials" }) }
                a.button href="/manage" { "Cancel" }
            }
        }
    };
    ok(&state, page(&title, &session, body)).into_response()
}

async fn delete_selected(State(state): State<AppState>, Posted { session, form }: Posted) -> Response {
    let ids: Vec<CredentialId> = form
        .iter()
        .filter(|(k, _)| k == "ids")
        .filter_map(|(_, v)| CredentialId::parse(v).ok())
        .take(MAX_PER_PAGE as usize)
        .collect();
    match credentials::delete(&state, &session.principal(), &ids).await {
        Ok(deleted) => Redirect::to(&format!("/manage?deleted={}", deleted.len())).into_response(),
        Err(e) => failure(&state, &e).into_response(),
    }
}
