//! The HTTP half shared by the LLM, Telegram and declared probes: one guarded request with
//! a first-response time limit, a capped body, and error classification.
//!
//! Errors from reqwest carry the request URL, which for Telegram holds the
//! bot token: every error is stripped of its URL before anything reads it.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;
use url::Url;

use super::{stage, FailureCode, ProbeContext, ProbeFailure};
use crate::egress::EgressError;

/// Bodies larger than this are cut off: a probe needs the first page only.
const MAX_BODY: usize = 1 << 20;

/// A response as the probes see it.
pub(super) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as JSON, or `Null` when it is not JSON.
    pub json: Value,
    /// The body as it came (at most [`MAX_BODY`] bytes): an XML answer.
    pub raw: Vec<u8>,
}

/// Sends `request` (to `url`) after checking `url` against the
/// egress policy, and reads at most [`MAX_BODY`] bytes of the answer.
pub(super) async fn send(ctx: &ProbeContext, url: &Url, request: RequestBuilder) -> Result<Reply, ProbeFailure> {
    ctx.egress.check_url(url)?;
    let limit = ctx.timeouts.stage;
    let response = stage("the first response", limit + ctx.timeouts.connect, async {
        request.send().await.map_err(|e| classify(e, limit))
    })
    .await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = stage("reading the response", limit, read_capped(response)).await?;
    Ok(Reply {
        status,
        headers,
        json: serde_json::from_slice(&body).unwrap_or(Value::Null),
        raw: body,
    })
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, ProbeFailure> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| classify(e, Duration::ZERO))? {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= MAX_BODY {
            break;
        }
    }
    Ok(body)
}

/// Maps a reqwest error to a failure, looking through its causes for the
/// egress guard's verdict, a refused connection or a TLS error.
fn classify(err: reqwest::Error, limit: Duration) -> ProbeFailure {
    let err = err.without_url();
    let mut cause: Option<&(dyn std::error::Error + 'static)> = err.source();
    while let Some(e) = cause {
        if let Some(egress) = e.downcast_ref::<EgressError>() {
            return ProbeFailure::from_egress(egress);
        }
        if e.downcast_ref::<rustls::Error>().is_some() {
            return tls_failure(e);
        }
        let mut next = e.source();
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return ProbeFailure::new(
                    FailureCode::ConnectRefused,
                    "the connection was refused; check the host and port of the base URL",
                );
            }
            // An io::Error hides what it wraps from `source()`.
            if let Some(inner) = io.get_ref() {
                next = Some(inner);
            }
        }
        cause = next;
    }
    if err.is_timeout() {
        return ProbeFailure::timeout("the request", limit);
    }
    ProbeFailure::new(FailureCode::Network, format!("the request failed: {}", chain(&err)))
}

fn tls_failure(e: &(dyn std::error::Error + 'static)) -> ProbeFailure {
    ProbeFailure::new(
        FailureCode::Tls,
        format!("TLS failed: {e}; check that the base URL's certificate is valid"),
    )
}

/// The error and its causes, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut cause = err.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// A failure for an HTTP status that is not success; `what` names the
/// provider's own error description when it gave one.
pub(super) fn status_failure(status: StatusCode, what: Option<String>, service: &str) -> ProbeFailure {
    let said = what.map(|w| format!(" ({w})")).unwrap_or_default();
    let code = status.as_u16();
    match code {
        401 | 403 => ProbeFailure::new(
            FailureCode::AuthFailed,
            format!("{service} rejected the credentials: HTTP {code}{said}; check the key or token"),
        ),
        404 => ProbeFailure::new(
            FailureCode::Protocol,
            format!("{service} answered HTTP 404{said}: the base URL is probably wrong"),
        ),
        429 => ProbeFailure::new(
            FailureCode::RateLimited,
            format!("{service} is rate limiting this key: HTTP 429{said}; try again later"),
        ),
        500..=599 => ProbeFailure::new(
            FailureCode::ProviderError,
            format!("{service} failed on its side: HTTP {code}{said}; try again later"),
        ),
        _ => ProbeFailure::new(
            FailureCode::Protocol,
            format!("{service} answered an unexpected HTTP {code}{said}"),
        ),
    }
}

/// Joins `path` to a base URL given by a user or a provider file, keeping
/// the base's own path (`https://host/v1` + `models`).
pub(super) fn join(base: &str, path: &str) -> Result<Url, ProbeFailure> {
    let trimmed = base.trim().trim_end_matches('/');
    Url::parse(&format!("{trimmed}/{path}"))
        .map_err(|_| ProbeFailure::new(FailureCode::Protocol, "the base URL is not a valid URL"))
}
