//! `/connect`: the providers a session offers, a form per provider built
//! from the catalog (Test connection, Save), Connect for OAuth providers,
//! and the end of the journey (`/connect/done`), which tells the opener or
//! goes back to `return_to`.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::form::{
    fields_from_form, key_value_from_form, key_value_rows, oauth_words, public_values, text_of, type_words, value,
};
use super::layout::{self, expiry_from_form, expiry_input, field_input, name_input, notice, other_errors, page};
use super::{enter, failure, forged, ok, session_from, Html, Posted, Session};
use crate::credentials::{self, Changes, NewCredentialInput};
use crate::error::Error;
use crate::execution::has_probe;
use crate::http::auth::ClientIp;
use crate::http::AppState;
use crate::model::AuthKind;
use crate::providers::{FieldError, Generic, Provider};
use crate::sessions::{PageSession, Purpose};
use crate::store::CredentialRow;

mod test;

use test::test;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/connect", get(grid))
        .route("/connect/{provider}", get(form).post(save))
        .route("/connect/{provider}/test", post(test))
}

#[derive(Debug, Deserialize)]
struct GridQuery {
    session: Option<String>,
    q: Option<String>,
}

/// The providers offered, searchable (by the box as you type, or `?q=`).
async fn grid(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Query(query): Query<GridQuery>,
) -> Response {
    if let Some(response) = enter(&state, ip, Purpose::Connect, query.session.as_deref()).await {
        return response;
    }
    let session = match session_from(&state, &headers, ip, Purpose::Connect).await {
        Ok(s) => s,
        Err(refusal) => return refusal.into_response(),
    };
    if let Some(id) = &session.credential_id {
        return match credentials::read(&state, &session.principal(), id).await {
            Ok((row, _)) => Redirect::to(&format!("/connect/{}", row.provider)).into_response(),
            Err(e) => failure(&state, &e).into_response(),
        };
    }
    let q = query.q.unwrap_or_default().to_lowercase();
    let providers: Vec<&Provider> = state
        .registry
        .iter()
        .filter(|p| session.offers(&p.id))
        .filter(|p| q.is_empty() || p.display_name.to_lowercase().contains(&q) || p.id.contains(&q))
        .collect();
    let body = html! {
        form.search role="search" method="get" action="/connect" {
            label for="provider-search" { "Search providers" }
            input #provider-search type="search" name="q" value=(q) placeholder="Type a name…" autocomplete="off";
            button type="submit" { "Search" }
        }
        ul.grid #providers {
            @for p in &providers {
                li.card data-provider-name=(format!("{} {}", p.display_name.to_lowercase(), p.id)) {
                    a href=(format!("/connect/{}", p.id)) {
                        span.card-title { (p.display_name) }
                        span.types {
                            @for t in &p.auth_types { span.badge.type { (type_words(t.kind)) } }
                        }
                    }
                }
            }
        }
        p #no-match hidden[!providers.is_empty()] { "No provider matches your search." }
    };
    ok(&state, page("Connect an account", &session, body)).into_response()
}

#[derive(Debug, Deserialize)]
struct FormQuery {
    auth_type: Option<String>,
    error: Option<String>,
}

/// The provider the session offers, or a page saying it is not offered.
pub(super) fn offered<'a>(state: &'a AppState, session: &PageSession, id: &str) -> Result<&'a Provider, Html> {
    state.registry.get(id).filter(|p| session.offers(&p.id)).ok_or_else(|| {
        super::refusal(
            state,
            StatusCode::NOT_FOUND,
            "Provider not available",
            "This provider is not offered here. Go back and pick one from the list.",
        )
    })
}

/// What the form shows: typed values to keep (never secrets), errors, a notice.
#[derive(Default)]
struct FormState {
    name: Option<String>,
    values: Map<String, Value>,
    errors: Vec<FieldError>,
    notice: Option<String>,
    /// Key-value forms: the field names, and whether each is shown.
    kv_names: Vec<(String, bool)>,
    /// The secret's end date as the form shows it (`YYYY-MM-DD`).
    expires_on: Option<String>,
}

async fn form(
    State(state): State<AppState>,
    session: Session,
    Path(provider_id): Path<String>,
    Query(query): Query<FormQuery>,
) -> Response {
    let provider = match offered(&state, &session, &provider_id) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    let mut shown = FormState {
        notice: query.error.as_deref().map(|code| oauth_words(code).to_owned()),
        ..FormState::default()
    };
    if let Some(id) = &session.credential_id {
        match credentials::read(&state, &session.principal(), id).await {
            Ok((row, _)) => {
                shown.kv_names = kv_names(&row);
                shown.expires_on = row
                    .secret_expires_at
                    .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                    .map(|t| t.format("%Y-%m-%d").to_string());
                shown.name = Some(row.name.into());
                shown.values = row.fields;
            }
            Err(e) => return failure(&state, &e).into_response(),
        }
    }
    render_form(
        &state,
        &session,
        provider,
        query.auth_type.as_deref(),
        shown,
        StatusCode::OK,
    )
    .into_response()
}

fn render_form(
    state: &AppState,
    session: &PageSession,
    provider: &Provider,
    auth_type: Option<&str>,
    shown: FormState,
    status: StatusCode,
) -> Html {
    let oauth = provider.auth_type(AuthKind::Oauth2).is_some();
    let dynamic = provider.oauth.as_ref().is_some_and(|o| o.dynamic_registration);
    let forms: Vec<_> = provider
        .auth_types
        .iter()
        .filter(|t| t.kind != AuthKind::Oauth2)
        .collect();
    let chosen = auth_type
        .and_then(|a| forms.iter().find(|t| t.kind.as_str() == a))
        .or(forms.first())
        .copied();
    let reconnect = session.credential_id.is_some();
    let title = if reconnect {
        format!("Reconnect {}", provider.display_name)
    } else {
        format!("Connect {}", provider.display_name)
    };
    let body = html! {
        p { a href="/connect" { "← All providers" } }
        @if let Some(text) = &shown.notice { (notice(false, text)) }
        @if oauth && dynamic {
            // An MCP server: its URL first; the flow discovers the rest.
            section.oauth {
                form #connect-mcp method="get" action=(format!("/connect/{}/oauth", provider.id)) data-popup {
                    input type="hidden" name="csrf" value=(session.csrf_token);
                    label for="server_url" { "MCP server URL" }
                    input #server_url type="url" name="server_url" required
                        placeholder="https://mcp.example.com/mcp" value=[shown.values.get("server_url").and_then(|v| v.as_str())];
                    p { "You will sign in at the server's authorization server in a new window and come back here." }
                    button.primary type="submit" { "Connect " (provider.display_name) }
                }
                p #oauth-result role="status" {}
            }
        } @else if oauth {
            section.oauth {
                p { "You will sign in at " (provider.display_name) " in a new window and come back here." }
                a.button.primary #connect-oauth data-popup
                    href=(format!("/connect/{}/oauth?csrf={}", provider.id, session.csrf_token)) {
                    "Connect " (provider.display_name)
                }
                p #oauth-result role="status" {}
            }
        }
        @if forms.len() > 1 {
            nav.tabs aria-label="How to sign in" {
                @for t in &forms {
                    a href=(format!("/connect/{}?auth_type={}", provider.id, t.kind.as_str()))
                        aria-current=[chosen.is_some_and(|c| c.kind == t.kind).then_some("page")] {
                        (type_words(t.kind))
                    }
                }
            }
        }
        @if let Some(t) = chosen {
            form #credential-form method="post" action=(format!("/connect/{}", provider.id)) novalidate {
                input type="hidden" name="csrf" value=(session.csrf_token);
                input type="hidden" name="auth_type" value=(t.kind.as_str());
                (name_input(shown.name.as_deref().unwrap_or(&provider.display_name), &shown.errors))
                @if provider.generic == Some(Generic::KeyValue) {
                    (key_value_rows(&shown.kv_names, &shown.errors))
                } @else {
                    @for def in &t.fields {
                        (field_input(def, text_of(shown.values.get(&def.name)).as_deref(), &shown.errors))
                    }
                    (other_errors(&shown.errors, &t.fields.iter().map(|f| f.name.clone()).collect::<Vec<_>>()))
                }
                (expiry_input(shown.expires_on.as_deref(), &shown.errors))
                @if reconnect { p.hint { "Enter every value again: secrets are never shown back." } }
                div.actions {
                    @if has_probe(provider) {
                        button type="button" #test-connection
                            data-test-url=(format!("/connect/{}/test", provider.id)) data-test-output="test-result" {
                            "Test connection"
                        }
                    }
                    button.primary type="submit" { "Save" }
                }
                p #test-result.probe role="status" aria-live="polite" {}
            }
        }
    };
    super::Html::new(state, status, page(&title, session, body))
}

/// A form body: `name`, `auth_type` and `f.{field}` pairs.
struct Submitted {
    name: Option<String>,
    auth_type: Option<String>,
    raw: Vec<(String, String)>,
}

impl From<Vec<(String, String)>> for Submitted {
    fn from(raw: Vec<(String, String)>) -> Self {
        let get = |k: &str| value(&raw, k).map(str::to_owned);
        Self {
            name: get("name"),
            auth_type: get("auth_type"),
            raw,
        }
    }
}

async fn save(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
    Posted { session, form }: Posted,
) -> Response {
    let provider = match offered(&state, &session, &provider_id) {
        Ok(p) => p,
        Err(refusal) => return refusal.into_response(),
    };
    let form = Submitted::from(form);
    let auth_type = form.auth_type.clone().unwrap_or_default();
    let Some(kind) = AuthKind::parse(&auth_type).filter(|k| *k != AuthKind::Oauth2) else {
        return forged(&state).into_response();
    };
    let Some(defs) = provider.auth_type(kind).map(|t| t.fields.clone()) else {
        return forged(&state).into_response();
    };
    let (fields, public) = if provider.generic == Some(Generic::KeyValue) {
        key_value_from_form(&form.raw)
    } else {
        (fields_from_form(&defs, &form.raw), Vec::new())
    };
    let name = form.name.clone().unwrap_or_default();
    let who = session.principal();
    let expires_on = value(&form.raw, "expires_on").map(str::to_owned);
    let saved = match (expiry_from_form(expires_on.as_deref()), &session.credential_id) {
        (Err(e), _) => Err(Error::Validation(vec![e])),
        (Ok(expires_at), Some(id)) => {
            // The form shows the end it has: left empty, it is cleared.
            let changes = Changes {
                name: Some(name.clone()),
                fields: Some(fields.clone()),
                public: public.clone(),
                expires_at: Some(expires_at),
            };
            credentials::update(&state, &who, id, changes).await
        }
        (Ok(expires_at), None) => {
            let input = NewCredentialInput {
                name: name.clone(),
                provider: provider.id.clone(),
                auth_type,
                fields: fields.clone(),
                public: public.clone(),
                expires_at,
            };
            credentials::create(&state, &who, input).await
        }
    };
    match saved {
        Ok(row) => Redirect::to(&format!("/connect/done?result=success&credential_id={}", row.id)).into_response(),
        Err(e) => {
            let (errors, text, status) = match e {
                Error::Validation(errors) => (errors, None, StatusCode::UNPROCESSABLE_ENTITY),
                e => (Vec::new(), Some(layout::words(&e)), StatusCode::CONFLICT),
            };
            let shown = FormState {
                name: Some(name),
                values: public_values(&defs, &fields),
                errors,
                notice: text,
                kv_names: fields.keys().map(|k| (k.clone(), public.contains(k))).collect(),
                expires_on,
            };
            render_form(&state, &session, provider, Some(kind.as_str()), shown, status).into_response()
        }
    }
}

/// A key-value credential's field names, each with whether it is shown.
pub fn kv_names(row: &CredentialRow) -> Vec<(String, bool)> {
    let mut names: Vec<(String, bool)> = row.fields.keys().map(|k| (k.clone(), true)).collect();
    names.extend(row.secret_names.iter().map(|k| (k.clone(), false)));
    names.sort();
    names
}
