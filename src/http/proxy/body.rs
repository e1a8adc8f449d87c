//! The bodies on their way through the gateway. The engine's: kept whole
//! when small (so the call can be sent again after a refresh) or when it
//! must be signed, else streamed and counted against the limit. The
//! service's answer: streamed back, holding the call's slot. Neither may
//! fall silent for longer than the first-byte limit: a body that stops
//! coming would hold its slot and sockets for as long as its sender keeps
//! the connection open.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{HeaderMap, HeaderValue, Method};
use futures::StreamExt;

use super::{header_text, KEPT_FOR_RETRY, MAX_SIGNED_BODY};
use crate::gateway::{Inflater, Placed};
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::providers::FieldError;

/// What went wrong with the engine's streamed body while it was sent (the
/// service's client reports only that the body failed).
#[derive(Debug, Default)]
pub(super) struct BodyFault(AtomicU8);

const OVER: u8 = 1;
const INCOMPLETE: u8 = 2;
/// Waiting for the engine's next piece (no fault yet).
const WAITING: u8 = 3;

impl BodyFault {
    /// The use's error for the fault: `body_too_large` (past
    /// `CREDGATE_PROXY_MAX_BODY`), `body_incomplete` (it failed, or fell
    /// silent, before its end).
    pub(super) fn error(&self) -> Option<&'static str> {
        match self.0.load(Ordering::Relaxed) {
            OVER => Some("body_too_large"),
            INCOMPLETE => Some("body_incomplete"),
            _ => None,
        }
    }

    /// Whether the gateway is waiting for the engine's next piece: a call
    /// that runs out of time then ran out of it for the engine's silence,
    /// not the service's.
    pub(super) fn waiting_for_engine(&self) -> bool {
        self.0.load(Ordering::Relaxed) == WAITING
    }
}

/// The engine's body could not be read to its end: it failed, or nothing
/// more came within `silence`.
fn incomplete(silence: Duration) -> ApiError {
    ApiError::Validation(vec![FieldError::new(
        "body",
        format!(
            "could not be read to its end (it failed, or nothing more came for {} s)",
            silence.as_secs()
        ),
    )])
}

/// The use's error for an engine's body the gateway refused: too large, or
/// incomplete (or, for a signed call, one that could not be signed).
pub(super) fn refusal_error(e: &ApiError) -> &'static str {
    match e {
        ApiError::PayloadTooLarge { .. } => "body_too_large",
        ApiError::Unprocessable { code, .. } => code,
        _ => "body_incomplete",
    }
}

/// The engine's problem for a streamed body's `fault`.
pub(super) fn fault_problem(fault: &str, max: u64, silence: Duration) -> ApiError {
    match fault {
        "body_too_large" => ApiError::PayloadTooLarge { limit: max },
        _ => incomplete(silence),
    }
}

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
/// else streamed, never more than `CREDGATE_PROXY_MAX_BODY`, nor silent for
/// longer than the first-byte limit (`fault` tells which, when a streamed
/// body fails).
pub(super) async fn outgoing(
    state: &AppState,
    call: &crate::gateway::Call,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
    fault: Arc<BodyFault>,
) -> Result<Outgoing, ApiError> {
    let max = state.config.proxy_max_body;
    let silence = state.config.proxy_first_byte_timeout;
    let too_large = || ApiError::PayloadTooLarge { limit: max };
    let signing = call.aws_service.is_some();
    let keep = if signing { MAX_SIGNED_BODY } else { KEPT_FOR_RETRY };
    let (first, rest) = read_up_to(body.into_data_stream(), keep.min(max as usize), silence).await?;
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
    // The rest as it comes; after its first failure, nothing more.
    let rest = futures::stream::unfold((Some(rest), read), move |(rest, sent)| {
        let fault = fault.clone();
        async move {
            let mut rest = rest?;
            let fail = |code, message: &'static str| {
                fault.0.store(code, Ordering::Relaxed);
                Some((Err(std::io::Error::other(message)), (None, sent)))
            };
            fault.0.store(WAITING, Ordering::Relaxed);
            let next = tokio::time::timeout(silence, rest.next()).await;
            fault.0.store(0, Ordering::Relaxed);
            match next {
                Ok(None) => None,
                Ok(Some(Ok(chunk))) => {
                    let sent = sent + chunk.len() as u64;
                    if sent > max {
                        return fail(OVER, "the request body is larger than the gateway forwards");
                    }
                    Some((Ok(chunk), (Some(rest), sent)))
                }
                Ok(Some(Err(_))) => fail(INCOMPLETE, "the request body failed"),
                Err(_) => fail(INCOMPLETE, "the request body stopped coming"),
            }
        }
    });
    let all = futures::stream::iter(first.into_iter().map(Ok)).chain(rest);
    Ok(Outgoing {
        kept: None,
        streamed: Some((Body::from_stream(all), headers.get("content-length").cloned())),
        signed: Vec::new(),
    })
}

/// Reads `stream` until it ends or more than `keep` bytes have come: the
/// chunks read, and the rest when it did not end. Fails when it fails, or
/// when nothing comes for `silence`.
async fn read_up_to(
    mut stream: BodyDataStream,
    keep: usize,
    silence: Duration,
) -> Result<(Vec<Bytes>, Option<BodyDataStream>), ApiError> {
    let mut first = Vec::new();
    let mut read = 0;
    while read <= keep {
        match tokio::time::timeout(silence, stream.next()).await {
            Ok(None) => return Ok((first, None)),
            Ok(Some(Ok(chunk))) => {
                read += chunk.len();
                first.push(chunk);
            }
            Ok(Some(Err(_))) | Err(_) => return Err(incomplete(silence)),
        }
    }
    Ok((first, Some(stream)))
}

/// The service's answer body, holding what must last as long as it streams
/// (the call's slot), cut off once nothing more of it has come for
/// `silence`: the engine sees its answer end in an error, never as a whole
/// one. Each secret the call placed is masked in it (see
/// `gateway::Placed`), a piece's last bytes held back, when they could
/// begin one, until the next piece shows whether they do (so an event
/// followed by silence is not held); a compressed answer is inflated
/// first (see `gateway::Inflater`).
pub(super) struct Held<B, P> {
    body: B,
    _permit: P,
    silence: Duration,
    /// Set the first time the body has nothing ready; pushed back by each
    /// piece that comes.
    quiet_until: Option<Pin<Box<tokio::time::Sleep>>>,
    placed: Placed,
    inflater: Option<Inflater>,
    /// Bytes held back: the end of the last piece, which may begin a
    /// secret (fewer bytes than the longest).
    carry: Bytes,
    /// The trailers, once the bytes held back before them have gone.
    trailers: Option<http_body::Frame<Bytes>>,
    /// The answer has ended, and all of it has gone.
    done: bool,
}

impl<B, P> Held<B, P> {
    pub(super) fn new(body: B, permit: P, silence: Duration, placed: Placed, inflater: Option<Inflater>) -> Self {
        Self {
            body,
            _permit: permit,
            silence,
            quiet_until: None,
            placed,
            inflater,
            carry: Bytes::new(),
            trailers: None,
            done: false,
        }
    }
}

/// The service's answer fell silent past the limit.
#[derive(Debug, thiserror::Error)]
#[error("the service's answer stopped coming (nothing for {0} s)")]
struct Silent(u64);

type Polled = Poll<Option<Result<http_body::Frame<Bytes>, axum::BoxError>>>;

impl<B, P> Held<B, P>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    /// A piece of the answer, its secrets masked; the bytes that may begin
    /// one held back unless it is the answer's last (`ended`). `None`:
    /// nothing to send yet.
    fn masked(&mut self, data: Bytes, ended: bool) -> Option<Bytes> {
        if !self.placed.any() {
            return (!data.is_empty()).then_some(data);
        }
        let mut bytes = if self.carry.is_empty() && !self.placed.found_in(&data) {
            data
        } else {
            let mut joined = Vec::with_capacity(self.carry.len() + data.len());
            joined.extend_from_slice(&self.carry);
            joined.extend_from_slice(&data);
            self.placed.mask(&mut joined);
            Bytes::from(joined)
        };
        let hold = if ended { 0 } else { self.placed.may_begin(&bytes) };
        self.carry = bytes.split_off(bytes.len() - hold);
        (!bytes.is_empty()).then_some(bytes)
    }

    /// The answer's data has ended (`trailers` may follow): what the
    /// inflater still held, and the bytes held back, go.
    fn ended(&mut self, trailers: Option<http_body::Frame<Bytes>>) -> Polled {
        let rest = match self.inflater.as_mut().map(Inflater::finish) {
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(rest)) => rest,
            None => Bytes::new(),
        };
        self.inflater = None;
        let last = self.masked(rest, true);
        self.done = trailers.is_none();
        self.trailers = trailers;
        match last {
            Some(data) => Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
            None => Poll::Ready(self.trailers.take().map(Ok)),
        }
    }
}

impl<B, P> http_body::Body for Held<B, P>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
    P: Unpin,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Polled {
        let this = &mut *self;
        if let Some(trailers) = this.trailers.take() {
            return Poll::Ready(Some(Ok(trailers)));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            // What waits to be inflated goes before more is read.
            if let Some(inflater) = this.inflater.as_mut().filter(|i| i.has_pending()) {
                match inflater.next_piece() {
                    Ok(piece) => match this.masked(piece, false) {
                        Some(data) => return Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
                        None => continue,
                    },
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                }
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Ready(frame) => {
                    if let Some(quiet) = &mut this.quiet_until {
                        quiet.as_mut().reset(tokio::time::Instant::now() + this.silence);
                    }
                    let frame = match frame {
                        Some(Ok(frame)) => frame,
                        Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
                        None => return this.ended(None),
                    };
                    match frame.into_data() {
                        Ok(data) => {
                            if let Some(inflater) = &mut this.inflater {
                                inflater.push(data);
                                continue;
                            }
                            let ended = this.body.is_end_stream();
                            if let Some(data) = this.masked(data, ended) {
                                return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
                            }
                        }
                        Err(trailers) => {
                            let trailers = trailers.into_trailers().map(|mut fields| {
                                super::headers::keep_returnable(&mut fields, &this.placed);
                                http_body::Frame::trailers(fields)
                            });
                            return this.ended(trailers.ok());
                        }
                    }
                }
                Poll::Pending => {
                    let silence = this.silence;
                    let quiet = this
                        .quiet_until
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(silence)));
                    return match quiet.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            tracing::warn!(
                                silence_secs = silence.as_secs(),
                                "a service's answer stopped coming through the gateway; cut off"
                            );
                            Poll::Ready(Some(Err(Silent(silence.as_secs()).into())))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.trailers.is_none()
            && (self.done || (self.body.is_end_stream() && self.carry.is_empty() && self.inflater.is_none()))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        if self.inflater.is_some() {
            return http_body::SizeHint::default();
        }
        let mut hint = self.body.size_hint();
        let held = self.carry.len() as u64;
        hint.set_lower(hint.lower() + held);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + held);
        }
        hint
    }
}
