//! Ranges through the gateway of an answer whose secrets are looked for
//! (see `gateway::Asked`): the engine's one range asked for widened, and
//! its range cut out of the service's part once that is searched.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::header_text;
use crate::gateway::{Asked, Cut, Placed};
use crate::http::error::ApiError;

/// Asks the service for the engine's one range widened so that every
/// secret reaching into it lies whole within the part (`sent` gets the
/// widened `Range`); several ranges, or one credgate does not read, go
/// with their `If-Range`, and the answer comes whole. The range asked,
/// and the bytes it was widened by on each side.
pub(super) fn ask(sent: &mut HeaderMap, engine: &HeaderMap, placed: &Placed) -> (Option<Asked>, u64) {
    let pad = placed.longest().saturating_sub(1) as u64;
    let asked = one_range(engine);
    match asked.and_then(|a| HeaderValue::from_str(&a.widened(pad)).ok()) {
        Some(widened) => {
            sent.insert(header::RANGE, widened);
        }
        None => {
            sent.remove(header::RANGE);
            sent.remove(header::IF_RANGE);
        }
    }
    (asked, pad)
}

/// The engine's one range (`Range: bytes=…`), when it sent one that
/// credgate reads.
fn one_range(headers: &HeaderMap) -> Option<Asked> {
    let mut ranges = headers.get_all(header::RANGE).iter();
    let range = ranges.next()?.to_str().ok()?;
    ranges.next().is_none().then(|| Asked::parse(range)).flatten()
}

/// Where the engine's range lies in the service's part (206), whose
/// `answer` headers describe it; [`Cut::Unusable`] for a part credgate did
/// not ask for, a compressed one, or one not widened for the longest
/// secret looked for (a guard: a call sent again with a renewed token asks
/// for its range widened again).
pub(super) fn cut(asked: Option<Asked>, pad: u64, placed: &Placed, answer: &HeaderMap) -> Cut {
    let compressed = answer.contains_key(header::CONTENT_ENCODING);
    let widened_enough = placed.longest().saturating_sub(1) as u64 <= pad;
    match (asked, header_text(answer, "content-range")) {
        (Some(asked), Some(range)) if !compressed && widened_enough => asked.cut(pad, &range),
        _ => Cut::Unusable,
    }
}

/// What the service would have answered the engine's range starting past
/// the end of its answer of `total` bytes.
pub(super) fn past_the_end(total: u64) -> Response {
    let unsatisfied = format!("bytes */{total}");
    (
        StatusCode::RANGE_NOT_SATISFIABLE,
        [(header::CONTENT_RANGE, unsatisfied)],
    )
        .into_response()
}

/// The refusal of a part of an answer credgate cannot search whole.
pub(super) fn unusable() -> ApiError {
    ApiError::Provider(
        "the service answered with a part of its answer (206) that credgate cannot search for the credential's \
         secrets whole, so it is not returned (ask for the whole answer, or one range in `Range`)"
            .into(),
    )
}

/// The headers of the engine's range, `keep` bytes described by
/// `content_range`, in place of the part's.
pub(super) fn describe(headers: &mut HeaderMap, keep: u64, content_range: &str) {
    for (name, value) in [
        (header::CONTENT_RANGE, content_range.to_owned()),
        (header::CONTENT_LENGTH, keep.to_string()),
    ] {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.insert(name, value);
        }
    }
}

/// The engine's range of the part of an answer credgate asked for widened
/// (see `gateway::Asked`), its secrets masked first: the part's first
/// `skip` bytes go, the next `left` are the answer, the rest goes.
pub(super) struct Windowed<B> {
    body: B,
    skip: u64,
    left: u64,
}

impl<B> Windowed<B> {
    pub(super) fn new(body: B, skip: u64, keep: u64) -> Self {
        Self { body, skip, left: keep }
    }
}

impl<B> http_body::Body for Windowed<B>
where
    B: http_body::Body<Data = Bytes, Error = axum::BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::BoxError>>> {
        let this = &mut *self;
        while this.left > 0 {
            let frame = match std::task::ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                // Ended short: the engine's answer ends short of its length.
                other => return Poll::Ready(other),
            };
            // A part's trailers are not returned.
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            let skipped = this.skip.min(data.len() as u64);
            this.skip -= skipped;
            let mut data = data.split_off(skipped as usize);
            let kept = this.left.min(data.len() as u64);
            this.left -= kept;
            data.truncate(kept as usize);
            if !data.is_empty() {
                return Poll::Ready(Some(Ok(http_body::Frame::data(data))));
            }
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.left)
    }
}
