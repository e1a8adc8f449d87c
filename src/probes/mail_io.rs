//! What the SMTP and IMAP probes share: the login fields and opening the
//! connection ([`MailLogin`]), the `security` setting, and a line
//! reader over a plain or TLS stream with a cap on what a server may send,
//! plus the STARTTLS upgrade.
//!
//! Both protocols are a few text lines each way, written here by hand: the
//! stream is the one the egress guard opened to the checked address, every
//! read is bounded (a line at [`MAX_LINE`], the whole session at
//! [`MAX_READ`]), so a hostile server can hold a probe only until its time
//! limit and never grow its memory.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::capped::{Capped, TooMuchData};
use super::pg_tls::client_config;
use super::{FailureCode, FieldError, ProbeContext, ProbeFailure};

/// Bytes a mail probe reads from one server at most, TLS records included:
/// a greeting, a capability list and a few answers take a few kilobytes.
pub(super) const MAX_READ: usize = 256 * 1024;

/// The longest line a server may send (SMTP allows 512 bytes, IMAP servers
/// keep capability lines well under this).
pub(super) const MAX_LINE: usize = 8 * 1024;

/// Characters of a server's text quoted in a failure message at most.
const QUOTED: usize = 200;

/// How a mail probe protects the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Security {
    /// Plain text first, then `STARTTLS`; a server that does not offer it
    /// fails the probe (`tls`) rather than seeing the password in clear.
    StartTls,
    /// TLS from the first byte (SMTPS on 465, IMAPS on 993).
    Tls,
    /// No TLS at all.
    None,
}

impl Security {
    /// Parses the `security` field; absent or empty means `default`.
    pub(super) fn parse(value: Option<&str>, default: Self) -> Result<Self, FieldError> {
        match value.map(str::trim) {
            None | Some("") => Ok(default),
            Some("starttls") => Ok(Self::StartTls),
            Some("tls") => Ok(Self::Tls),
            Some("none") => Ok(Self::None),
            Some(_) => Err(FieldError::new("security", "must be starttls, tls or none")),
        }
    }

    /// The value as the request spells it.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::StartTls => "starttls",
            Self::Tls => "tls",
            Self::None => "none",
        }
    }
}

/// The socket, capped at [`MAX_READ`] bytes read.
type Raw = Capped<TcpStream>;

/// The stream as it is now: plain, or TLS over the same socket.
enum Link {
    Plain(Raw),
    Tls(Box<TlsStream<Raw>>),
    /// Only while a STARTTLS handshake has the stream, or after it failed.
    Closed,
}

impl AsyncRead for Link {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Self::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl AsyncWrite for Link {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, data),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
            Self::Closed => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Self::Closed => Poll::Ready(Ok(())),
        }
    }
}

/// A mail connection: lines in, lines out, TLS now or later.
pub(super) struct MailConn {
    link: Link,
    /// Bytes read and not yet handed out as a line.
    pending: Vec<u8>,
    host: String,
    verify: bool,
    /// Which protocol, for messages ("SMTP", "IMAP").
    protocol: &'static str,
}

impl MailConn {
    /// Wraps a stream the egress guard opened to `host`; `verify` decides
    /// whether the server's certificate must be valid for `host`.
    pub(super) fn new(stream: TcpStream, host: &str, verify: bool, protocol: &'static str) -> Self {
        Self {
            link: Link::Plain(Capped::new(stream, MAX_READ)),
            pending: Vec::new(),
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            verify,
            protocol,
        }
    }

    /// Whether the connection is encrypted now.
    pub(super) fn is_tls(&self) -> bool {
        matches!(self.link, Link::Tls(_))
    }

    /// Runs the TLS handshake on the plain stream (at once for implicit TLS,
    /// after the server's go-ahead for STARTTLS).
    pub(super) async fn start_tls(&mut self) -> Result<(), ProbeFailure> {
        // Anything the server sent after its go-ahead, before the handshake,
        // came in clear text and could be an attacker's injected answer.
        if !self.pending.is_empty() {
            return Err(ProbeFailure::new(
                FailureCode::Tls,
                "the server sent data in clear text right after agreeing to STARTTLS; refusing to go on",
            ));
        }
        let Link::Plain(raw) = std::mem::replace(&mut self.link, Link::Closed) else {
            return Err(ProbeFailure::new(
                FailureCode::Tls,
                "the connection is already encrypted",
            ));
        };
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| ProbeFailure::new(FailureCode::Tls, "the host is not a valid TLS server name"))?;
        let config: Arc<ClientConfig> = client_config(self.verify);
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(name, raw)
            .await
            .map_err(|e| self.tls_failure(&e))?;
        self.link = Link::Tls(Box::new(tls));
        Ok(())
    }

    fn tls_failure(&self, e: &io::Error) -> ProbeFailure {
        if TooMuchData::is_cause_of(e) {
            return self.too_much();
        }
        let text = e.to_string();
        let hint = if self.verify && text.contains("certificate") {
            "; the certificate must be valid for the host (set tls_verify to false to accept a self-signed one)"
        } else {
            "; check the port and the security setting (tls for SMTPS/IMAPS ports, starttls otherwise)"
        };
        ProbeFailure::new(FailureCode::Tls, format!("the TLS handshake failed: {text}{hint}"))
    }

    fn too_much(&self) -> ProbeFailure {
        ProbeFailure::new(
            FailureCode::Protocol,
            format!(
                "the server sent more than {} KiB where a {} login takes a few; is this a {} server?",
                MAX_READ / 1024,
                self.protocol,
                self.protocol
            ),
        )
    }

    fn read_failure(&self, e: &io::Error) -> ProbeFailure {
        if TooMuchData::is_cause_of(e) {
            self.too_much()
        } else if self.is_tls() && e.kind() == io::ErrorKind::InvalidData {
            ProbeFailure::new(FailureCode::Tls, format!("the TLS connection failed: {e}"))
        } else {
            ProbeFailure::new(FailureCode::Network, format!("reading from the server failed: {e}"))
        }
    }

    /// Reads one line, without its line ending.
    pub(super) async fn read_line(&mut self) -> Result<String, ProbeFailure> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let mut line: Vec<u8> = self.pending.drain(..=end).collect();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
            if self.pending.len() > MAX_LINE {
                return Err(ProbeFailure::new(
                    FailureCode::Protocol,
                    format!(
                        "the server sent a line longer than {} KiB; is this a {} server?",
                        MAX_LINE / 1024,
                        self.protocol
                    ),
                ));
            }
            self.fill().await?;
        }
    }

    /// Reads exactly `n` bytes (an IMAP literal); `n` is at most [`MAX_LINE`].
    pub(super) async fn read_bytes(&mut self, n: usize) -> Result<Vec<u8>, ProbeFailure> {
        if n > MAX_LINE {
            return Err(ProbeFailure::new(
                FailureCode::Protocol,
                format!("the server announced {n} bytes where a few were expected"),
            ));
        }
        while self.pending.len() < n {
            self.fill().await?;
        }
        Ok(self.pending.drain(..n).collect())
    }

    async fn fill(&mut self) -> Result<(), ProbeFailure> {
        let mut chunk = [0_u8; 4096];
        let n = self.link.read(&mut chunk).await.map_err(|e| self.read_failure(&e))?;
        if n == 0 {
            return Err(ProbeFailure::new(
                FailureCode::Protocol,
                format!("the server closed the connection; is this a {} server?", self.protocol),
            ));
        }
        self.pending.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Sends `line` and CRLF. The line may carry a secret: it is never
    /// logged, and a failure names only the socket error.
    pub(super) async fn send(&mut self, line: &str) -> Result<(), ProbeFailure> {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        let written = async {
            self.link.write_all(&bytes).await?;
            self.link.flush().await
        }
        .await;
        written.map_err(|e| ProbeFailure::new(FailureCode::Network, format!("writing to the server failed: {e}")))
    }

    /// Closes the stream politely (TLS close_notify), ignoring errors.
    pub(super) async fn close(&mut self) {
        let _ = self.link.shutdown().await;
    }
}

/// A server's text as quoted in a message: at most [`QUOTED`] characters,
/// control characters replaced, `hidden` values (encoded secrets) removed.
pub(super) fn quote(text: &str, hidden: &[&str]) -> String {
    // Scrubbed before it is cut, so no part of a secret survives the cut.
    super::scrub(text, hidden)
        .chars()
        .take(QUOTED)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Where and how to log in to a mail server: the fields the SMTP and IMAP
/// requests share (flattened into each). `Debug` hides the password.
#[derive(Debug, Deserialize)]
pub struct MailLogin {
    /// Host name or IP address of the server.
    #[serde(default)]
    pub host: String,
    /// TCP port; the protocol's own default when absent.
    #[serde(default)]
    pub port: Option<i64>,
    /// Login name.
    #[serde(default)]
    pub username: String,
    /// The login's password.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// `tls`, `starttls` or `none`; the protocol's own default when absent.
    #[serde(default)]
    pub security: Option<String>,
    /// Whether the server's certificate must be valid for `host`; true when
    /// absent. False accepts a self-signed certificate (still encrypted).
    #[serde(default)]
    pub tls_verify: Option<bool>,
}

impl MailLogin {
    /// The port, or `default`.
    pub fn port_or(&self, default: u16) -> u16 {
        self.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(default)
    }

    /// The password, or "" when absent.
    pub fn password(&self) -> &str {
        self.password.as_ref().map_or("", |p| p.expose_secret())
    }

    /// The security asked for, or `default`.
    pub(super) fn security_or(&self, default: Security) -> Result<Security, FieldError> {
        Security::parse(self.security.as_deref(), default)
    }

    /// Connects to `host:port` through the egress guard (to the checked
    /// address only). `facts` gets host, port, security, address and `tls:
    /// false`; also returns this side's address (SMTP greets with it).
    pub(super) async fn open(
        &self,
        ctx: &ProbeContext,
        port: u16,
        security: Result<Security, FieldError>,
        protocol: &'static str,
        facts: &mut Value,
    ) -> Result<(MailConn, Security, IpAddr), ProbeFailure> {
        *facts = json!({ "host": self.host, "port": port, "tls": false });
        let security = security.map_err(|e| ProbeFailure::new(FailureCode::Protocol, e.message))?;
        facts["security"] = json!(security.as_str());
        let (stream, addr) = ctx.egress.connect_tcp(&self.host, port, ctx.timeouts.connect).await?;
        facts["address"] = json!(addr.to_string());
        let local = stream.local_addr().map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip());
        let conn = MailConn::new(stream, &self.host, self.tls_verify.unwrap_or(true), protocol);
        Ok((conn, security, local))
    }
}
