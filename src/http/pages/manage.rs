//! `/manage`: the person's credentials as sharing allows, 50 a page, with
//! search, filters (health: what needs attention), a Test button per row,
//! health ("Expires in 3 days") with Reconnect, and Delete per row and
//! Delete selected (N), whose confirmations are `delete`'s.

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::{html, Markup};
use serde::Deserialize;

use super::form::type_words;
use super::layout::{manage_tabs, notice, page, status_badge, when};
use super::CredentialPath;
use super::{enter, failure, ok, session_from, Posted};
use crate::credentials::{self, MAX_PER_PAGE};
use crate::http::auth::ClientIp;
use crate::http::AppState;
use crate::model::{Access, CredentialStatus, Health};
use crate::sessions::Purpose;
use crate::store::HealthFilter;
use crate::store::{CredentialFilter, CredentialRow};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/manage", get(list))
        .route("/manage/credentials/{id}/reconnect", post(reconnect))
}

#[derive(Debug, Default, Deserialize)]
struct ListQuery {
    session: Option<String>,
    q: Option<String>,
    provider: Option<String>,
    status: Option<String>,
    health: Option<String>,
    page: Option<String>,
    deleted: Option<String>,
}

/// The health filter's choices: what needs attention (anything but `ok`),
/// or one health.
const HEALTH_CHOICES: [(&str, &str); 5] = [
    ("attention", "Needs attention"),
    ("needs_reauth", "Needs reconnecting"),
    ("failing", "Failing"),
    ("expiring", "Expiring soon"),
    ("ok", "OK"),
];

/// A credential's health in words, and whether Reconnect helps.
fn health_words(state: &AppState, row: &CredentialRow) -> (&'static str, String, bool) {
    let days_left = row.ends_at().map(|end| (end - state.now() + 86_399).div_euclid(86_400));
    match state.health_of(row) {
        Health::Ok => ("badge active", "OK".into(), false),
        Health::Failing => ("badge error", "Failing".into(), false),
        Health::NeedsReauth => ("badge reauth", "Needs reconnecting".into(), true),
        Health::Expiring => {
            let words = match days_left {
                Some(1) => "Expires in 1 day".into(),
                Some(n) if n > 1 => format!("Expires in {n} days"),
                _ => "Expires today".into(),
            };
            ("badge expired", words, true)
        }
    }
}

fn status_words(s: CredentialStatus) -> &'static str {
    match s {
        CredentialStatus::Active => "Active",
        CredentialStatus::Expired => "Expired",
        CredentialStatus::NeedsReauth => "Needs re-authorization",
        CredentialStatus::Error => "Error",
    }
}

/// "Personal", "Team (use)", "3 people", …
pub fn sharing_words(row: &CredentialRow, users: usize) -> String {
    match (row.owner.is_none(), row.team_access, users) {
        (true, _, _) => "Organization".into(),
        (false, Some(team), 0) => format!("Team ({})", team.as_str()),
        (false, Some(team), n) => format!("Team ({}) and {n} {}", team.as_str(), people(n)),
        (false, None, 0) => "Personal".into(),
        (false, None, n) => format!("Shared with {n} {}", people(n)),
    }
}

fn people(n: usize) -> &'static str {
    if n == 1 {
        "person"
    } else {
        "people"
    }
}

async fn list(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Query(query): Query<ListQuery>,
) -> Response {
    if let Some(response) = enter(&state, ip, Purpose::Manage, query.session.as_deref()).await {
        return response;
    }
    let session = match session_from(&state, &headers, ip, Purpose::Manage).await {
        Ok(s) => s,
        Err(refusal) => return refusal.into_response(),
    };
    let page_no = query
        .page
        .as_deref()
        .and_then(|p| p.parse::<i64>().ok())
        .filter(|p| (1..=100_000).contains(p))
        .unwrap_or(1);
    let provider = query
        .provider
        .clone()
        .filter(|p| !p.is_empty() && state.registry.get(p).is_some());
    let status = query.status.as_deref().and_then(CredentialStatus::parse);
    let health_choice = query
        .health
        .as_deref()
        .filter(|h| HEALTH_CHOICES.iter().any(|(v, _)| v == h));
    let health_filter = match health_choice {
        Some("attention") => Some(HealthFilter::NeedsAttention),
        Some(h) => Health::parse(h).map(HealthFilter::Is),
        None => None,
    };
    let q = query
        .q
        .clone()
        .map(|q| q.trim().chars().take(200).collect::<String>())
        .filter(|q| !q.is_empty());
    let filter = CredentialFilter {
        provider: provider.clone(),
        status,
        health: health_filter.map(|h| (h, state.now() / 60 * 60, state.expiry_warn_secs())),
        q: q.clone(),
        page: page_no,
        per_page: MAX_PER_PAGE,
        ..CredentialFilter::default()
    };
    let who = session.principal();
    let rows = match credentials::list(&state, &who, filter).await {
        Ok(found) => found,
        Err(e) => return failure(&state, &e).into_response(),
    };
    let total = rows.total;
    let pages = ((total + MAX_PER_PAGE - 1) / MAX_PER_PAGE).max(1);
    let link = |p: i64| {
        let mut u = url::form_urlencoded::Serializer::new(String::new());
        if let Some(q) = &q {
            u.append_pair("q", q);
        }
        if let Some(p) = &provider {
            u.append_pair("provider", p);
        }
        if let Some(s) = status {
            u.append_pair("status", s.as_str());
        }
        if let Some(h) = health_choice {
            u.append_pair("health", h);
        }
        u.append_pair("page", &p.to_string());
        format!("/manage?{}", u.finish())
    };
    let deleted = query.deleted.as_deref().and_then(|n| n.parse::<usize>().ok());
    let body = html! {
        (manage_tabs("/manage"))
        @if let Some(n) = deleted {
            (notice(true, &format!("{n} {} deleted.", if n == 1 { "credential" } else { "credentials" })))
        }
        form.filters role="search" method="get" action="/manage" {
            div.field {
                label for="q" { "Search by name" }
                input #q type="search" name="q" value=[q.as_deref()];
            }
            div.field {
                label for="provider" { "Provider" }
                select #provider name="provider" {
                    option value="" { "All providers" }
                    @for p in state.registry.iter() {
                        option value=(p.id) selected[provider.as_deref() == Some(p.id.as_str())] { (p.display_name) }
                    }
                }
            }
            div.field {
                label for="status" { "Status" }
                select #status name="status" {
                    option value="" { "Any status" }
                    @for s in CredentialStatus::ALL {
                        option value=(s.as_str()) selected[status == Some(s)] { (status_words(s)) }
                    }
                }
            }
            div.field {
                label for="health" { "Health" }
                select #health name="health" {
                    option value="" { "Any health" }
                    @for (value, words) in HEALTH_CHOICES {
                        option value=(value) selected[health_choice == Some(value)] { (words) }
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        p.count { (total) " " (if total == 1 { "credential" } else { "credentials" }) }
        @if rows.is_empty() {
            p.empty { "No credential matches." }
        } @else {
            form #bulk method="post" action="/manage/delete-selected" {
                input type="hidden" name="csrf" value=(session.csrf_token);
                div.actions {
                    button.danger #delete-selected type="submit" { "Delete selected" }
                }
                div.table-wrap {
                    table.credentials {
                        thead { tr {
                            th scope="col" { input #select-all type="checkbox" aria-label="Select all on this page"; }
                            th scope="col" { "Name" }
                            th scope="col" { "Type" }
                            th scope="col" { "Provider" }
                            th scope="col" { "Status" }
                            th scope="col" { "Health" }
                            th scope="col" { "Last used" }
                            th scope="col" { "Shared" }
                            th scope="col" { "Created" }
                            th scope="col" { "Actions" }
                        } }
                        tbody {
                            @for l in rows.iter() {
                                (table_row(&state, l.row, l.access, l.grants.len()))
                            }
                        }
                    }
                }
            }
            @if pages > 1 {
                nav.pagination aria-label="Pages" {
                    @if page_no > 1 { a rel="prev" href=(link(page_no - 1)) { "← Previous" } }
                    span { "Page " (page_no) " of " (pages) }
                    @if page_no < pages { a rel="next" href=(link(page_no + 1)) { "Next →" } }
                }
            }
        }
    };
    ok(&state, page("Your credentials", &session, body)).into_response()
}

fn table_row(state: &AppState, row: &CredentialRow, access: Access, users: usize) -> Markup {
    let provider = state
        .registry
        .get(&row.provider)
        .map_or(row.provider.as_str(), |p| p.display_name.as_str());
    let label = format!("Select {}", row.name);
    let (health_class, health, reconnect) = health_words(state, row);
    let test_out = format!("test-{}", row.id);
    // The last error's text names hosts and accounts: it needs `view`.
    let last_error = row
        .last_error
        .as_ref()
        .filter(|_| access >= Access::View)
        .map(|e| e.message.as_str());
    html! {
        tr data-id=(row.id) {
            td {
                @if access == Access::Manage {
                    input type="checkbox" name="ids" value=(row.id) aria-label=(label);
                }
            }
            td { a href=(format!("/manage/credentials/{}", row.id)) { (row.name) } }
            td { span.badge.type { (type_words(row.auth_type)) } }
            td { (provider) }
            td { (status_badge(row.status, last_error)) }
            td {
                span class=(health_class) { (health) }
                @if reconnect && access == Access::Manage {
                    " "
                    // Inside the page's one form (forms do not nest): it
                    // carries the CSRF token to its own action.
                    button.reconnect type="submit" formaction=(format!("/manage/credentials/{}/reconnect", row.id))
                        aria-label=(format!("Reconnect {}", row.name)) { "Reconnect" }
                }
            }
            td { (when(row.last_used_at)) }
            td { (sharing_words(row, users)) }
            td { (when(Some(row.created_at))) }
            td { div.row-actions {
                button type="button" data-test-url=(format!("/manage/credentials/{}/test", row.id))
                    data-test-output=(test_out) aria-label=(format!("Test {}", row.name)) { "Test" }
                @if access == Access::Manage {
                    a.button.danger href=(format!("/manage/credentials/{}/delete", row.id))
                        aria-label=(format!("Delete {}", row.name)) { "Delete" }
                }
                span.probe #(test_out) role="status" aria-live="polite" {}
            } }
        }
    }
}

/// Reconnect from the list: a connect session for this credential, for the
/// same person, and its page (the provider's form or OAuth flow, in place).
async fn reconnect(
    State(state): State<AppState>,
    CredentialPath(id): CredentialPath,
    Posted { session, .. }: Posted,
) -> Response {
    let asked = crate::sessions::NewSession {
        user_id: None,
        purpose: Purpose::Connect,
        providers: None,
        credential_id: Some(id),
        return_to: None,
        expires_in: None,
    };
    match crate::sessions::create(&state, &session.principal(), asked).await {
        Ok(opened) => {
            use secrecy::ExposeSecret;
            Redirect::to(&format!("/connect?session={}", opened.token.expose_secret())).into_response()
        }
        Err(e) => failure(&state, &e).into_response(),
    }
}
