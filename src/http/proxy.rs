//! `/integrations/credentials/{id}/proxy/{path…}`: the gateway's HTTP half.
//! The engine's request goes to the credential's service with the
//! credential's authentication added (see `gateway`); both bodies stream,
//! with bounded memory. What the engine sent that could carry its own
//! authority (`Authorization`, `Cookie`, `Host`, `Forwarded`,
//! `X-Forwarded-*`, `Credgate-*`, hop-by-hop headers) is never forwarded;
//! `Set-Cookie` is never returned; redirects are returned, not followed.
//! credgate's own errors carry `Credgate-Error: 1`; the service's answers
//! pass as they are.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures::StreamExt;

use super::error::ApiError;
use super::extract::{Caller, RESOLVE};
use super::AppState;
use crate::credentials::check_user_id;
use crate::providers::FieldError;
use crate::store::Usage;

/// Largest request body the gateway forwards (413 beyond).
pub const MAX_PROXY_BODY: u64 = 64 * 1024 * 1024;

/// Largest body of an `aws_sigv4` call, which is read whole to be signed.
pub const MAX_SIGNED_BODY: usize = 10 * 1024 * 1024;

/// The gateway's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/integrations/credentials/{id}/proxy", any(proxy))
        .route("/integrations/credentials/{id}/proxy/{*path}", any(proxy))
}

/// Request headers never forwarded (beside those named in `Connection`).
const NOT_FORWARDED: [&str; 14] = [
    "host",
    "authorization",
    "proxy-authorization",
    "cookie",
    "forwarded",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
    "x-real-ip",
    "content-length",
];

/// Response headers never returned.
const NOT_RETURNED: [&str; 10] = [
    "set-cookie",
    "set-cookie2",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-connection",
];

fn named_in_connection(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| s.trim().to_ascii_lowercase())
        .collect()
}

fn forwarded(name: &HeaderName, extra: &[String]) -> bool {
    let n = name.as_str();
    !(NOT_FORWARDED.contains(&n)
        || n.starts_with("x-forwarded-")
        || n.starts_with("credgate-")
        || extra.iter().any(|e| e == n))
}

/// credgate's own error, marked as such.
fn own(error: impl IntoResponse) -> Response {
    let mut response = error.into_response();
    response
        .headers_mut()
        .insert("credgate-error", HeaderValue::from_static("1"));
    response
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn proxy(
    State(state): State<AppState>,
    caller: Result<Caller, ApiError>,
    Path(params): Path<Vec<(String, String)>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match forward(state, caller, params, method, uri, headers, body).await {
        Ok(response) => response,
        Err(e) => own(e),
    }
}

async fn forward(
    state: AppState,
    caller: Result<Caller, ApiError>,
    params: Vec<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let caller = caller?;
    let id = params
        .iter()
        .find(|(k, _)| k == "id")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    caller.require(&state, RESOLVE, Some(&id)).await?;
    let mut errors = Vec::new();
    let mut user = None;
    let mut usage = Usage::default();
    for (header, field) in [
        ("credgate-user-id", "Credgate-User-Id"),
        ("credgate-workflow-id", "Credgate-Workflow-Id"),
        ("credgate-run-id", "Credgate-Run-Id"),
    ] {
        let Some(value) = header_text(&headers, header) else {
            continue;
        };
        match check_user_id(field, &value) {
            Err(e) => errors.push(e),
            Ok(v) if header == "credgate-user-id" => user = Some(v),
            Ok(_) if header == "credgate-workflow-id" => usage.workflow_id = Some(value),
            Ok(_) => usage.run_id = Some(value),
        }
    }
    if let (Some(own), Some(other)) = (&caller.user_id, &user) {
        if own != other {
            errors.push(FieldError::new(
                "Credgate-User-Id",
                "this engine key acts for its own user only",
            ));
        }
    }
    let too_large = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > MAX_PROXY_BODY);
    if too_large {
        return Err(ApiError::PayloadTooLarge);
    }
    if !errors.is_empty() {
        return Err(ApiError::Validation(errors));
    }
    // The path as it came, still percent-encoded: `..` in any spelling is
    // refused, never normalized away.
    let prefix = format!("/integrations/credentials/{id}/proxy");
    let raw = uri.path().strip_prefix(&prefix).unwrap_or_default();
    let raw = raw.strip_prefix('/').unwrap_or(raw);
    let principal = caller.for_user(caller.user_id.clone().or(user));
    let credential = super::credentials::parse_id(&id)?;
    let call = crate::gateway::prepare(
        &state,
        &principal,
        &credential,
        &usage,
        (method.as_str(), raw, uri.query()),
    )
    .await?;
    let permit = state
        .gateway
        .try_take(&credential)
        .ok_or(ApiError::RateLimited { retry_after_secs: 1 })?;
    let denied = || {
        ApiError::Conflict(
            "egress_denied",
            "credgate is not allowed to reach this credential's service".into(),
        )
    };
    state.probes.egress.check_url(&call.url).map_err(|_| denied())?;
    let extra = named_in_connection(&headers);
    // An AWS call is signed over its whole body: it is read first (bounded).
    let mut body = body;
    let mut whole = None;
    let mut signed = Vec::new();
    if call.aws_service.is_some() {
        let bytes = axum::body::to_bytes(std::mem::take(&mut body), MAX_SIGNED_BODY)
            .await
            .map_err(|_| ApiError::PayloadTooLarge)?;
        let content_type = header_text(&headers, "content-type");
        let to_sign: Vec<(&str, &str)> = content_type
            .as_deref()
            .map(|ct| ("content-type", ct))
            .into_iter()
            .collect();
        signed = crate::gateway::aws_signature(&call, method.as_str(), &to_sign, &bytes)?;
        whole = Some(bytes);
    }
    let build = |authorization: Option<&str>| {
        let mut request = state.gateway_http.request(method.clone(), call.url.clone());
        for (name, value) in headers.iter() {
            if forwarded(name, &extra) {
                request = request.header(name, value);
            }
        }
        for (name, value) in call.headers.iter().chain(&signed) {
            match (name.as_str(), authorization) {
                ("authorization", Some(renewed)) => request = request.header("authorization", renewed),
                _ => request = request.header(name.as_str(), value.as_str()),
            }
        }
        if let Some(length) = headers.get("content-length") {
            request = request.header("content-length", length);
        }
        request
    };
    // A call without a body can be sent again after one refresh: the
    // service may have revoked a token credgate still thought valid.
    let bodiless = whole.is_none() && axum::body::HttpBody::size_hint(&body).exact() == Some(0);
    let mut sent: u64 = 0;
    let stream = body.into_data_stream().map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        sent += chunk.len() as u64;
        if sent > MAX_PROXY_BODY {
            return Err(std::io::Error::other(
                "the request body is larger than the gateway forwards",
            ));
        }
        Ok(chunk)
    });
    let request = match whole {
        Some(bytes) => build(None).body(bytes),
        None if bodiless => build(None),
        None => build(None).body(reqwest::Body::wrap_stream(stream)),
    };
    let started = Instant::now();
    let mut upstream = request.send().await;
    if bodiless
        && upstream
            .as_ref()
            .is_ok_and(|r| r.status() == reqwest::StatusCode::UNAUTHORIZED)
    {
        if let Some(renewed) = crate::gateway::renewed_authorization(&state, &call).await {
            upstream = build(Some(&renewed)).send().await;
        }
    }
    let provider = call.resolved.row.provider.clone();
    let count = |class: String| {
        state
            .metrics
            .gateway_calls
            .get_or_create(&crate::metrics::GatewayLabels {
                provider: provider.clone(),
                status_class: class,
            })
            .inc();
    };
    let upstream = match upstream {
        Ok(r) => r,
        Err(e) => {
            count("failed".into());
            let e = e.without_url();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                if s.downcast_ref::<crate::egress::EgressError>().is_some() {
                    return Err(denied());
                }
                source = s.source();
            }
            return Err(ApiError::Provider(if e.is_timeout() {
                "the service did not answer in time".into()
            } else {
                "the service could not be reached".into()
            }));
        }
    };
    let status = upstream.status();
    count(format!("{}xx", status.as_u16() / 100));
    state
        .metrics
        .gateway_latency
        .get_or_create(&crate::metrics::ProviderLabels {
            provider: provider.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(
        credential = %credential,
        provider = %provider,
        method = %method,
        status = status.as_u16(),
        latency_ms = started.elapsed().as_millis() as u64,
        "gateway call"
    );
    let mut response = Response::builder().status(status.as_u16());
    let extra = named_in_connection(upstream.headers());
    for (name, value) in upstream.headers() {
        let n = name.as_str();
        if !NOT_RETURNED.contains(&n) && !extra.iter().any(|e| e == n) {
            response = response.header(name, value);
        }
    }
    // The slot is held until the answer has streamed to the engine.
    let body = Body::from_stream(upstream.bytes_stream().map(move |chunk| {
        let _held = &permit;
        chunk
    }));
    response
        .body(body)
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("the service's answer could not be relayed: {e}")))
}
