//! A stream that stops reading after a fixed number of bytes.
//!
//! A probe reads a few kilobytes from an honest server. A hostile one can
//! announce a message of any length (a PostgreSQL header may say 2 GiB) and
//! the client library buffers until the message is complete; this wrapper
//! turns "too much" into an error the probe can name, before the buffer
//! grows.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf, Take};

/// The error a [`Capped`] stream returns once its reads pass the cap; found
/// again in an error's causes with [`TooMuchData::is_cause_of`].
#[derive(Debug, thiserror::Error)]
#[error("the server sent more than {limit} bytes")]
pub(super) struct TooMuchData {
    limit: usize,
}

impl TooMuchData {
    /// Whether `err`, or anything it wraps, is this error.
    pub(super) fn is_cause_of(err: &(dyn std::error::Error + 'static)) -> bool {
        let mut cause = Some(err);
        while let Some(e) = cause {
            if e.downcast_ref::<Self>().is_some() {
                return true;
            }
            // An io::Error hides what it wraps from `source()`.
            let inner = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref());
            cause = match inner {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => e.source(),
            };
        }
        false
    }
}

/// `S`, failing every read once `limit` bytes have been read from it.
#[derive(Debug)]
pub(super) struct Capped<S> {
    // `Take` stops at the cap with an end of stream, which the client
    // library would report as a closed connection; `poll_read` turns it
    // into [`TooMuchData`] instead.
    inner: Take<S>,
    limit: usize,
}

impl<S: AsyncRead> Capped<S> {
    pub(super) fn new(inner: S, limit: usize) -> Self {
        Self {
            inner: inner.take(limit as u64),
            limit,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Capped<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.inner.limit() == 0 {
            let limit = self.limit;
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, TooMuchData { limit })));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Capped<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.inner.get_mut()).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.get_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.inner.get_mut()).poll_shutdown(cx)
    }
}
