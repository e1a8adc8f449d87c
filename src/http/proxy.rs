//! `/integrations/credentials/{id}/proxy/{path…}`: the gateway's HTTP half.
//! The engine's request goes to the credential's service with the
//! credential's authentication added (see `gateway`); both bodies stream,
//! with bounded memory. What the engine sent that could carry its own
//! authority (`Authorization`, `Cookie`, `Host`, `Forwarded`,
//! `X-Forwarded-*`, `Credgate-*`, hop-by-hop headers) is never forwarded;
//! `Set-Cookie` is never returned; redirects are returned, not followed.
//! credgate's own errors carry `Credgate-Error: 1`; the service's answers
//! pass as they are.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

use super::error::ApiError;
use super::extract::{Caller, RESOLVE};
use super::AppState;
use crate::credentials::check_user_id;
use crate::gateway::Cut;
use crate::providers::FieldError;
use crate::store::Usage;

/// Largest body of an `aws_sigv4` call, which is read whole to be signed.
pub const MAX_SIGNED_BODY: usize = 10 * 1024 * 1024;

/// Largest body kept whole, so that the call can be sent again after a
/// refresh; a larger one streams and its call is sent once.
pub const KEPT_FOR_RETRY: usize = 1024 * 1024;

mod body;
mod failure;
mod headers;
mod preparing;
mod ranged;
mod settlement;
use body::{fault_problem, outgoing, refusal_error, BodyFault, Held};
use failure::Failure;
use headers::{forwarded, named_in_connection, returned};
use preparing::{pending, Preparing};
use ranged::Windowed;
use settlement::Settlement;

/// The gateway's routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/integrations/credentials/{id}/proxy", any(proxy))
        .route("/integrations/credentials/{id}/proxy/{*path}", any(proxy))
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
    let max_body = state.config.proxy_max_body;
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body) {
        return Err(ApiError::PayloadTooLarge { limit: max_body });
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
    // The request's one log line names the call's credential and provider.
    let span = tracing::Span::current();
    span.record("credential", tracing::field::display(&credential));
    // The slot first: a call refused for the cap is no use.
    let permit = state
        .gateway
        .try_take(&credential)
        .ok_or(ApiError::RateLimited { retry_after_secs: 1 })?;
    // From the moment the use is recorded, each way out adds its outcome,
    // and so does the engine going away before one is known, even while
    // the use is being written (see `Preparing`).
    let mut call = Preparing::new(
        &state,
        principal,
        credential.clone(),
        usage,
        (&method, raw, uri.query()),
    )
    .await?;
    let mut settlement = Settlement::new(state.outcomes.clone(), pending(&call));
    let started = settlement.started();
    let denied = || {
        ApiError::Conflict(
            "egress_denied",
            "credgate is not allowed to reach this credential's service".into(),
        )
    };
    if state.probes.egress.check_url(&call.url).is_err() {
        settlement.settle(None, Some("egress_denied")).await;
        return Err(denied());
    }
    let fault = Arc::new(BodyFault::default());
    let outgoing = match outgoing(&state, &call, &method, &headers, body, fault.clone()).await {
        Ok(outgoing) => outgoing,
        Err(e) => {
            settlement.settle(None, Some(refusal_error(&e))).await;
            return Err(e);
        }
    };
    // What the service gets: the engine's headers that may pass, then the
    // credential's (and a signature's), which no engine header can replace.
    let extra = named_in_connection(&headers);
    let mut sent_headers = HeaderMap::with_capacity(headers.len() + call.headers.len() + 1);
    for (name, value) in headers.iter() {
        if forwarded(name, &extra) {
            sent_headers.append(name.clone(), value.clone());
        }
    }
    let mut placed: Vec<HeaderName> = Vec::with_capacity(call.headers.len());
    for (name, value) in call.headers.iter().chain(&outgoing.signed) {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(value)) else {
            settlement.settle(None, Some("unreachable")).await;
            return Err(ApiError::Provider("the service could not be reached".into()));
        };
        if placed.contains(&name) {
            sent_headers.append(name, value);
        } else {
            // Whatever the engine sent under this name goes.
            sent_headers.insert(name.clone(), value);
            placed.push(name);
        }
    }
    if !sent_headers.contains_key(axum::http::header::USER_AGENT) {
        sent_headers.insert(axum::http::header::USER_AGENT, HeaderValue::from_static(USER_AGENT));
    }
    // As curl and the engines' usual clients say (some services answer 406
    // to a request without it).
    if !sent_headers.contains_key(axum::http::header::ACCEPT) {
        sent_headers.insert(axum::http::header::ACCEPT, HeaderValue::from_static("*/*"));
    }
    // A compressed answer hides the secrets a service writes back from the
    // search for them (see `Held`): the answer is asked for as it is. The
    // engine takes it so too (`identity` is acceptable to every client).
    // A range could cut a secret in two, each part found in no search: one
    // range is asked for widened, to be cut out of the part once searched
    // (`gateway::Asked`); several, or one not understood, go, and the
    // answer comes whole (as HTTP lets any server answer a range).
    let (mut asked, mut pad) = (None, 0);
    if call.placed.any() {
        sent_headers.insert(
            axum::http::header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        (asked, pad) = ranged::ask(&mut sent_headers, &headers, &call.placed);
    }
    if let Some(length) = outgoing.streamed.as_ref().and_then(|(_, length)| length.clone()) {
        sent_headers.insert(axum::http::header::CONTENT_LENGTH, length);
    }
    // A request that carries a payload says its length, even an empty one:
    // some services (Google's front ends) refuse a `POST` without it (411).
    // A kept body's length, when it has one, is the client's to say.
    let payload = matches!(method, Method::POST | Method::PUT | Method::PATCH) || declared.is_some();
    if payload && outgoing.kept.as_ref().is_some_and(Bytes::is_empty) {
        sent_headers.insert(axum::http::header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    let Ok(target) = Uri::try_from(call.url.as_str()) else {
        settlement.settle(None, Some("unreachable")).await;
        return Err(ApiError::Provider("the service could not be reached".into()));
    };
    let build = |authorization: Option<HeaderValue>, body: Body| {
        let mut request = axum::http::Request::new(body);
        *request.method_mut() = method.clone();
        *request.uri_mut() = target.clone();
        *request.headers_mut() = sent_headers.clone();
        if let Some(renewed) = authorization {
            request.headers_mut().insert(axum::http::header::AUTHORIZATION, renewed);
        }
        request
    };
    let first_byte = state.config.proxy_first_byte_timeout;
    let client = &state.gateway_http;
    let send = |request: axum::http::Request<Body>| async move {
        match tokio::time::timeout(first_byte, client.request(request)).await {
            Ok(answer) => answer.map_err(Failure::Sent),
            Err(_) => Err(Failure::Timeout),
        }
    };
    let kept = outgoing.kept.clone();
    let request = match (kept.as_ref(), outgoing.streamed) {
        (Some(bytes), _) if bytes.is_empty() => build(None, Body::empty()),
        (Some(bytes), _) => build(None, Body::from(bytes.clone())),
        (None, Some((stream, _))) => build(None, stream),
        (None, None) => build(None, Body::empty()),
    };
    let mut upstream = send(request).await;
    // The service may have revoked a token credgate still thought valid:
    // one refresh, and the call once more when its body was kept.
    if let (Some(bytes), Ok(answer)) = (&kept, &upstream) {
        if answer.status() == axum::http::StatusCode::UNAUTHORIZED {
            let renewed = crate::gateway::renewed_authorization(&state, &mut call).await;
            if let Some(renewed) = renewed.and_then(|r| HeaderValue::from_str(&r).ok()) {
                let mut again = build(Some(renewed), Body::from(bytes.clone()));
                // The renewed token may be longer than the range was
                // widened for: widened again for it.
                if asked.is_some() {
                    (asked, pad) = ranged::ask(again.headers_mut(), &headers, &call.placed);
                }
                upstream = send(again).await;
            }
        }
    }
    let provider = call.resolved.row.provider.clone();
    span.record("provider", provider.as_str());
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
        Err(failure) => {
            count("failed".into());
            let body_problem = |fault| fault_problem(fault, max_body, first_byte);
            let (error, problem) = failure.explained(&fault, denied, body_problem);
            settlement.settle(None, Some(error)).await;
            return Err(problem);
        }
    };
    let status = upstream.status();
    count(format!("{}xx", status.as_u16() / 100));
    // A part of an answer is returned only as the engine's range cut out of
    // the widened one it was asked for; any other part (a range taken
    // under a name of the service's own, such as Azure's `x-ms-range`, or
    // compressed) cannot be searched whole: a secret cut at its edge
    // would pass.
    let mut window = None;
    if call.placed.any() && status == axum::http::StatusCode::PARTIAL_CONTENT {
        let cut = ranged::cut(asked, pad, &call.placed, upstream.headers());
        match cut {
            Cut::Window {
                skip,
                keep,
                content_range,
            } => window = Some((skip, keep, content_range)),
            Cut::PastTheEnd { total } => {
                settlement.settle(Some(416), None).await;
                return Ok(ranged::past_the_end(total));
            }
            Cut::Unusable => {
                settlement.settle(Some(status.as_u16()), Some("partial_answer")).await;
                tracing::warn!(credential = %credential, "a service answered with a part of its answer credgate cannot search whole; not returned");
                return Err(ranged::unusable());
            }
        }
    }
    // Compressed though asked not to be: inflated, to be searched, unless
    // it cannot be (then it is not returned).
    let inflater = match call.placed.any().then(|| answer_codings(upstream.headers())) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(inflater))) => Some(inflater),
        Some(Err(codings)) => {
            // As the service wrote them: shown unless long, or holding a secret.
            let codings = if codings.len() > 64 || call.placed.found_in(codings.as_bytes()) {
                "not shown".to_owned()
            } else {
                codings
            };
            settlement
                .settle(Some(status.as_u16()), Some("unreadable_encoding"))
                .await;
            tracing::warn!(credential = %credential, codings = %codings, "a service compressed its answer in a way credgate cannot search for the credential's secrets; not returned");
            return Err(ApiError::Provider(format!(
                "the service answered ({}) in an encoding credgate cannot inflate ({codings}), though asked for none; \
                 the answer cannot be searched for the credential's secrets, so it is not returned",
                status.as_u16()
            )));
        }
    };
    settlement.settle(Some(status.as_u16()), None).await;
    state
        .metrics
        .gateway_latency
        .get_or_create(&crate::metrics::ProviderLabels {
            provider: provider.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    // The service's answer as it came, less what is never returned.
    let (mut parts, answer) = upstream.into_parts();
    returned(&mut parts.headers, &call.placed);
    if inflater.is_some() {
        // The engine gets the answer inflated, of a length not known yet.
        headers::inflated(&mut parts.headers);
    }
    let placed = std::mem::take(&mut call.placed);
    parts.extensions = Default::default();
    // The slot is held until the answer has streamed to the engine.
    let held = Held::new(answer, permit, first_byte, placed, inflater);
    let Some((skip, keep, content_range)) = window else {
        return Ok(Response::from_parts(parts, Body::new(held)));
    };
    ranged::describe(&mut parts.headers, keep, &content_range);
    Ok(Response::from_parts(parts, Body::new(Windowed::new(held, skip, keep))))
}

/// The inflater for an answer's `Content-Encoding`, when it names one; the
/// codings it names when they cannot be inflated.
fn answer_codings(headers: &HeaderMap) -> Result<Option<crate::gateway::Inflater>, String> {
    let values = headers
        .get_all(axum::http::header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.to_str().unwrap_or("(not text)"));
    crate::gateway::Inflater::for_codings(values)
}

/// `User-Agent` of a call whose engine sent none (some services, GitHub's
/// among them, refuse a request without one).
const USER_AGENT: &str = concat!("credgate/", env!("CARGO_PKG_VERSION"));
