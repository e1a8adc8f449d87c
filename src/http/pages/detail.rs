//! One credential in `/manage`: its non-secret configuration, account,
//! scopes, usage by workflow and audit log (`view`); Test (`use`); Edit,
//! Refresh, Re-authorize and sharing (`manage`).

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

use super::form::{oauth_words, type_words, value};
use super::layout::{self, notice, page, status_badge, when};
use super::manage::sharing_words;
use super::CredentialPath;
use super::{failure, Posted, Session};
use crate::credentials::{self, Sharing};
use crate::error::Error;
use crate::http::AppState;
use crate::ids::{CredentialId, UserId};
use crate::model::{Access, AuthKind};
use crate::sessions::PageSession;
use crate::store::CredentialRow;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/manage/credentials/{id}", get(show))
        .route("/manage/credentials/{id}/test", post(test))
        .route("/manage/credentials/{id}/refresh", post(refresh))
        .route("/manage/credentials/{id}/sharing", post(share))
}

#[derive(Debug, Default, Deserialize)]
struct ShowQuery {
    saved: Option<String>,
    refreshed: Option<String>,
    shared: Option<String>,
    result: Option<String>,
    code: Option<String>,
}

async fn show(
    State(state): State<AppState>,
    session: Session,
    CredentialPath(id): CredentialPath,
    Query(q): Query<ShowQuery>,
) -> Response {
    let text = if q.saved.is_some() {
        Some((true, "Saved.".to_owned()))
    } else if q.refreshed.is_some() {
        Some((true, "The access token was refreshed.".to_owned()))
    } else if q.shared.is_some() {
        Some((true, "Sharing saved.".to_owned()))
    } else {
        match q.result.as_deref() {
            Some("success") => Some((true, "Re-authorized: the account is connected again.".to_owned())),
            Some(_) => Some((false, oauth_words(q.code.as_deref().unwrap_or("")).to_owned())),
            None => None,
        }
    };
    render(&state, &session, &id, text, StatusCode::OK).await
}

/// The detail page with an optional notice (`true`: good news).
async fn render(
    state: &AppState,
    session: &PageSession,
    id: &CredentialId,
    text: Option<(bool, String)>,
    status: StatusCode,
) -> Response {
    let who = session.principal();
    let (row, access) = match credentials::read(state, &who, id).await {
        Ok(found) => found,
        Err(e) => return failure(state, &e).into_response(),
    };
    let mut extra = None;
    if access >= Access::View {
        let grants = credentials::grants(state, &row.id).await;
        let usage = credentials::usage(state, &who, &row.id).await;
        let audit = credentials::audit_log(state, &who, &row.id).await;
        match (grants, usage, audit) {
            (Ok(g), Ok(u), Ok(a)) => extra = Some((g, u, a)),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return failure(state, &e).into_response(),
        }
    }
    let provider = state.registry.get(&row.provider);
    let provider_name = provider.map_or(row.provider.as_str(), |p| p.display_name.as_str());
    let oauth = row.auth_type == AuthKind::Oauth2;
    let body = html! {
        p { a href="/manage" { "← Your credentials" } }
        @if let Some((good, text)) = &text { (notice(*good, text)) }
        dl.facts {
            dt { "Provider" } dd { (provider_name) }
            dt { "Type" } dd { span.badge.type { (type_words(row.auth_type)) } }
            dt { "Status" } dd { (status_badge(row.status, row.last_error.as_ref().map(|e| e.message.as_str()))) }
            dt { "Owner" } dd { (row.owner.as_deref().unwrap_or("the organization")) }
            dt { "Your access" } dd { (row_access_words(access)) }
            dt { "Last used" } dd { (when(row.last_used_at)) }
        }
        div.actions {
            button type="button" #test-credential data-test-url=(format!("/manage/credentials/{}/test", row.id))
                data-test-output="test-result" { "Test" }
            @if access == Access::Manage {
                @if oauth {
                    form.inline method="post" action=(format!("/manage/credentials/{}/refresh", row.id)) {
                        input type="hidden" name="csrf" value=(session.csrf_token);
                        button type="submit" { "Refresh" }
                    }
                    a.button #reauthorize data-popup
                        href=(format!("/manage/credentials/{}/reauthorize?csrf={}", row.id, session.csrf_token)) { "Re-authorize" }
                } @else {
                    a.button href=(format!("/manage/credentials/{}/edit", row.id)) { "Edit" }
                }
                a.button.danger href=(format!("/manage/credentials/{}/delete", row.id)) { "Delete" }
            }
        }
        p #test-result.probe role="status" aria-live="polite" {}
        @if let Some((grants, usage, audit)) = &extra {
            (configuration(state, &row))
            section {
                h2 { "Sharing" }
                p { (sharing_words(&row, grants.len())) }
                @if access == Access::Manage && row.owner.is_some() {
                    (sharing_form(session, &row, grants))
                }
            }
            section {
                h2 { "Usage by workflow" }
                p { (usage.uses_total) " uses in all; last " (when(usage.last_used_at)) "." }
                @if !usage.workflows.is_empty() {
                    div.table-wrap { table #usage {
                        thead { tr { th scope="col" { "Workflow" } th scope="col" { "Uses" } th scope="col" { "Last use" } } }
                        tbody { @for (workflow, uses, last) in usage.workflows.iter() {
                            tr { td { (workflow) } td { (uses) } td { (when(Some(*last))) } }
                        } }
                    } }
                }
            }
            section {
                h2 { "Audit log" }
                div.table-wrap { table #audit {
                    thead { tr { th scope="col" { "When" } th scope="col" { "What" } th scope="col" { "Outcome" } th scope="col" { "Who" } } }
                    tbody { @for e in audit.iter().take(100) {
                        tr { td { (when(Some(e.at))) } td { (e.action) } td { (e.outcome) } td { (e.actor) } }
                    } }
                } }
            }
        } @else {
            p.hint { "It is shared with you for use in workflows; its details are not shown to you." }
        }
    };
    super::Html::new(state, status, page(&row.name, session, body)).into_response()
}

fn row_access_words(access: Access) -> &'static str {
    match access {
        Access::Use => "Use in workflows",
        Access::View => "Use and view",
        Access::Manage => "Manage",
    }
}

/// Non-secret configuration, the names of set secrets, account and scopes.
fn configuration(state: &AppState, row: &CredentialRow) -> Markup {
    let defs = state
        .registry
        .get(&row.provider)
        .and_then(|p| p.auth_type(row.auth_type))
        .map(|a| a.fields.clone())
        .unwrap_or_default();
    let label = |name: &str| {
        defs.iter()
            .find(|d| d.name == name)
            .map_or_else(|| name.to_owned(), |d| d.label.clone())
    };
    html! {
        section {
            h2 { "Configuration" }
            dl.facts #configuration {
                @for (k, v) in &row.fields {
                    dt { (label(k)) } dd { (v.as_str().map_or_else(|| v.to_string(), str::to_owned)) }
                }
                @for name in &row.secret_names {
                    dt { (label(name)) } dd.secret { "set (hidden)" }
                }
                @if let Some(account) = &row.account_id {
                    dt { "Account" }
                    dd { (row.account_email.as_deref().or(row.account_name.as_deref()).unwrap_or(account)) }
                }
                @if let Some(scopes) = &row.scopes {
                    dt { "Scopes" } dd { (scopes.join(" ")) }
                }
                @if row.expires_at.is_some() {
                    dt { "Token expires" } dd { (when(row.expires_at)) }
                }
                @if let Some(e) = &row.last_error {
                    dt { "Last error" } dd { (e.message) }
                }
            }
        }
    }
}

const LEVELS: [(&str, &str); 4] = [("", "No"), ("use", "Use"), ("view", "View"), ("manage", "Manage")];

fn sharing_form(session: &PageSession, row: &CredentialRow, grants: &[(UserId, Access)]) -> Markup {
    let team = row.team_access.map_or("", Access::as_str);
    html! {
        form #sharing method="post" action=(format!("/manage/credentials/{}/sharing", row.id)) {
            input type="hidden" name="csrf" value=(session.csrf_token);
            div.field {
                label for="team" { "Everyone in the organization" }
                select #team name="team" {
                    @for (value, words) in LEVELS {
                        option value=(value) selected[team == value] { (if value.is_empty() { "No access" } else { words }) }
                    }
                }
            }
            @for (i, (user, access)) in grants.iter().enumerate() {
                div.field.grant {
                    label for=(format!("user-{i}")) { "Person" }
                    input #(format!("user-{i}")) name="user" value=(user) readonly;
                    label for=(format!("access-{i}")) { "Access" }
                    select #(format!("access-{i}")) name="access" {
                        @for (value, words) in LEVELS {
                            option value=(value) selected[access.as_str() == value] {
                                (if value.is_empty() { "Remove" } else { words })
                            }
                        }
                    }
                }
            }
            div.field.grant {
                label for="user-new" { "Share with a person (user id)" }
                input #user-new name="user" autocomplete="off";
                label for="access-new" { "Access" }
                select #access-new name="access" {
                    @for (value, words) in LEVELS.iter().skip(1) { option value=(value) { (words) } }
                }
            }
            button type="submit" { "Save sharing" }
        }
    }
}

async fn test(
    State(state): State<AppState>,
    CredentialPath(id): CredentialPath,
    Posted { session, .. }: Posted,
) -> Response {
    if let Err(crate::http::error::ApiError::RateLimited { retry_after_secs }) =
        state.limits.check_probe(&session.org_id)
    {
        let message = format!("Too many tests in a short time; wait {retry_after_secs} seconds and try again.");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            Json(json!({"ok": false, "message": message})),
        )
            .into_response();
    }
    match crate::execution::test(&state, &session.principal(), &id).await {
        Ok(result) => Json(json!({"ok": result.ok, "message": layout::probe_words(&result)})).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(json!({"ok": false, "message": layout::words(&e)})),
        )
            .into_response(),
    }
}

async fn refresh(
    State(state): State<AppState>,
    CredentialPath(id): CredentialPath,
    Posted { session, .. }: Posted,
) -> Response {
    let refreshed = crate::oauth::refresh::refresh_now(&state, &session.principal(), &id).await;
    after_change(&state, &session, &id, refreshed, "refreshed", StatusCode::CONFLICT).await
}

/// After a change: back to the detail page with `done` in its query, or the
/// page again with the failure in words (`NotFound` is a plain refusal).
async fn after_change(
    state: &AppState,
    session: &PageSession,
    id: &CredentialId,
    changed: Result<CredentialRow, Error>,
    done: &str,
    status: StatusCode,
) -> Response {
    match changed {
        Ok(row) => Redirect::to(&format!("/manage/credentials/{}?{done}=1", row.id)).into_response(),
        Err(e @ Error::NotFound) => failure(state, &e).into_response(),
        Err(e) => render(state, session, id, Some((false, layout::words(&e))), status).await,
    }
}

async fn share(
    State(state): State<AppState>,
    CredentialPath(id): CredentialPath,
    Posted { session, form }: Posted,
) -> Response {
    let team = value(&form, "team").and_then(Access::parse);
    let users: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "user")
        .map(|(_, v)| v.trim())
        .collect();
    let levels: Vec<&str> = form
        .iter()
        .filter(|(k, _)| k == "access")
        .map(|(_, v)| v.as_str())
        .collect();
    let users = users
        .into_iter()
        .zip(levels)
        .filter(|(user, _)| !user.is_empty())
        .filter_map(|(user, level)| Access::parse(level).map(|a| (user.to_owned(), a)))
        .collect();
    let shared = match Sharing::parse(team, users) {
        Ok(sharing) => credentials::set_sharing(&state, &session.principal(), &id, sharing).await,
        Err(e) => Err(e),
    };
    after_change(
        &state,
        &session,
        &id,
        shared,
        "shared",
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await
}
