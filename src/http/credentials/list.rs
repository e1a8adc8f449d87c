//! `GET /integrations/credentials`: the page of credentials the caller may
//! at least use, filtered and searched.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;

use super::view::{CredentialOut, CredentialPage};
use crate::credentials::{self, ListedPage, MAX_NAME_LEN, MAX_PER_PAGE};
use crate::fifo::Fifo;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::{ApiQuery, Caller, READ};
use crate::http::AppState;
use crate::model::{CredentialStatus, Health, Principal};
use crate::providers::FieldError;
use crate::store::{CredentialFilter, HealthFilter, Served};

#[derive(Debug, Deserialize)]
pub(super) struct ListQuery {
    provider: Option<String>,
    status: Option<String>,
    health: Option<String>,
    q: Option<String>,
    owner: Option<String>,
    shared: Option<String>,
    page: Option<String>,
    per_page: Option<String>,
    after: Option<String>,
}

/// `?owner=`: only `me`.
#[derive(Debug, ToSchema)]
#[expect(dead_code, reason = "it documents the query parameter only")]
enum OwnerFilter {
    #[schema(rename = "me")]
    Me,
}

fn parse_positive(field: &str, value: Option<&str>, default: i64, max: i64, errors: &mut Vec<FieldError>) -> i64 {
    let Some(raw) = value else { return default };
    match raw.parse::<i64>() {
        Ok(n) if (1..=max).contains(&n) => n,
        _ => {
            errors.push(FieldError::new(field, format!("must be an integer from 1 to {max}")));
            default
        }
    }
}

/// List credentials
#[utoipa::path(get, path = "/integrations/credentials", tag = "credentials",
    params(("provider" = Option<String>, Query), ("status" = inline(Option<CredentialStatus>), Query),
           ("health" = inline(Option<Health>), Query, description = "`needs_reauth`, `failing`, `expiring` or `ok`"),
           ("q" = Option<String>, Query, max_length = 200, description = "part of the name, any case"),
           ("owner" = inline(Option<OwnerFilter>), Query, description = "`me`: only the caller's own"),
           ("shared" = Option<bool>, Query, description = "only shared (team or users), or only not shared"),
           ("page" = Option<i64>, Query, minimum = 1, maximum = 1000000),
           ("per_page" = Option<i64>, Query, minimum = 1, maximum = 50, description = "at most 50"),
           ("after" = Option<String>, Query, description = "the `next` of the previous page: keyset paging, instead of `page` (empty: absent)")),
    responses((status = 200, body = CredentialPage), (status = 422, body = Problem)))]
pub(super) async fn list_credentials(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    caller.require(&state, READ, None).await?;
    let mut errors = Vec::new();
    let page = parse_positive("page", query.page.as_deref(), 1, 1_000_000, &mut errors);
    let per_page = parse_positive(
        "per_page",
        query.per_page.as_deref(),
        MAX_PER_PAGE,
        MAX_PER_PAGE,
        &mut errors,
    );
    let health = match query.health.as_deref() {
        None => None,
        Some(h) => {
            let parsed = Health::parse(h);
            if parsed.is_none() {
                let names: Vec<&str> = Health::ALL.iter().map(|h| h.as_str()).collect();
                errors.push(FieldError::new(
                    "health",
                    format!("must be one of: {}", names.join(", ")),
                ));
            }
            parsed
        }
    };
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => {
            let parsed = CredentialStatus::parse(s);
            if parsed.is_none() {
                let names: Vec<&str> = CredentialStatus::ALL.iter().map(|s| s.as_str()).collect();
                errors.push(FieldError::new(
                    "status",
                    format!("must be one of: {}", names.join(", ")),
                ));
            }
            parsed
        }
    };
    if query.q.as_ref().is_some_and(|q| q.chars().count() > MAX_NAME_LEN) {
        errors.push(FieldError::new(
            "q",
            format!("must be at most {MAX_NAME_LEN} characters"),
        ));
    }
    for (field, value) in [("q", &query.q), ("provider", &query.provider)] {
        if value.as_ref().is_some_and(|v| v.chars().any(char::is_control)) {
            errors.push(FieldError::new(field, "must not contain control characters"));
        }
    }
    let owner_me = match query.owner.as_deref() {
        None => false,
        Some("me") => true,
        Some(_) => {
            errors.push(FieldError::new("owner", "must be `me`"));
            false
        }
    };
    let shared = match query.shared.as_deref() {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            errors.push(FieldError::new("shared", "must be true or false"));
            None
        }
    };
    let after = match query.after.as_deref() {
        None | Some("") => None,
        Some(raw) => {
            let cursor = parse_cursor(raw);
            if cursor.is_none() {
                errors.push(FieldError::new("after", "must be a `next` value from an earlier page"));
            }
            if query.page.is_some() {
                errors.push(FieldError::new("page", "cannot be combined with after"));
            }
            cursor
        }
    };
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    let filter = CredentialFilter {
        after,
        provider: query.provider.filter(|p| !p.is_empty()),
        status,
        // To the minute, so that a page is kept for a minute at most.
        health: health.map(|h| (HealthFilter::Is(h), state.now() / 60 * 60, state.expiry_warn_secs())),
        q: query.q.filter(|q| !q.is_empty()),
        owner_me,
        shared,
        page,
        per_page,
        ..CredentialFilter::default()
    };
    let listed = credentials::list(&state, &caller, filter).await?;
    let mut shown = 0;
    let mut last = None;
    for l in listed.iter() {
        shown += 1;
        last = Some(l.row);
    }
    let next = (shown == per_page).then(|| last.map(cursor)).flatten();
    let items = state.listings.items(&caller, &listed, |row| state.health_of(row))?;
    let page = PageOut {
        items: &items,
        page,
        per_page,
        total: listed.total,
        next,
    };
    let mut body = Vec::with_capacity(items.get().len() + 256);
    serde_json::to_writer(&mut body, &page).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response())
}

/// [`CredentialPage`] with its items already in JSON.
#[derive(Serialize)]
struct PageOut<'a> {
    items: &'a RawValue,
    page: i64,
    per_page: i64,
    total: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// Most bytes of rendered items kept (a credential takes about 500).
const MAX_RENDERED_BYTES: usize = 2 << 20;

/// The items of listing pages as JSON, by the store's number for the read
/// they come from and the caller they were rendered for: a page served
/// again by the store, to the same caller, is not built and serialized
/// again. Only pages served again are kept (a page read once and never
/// again costs no copy and no room). Bounded by [`MAX_RENDERED_BYTES`], the
/// oldest dropped first.
#[derive(Debug)]
pub struct RenderedPages(Fifo<Arc<RawValue>>);

impl Default for RenderedPages {
    fn default() -> Self {
        Self(Fifo::new(MAX_RENDERED_BYTES))
    }
}

impl RenderedPages {
    fn items(
        &self,
        who: &Principal,
        page: &ListedPage,
        health: impl Fn(&crate::store::CredentialRow) -> Health,
    ) -> Result<Arc<RawValue>, ApiError> {
        // Health moves with time alone: it is part of the key.
        let healths: String = page
            .iter()
            .map(|l| health(l.row).as_str())
            .collect::<Vec<_>>()
            .join(",");
        // Only a page served again can have kept items (a page just read
        // has a new number). A caller's levels follow from the rows, their
        // role and their user (credentials::access::level_with): with the
        // same rows, the same items.
        let key = (page.served == Served::Kept).then(|| {
            format!(
                "{}\u{0}{}\u{0}{}\u{0}{}\u{0}{healths}",
                page.content,
                who.org_id,
                who.role.as_str(),
                who.user_id.as_deref().unwrap_or("")
            )
        });
        if let Some(items) = key.as_deref().and_then(|key| self.0.get(key)) {
            return Ok(items);
        }
        let views: Vec<CredentialOut> = page
            .iter()
            .map(|l| CredentialOut::new(l.row, l.access, l.grants, health(l.row)))
            .collect();
        let items: Arc<RawValue> = serde_json::value::to_raw_value(&views)
            .map_err(|e| ApiError::Internal(e.into()))?
            .into();
        if let Some(key) = key {
            let weight = items.get().len();
            self.0.put(key, items.clone(), weight);
        }
        Ok(items)
    }
}

/// The `next` cursor after `row`: its creation time and id, url-safe.
fn cursor(row: &crate::store::CredentialRow) -> String {
    URL_SAFE_NO_PAD.encode(format!("{}.{}", row.created_at, row.id))
}

fn parse_cursor(raw: &str) -> Option<(i64, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(raw.as_bytes()).ok()?).ok()?;
    let (t, id) = text.split_once('.')?;
    let id = uuid::Uuid::parse_str(id).ok()?.to_string();
    Some((t.parse().ok()?, id))
}
