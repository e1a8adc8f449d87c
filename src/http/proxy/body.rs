//! The engine's request body on its way through the gateway: kept whole
//! when small (so the call can be sent again after a refresh) or when it
//! must be signed, else streamed and counted against the limit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method};
use futures::StreamExt;

use super::{header_text, KEPT_FOR_RETRY, MAX_SIGNED_BODY};
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::providers::FieldError;

/// The body as it will be sent, and what signs it.
pub(super) struct Outgoing {
    /// Read whole (empty for no body): it can be sent again.
    pub kept: Option<Bytes>,
    /// Too large to keep: what was read, then the rest as it comes,
    /// counted against the limit; with its declared length.
    pub streamed: Option<(Body, Option<HeaderValue>)>,
    /// An `aws_sigv4` call's signature headers.
    pub signed: Vec<(String, String)>,
}

/// The engine's body: read whole when it is small (or must be signed),
/// else streamed, never more than `CREDGATE_PROXY_MAX_BODY` (`over` is set
/// when a streamed body passes it).
pub(super) async fn outgoing(
    state: &AppState,
    call: &crate::gateway::Call,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
    over: Arc<AtomicBool>,
) -> Result<Outgoing, ApiError> {
    let max = state.config.proxy_max_body;
    let too_large = || ApiError::PayloadTooLarge { limit: max };
    let signing = call.aws_service.is_some();
    let keep = if signing { MAX_SIGNED_BODY } else { KEPT_FOR_RETRY };
    let (first, rest) = read_up_to(body.into_data_stream(), keep.min(max as usize)).await?;
    let read: u64 = first.iter().map(|c| c.len() as u64).sum();
    let Some(rest) = rest else {
        let bytes = Bytes::from(first.concat());
        let mut signed = Vec::new();
        if signing {
            let content_type = header_text(headers, "content-type");
            let to_sign: Vec<(&str, &str)> = content_type
                .as_deref()
                .map(|ct| ("content-type", ct))
                .into_iter()
                .collect();
            signed = crate::gateway::aws_signature(call, method.as_str(), &to_sign, &bytes)?;
        }
        return Ok(Outgoing {
            kept: Some(bytes),
            streamed: None,
            signed,
        });
    };
    if signing || read > max {
        return Err(too_large());
    }
    let mut sent = read;
    let rest = rest.map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        sent += chunk.len() as u64;
        if sent > max {
            over.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other(
                "the request body is larger than the gateway forwards",
            ));
        }
        Ok(chunk)
    });
    let all = futures::stream::iter(first.into_iter().map(Ok)).chain(rest);
    Ok(Outgoing {
        kept: None,
        streamed: Some((Body::from_stream(all), headers.get("content-length").cloned())),
        signed: Vec::new(),
    })
}

/// Reads `stream` until it ends or more than `keep` bytes have come: the
/// chunks read, and the rest when it did not end.
async fn read_up_to(mut stream: BodyDataStream, keep: usize) -> Result<(Vec<Bytes>, Option<BodyDataStream>), ApiError> {
    let mut first = Vec::new();
    let mut read = 0;
    while read <= keep {
        match stream.next().await {
            None => return Ok((first, None)),
            Some(Ok(chunk)) => {
                read += chunk.len();
                first.push(chunk);
            }
            Some(Err(_)) => {
                return Err(ApiError::Validation(vec![FieldError::new(
                    "body",
                    "could not be read to its end",
                )]))
            }
        }
    }
    Ok((first, Some(stream)))
}

/// The service's answer body, holding what must last as long as it streams.
pub(super) struct Held<B, P> {
    pub body: B,
    pub _permit: P,
}

impl<B: http_body::Body + Unpin, P: Unpin> http_body::Body for Held<B, P> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
