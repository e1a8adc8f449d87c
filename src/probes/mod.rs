//! Test-connection probes: one file per service, one [`Probe`] trait, one
//! wrapper ([`run`]) that takes a slot of the probe's [`Pool`] for its
//! organization and applies the total time limit, and the [`ProbeResult`]
//! the API returns.
//!
//! A probe that ran and failed is not an error of the API: it is a
//! `ProbeResult` with `ok: false` and a [`ProbeFailure`] whose code is
//! stable and whose message a person can act on. Failure messages are built
//! from our own words and facts (host, status code, SQLSTATE), never from a
//! request's secret values; [`scrub`] removes them once more as a backstop.

use std::future::Future;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::egress::EgressError;
use crate::ids::OrgId;

mod capped;
mod context;
pub mod declared;
mod http;
pub mod imap;
mod imap_session;
pub mod llm;
mod mail_io;
mod pg_target;
mod pg_tls;
pub mod postgres;
pub mod ses;
pub mod sftp;
mod sftp_session;
mod slots;
pub mod smtp;
pub mod telegram;

/// One malformed field of a probe request (the API answers 422): the
/// providers' field error, one type for every 422.
pub use crate::providers::FieldError;
pub use context::{ApiBaseUrls, ProbeContext, ProbeTimeouts};
pub use declared::DeclaredProbe;
pub use imap::ImapRequest;
pub use llm::{LlmProviderType, LlmRequest};
pub use mail_io::MailLogin;
pub use postgres::PostgresRequest;
pub use sftp::SftpRequest;
pub use slots::{Pool, Slot};
pub use smtp::SmtpRequest;
pub use telegram::TelegramRequest;

/// What a probe returns: the contract's ProbeResult.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ProbeResult {
    /// Whether the service accepted the credentials and answered.
    pub ok: bool,
    /// Wall time of the whole probe.
    pub latency_ms: u64,
    /// Facts learnt on the way (server version, fingerprint, bot name, …);
    /// absent (null) for a caller who may only `use` the credential.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Option<Object>, required = false)]
    pub detail: serde_json::Value,
    /// Why the probe failed; absent when `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ProbeFailure>,
}

impl ProbeResult {
    /// What a caller with `use` alone may see: whether it worked, how long
    /// it took and the failure's code. The facts and the messages name
    /// hosts, ports and accounts, which need `view`.
    pub fn for_use_only(self) -> Self {
        Self {
            detail: serde_json::Value::Null,
            error: self.error.map(|e| ProbeFailure {
                code: e.code,
                message: String::new(),
            }),
            ..self
        }
    }
}

/// A stable machine code for a failed probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The host name does not resolve.
    Dns,
    /// Nothing listens on the port.
    ConnectRefused,
    /// A stage took longer than its limit.
    Timeout,
    /// The TLS handshake failed or TLS was required and not offered.
    Tls,
    /// The service rejected the credentials.
    AuthFailed,
    /// The private key could not be read (format or passphrase).
    InvalidKey,
    /// The SSH host key is not the one given.
    HostKeyMismatch,
    /// The address is not one credgate may reach.
    EgressDenied,
    /// The service answered something unexpected (wrong port, base URL, …).
    Protocol,
    /// The PostgreSQL database does not exist.
    DatabaseNotFound,
    /// The service asks us to slow down.
    RateLimited,
    /// The SFTP path (or the IMAP INBOX) does not exist.
    NotFound,
    /// The SFTP path exists but may not be read, or the SMTP server refuses
    /// the sender address for this login.
    PermissionDenied,
    /// The provider failed on its side (5xx).
    ProviderError,
    /// Any other network failure.
    Network,
}

impl FailureCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::ConnectRefused => "connect_refused",
            Self::Timeout => "timeout",
            Self::Tls => "tls",
            Self::AuthFailed => "auth_failed",
            Self::InvalidKey => "invalid_key",
            Self::HostKeyMismatch => "host_key_mismatch",
            Self::EgressDenied => "egress_denied",
            Self::Protocol => "protocol",
            Self::DatabaseNotFound => "database_not_found",
            Self::RateLimited => "rate_limited",
            Self::NotFound => "not_found",
            Self::PermissionDenied => "permission_denied",
            Self::ProviderError => "provider_error",
            Self::Network => "network",
        }
    }
}

/// Why a probe failed, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ProbeFailure {
    /// The stable machine code.
    pub code: FailureCode,
    /// What happened and what to check; empty (and not sent) for a caller
    /// who may only `use` the credential.
    #[serde(skip_serializing_if = "String::is_empty")]
    #[schema(required = false)]
    pub message: String,
}

impl ProbeFailure {
    /// A failure with `code` and `message`.
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn timeout(stage: &str, limit: Duration) -> Self {
        Self::new(
            FailureCode::Timeout,
            format!(
                "{stage} did not finish within {}s; check the host, port and firewall",
                limit.as_secs_f32()
            ),
        )
    }
}

impl ProbeFailure {
    /// The failure for an egress guard error.
    pub fn from_egress(e: &EgressError) -> Self {
        let code = match e {
            EgressError::Denied { .. } => FailureCode::EgressDenied,
            EgressError::Dns { .. } => FailureCode::Dns,
            EgressError::Refused { .. } => FailureCode::ConnectRefused,
            EgressError::Timeout { .. } => FailureCode::Timeout,
            EgressError::Io { .. } | EgressError::Client(_) => FailureCode::Network,
            EgressError::Url(_) => FailureCode::Protocol,
        };
        Self::new(code, e.to_string())
    }
}

impl From<EgressError> for ProbeFailure {
    fn from(e: EgressError) -> Self {
        Self::from_egress(&e)
    }
}

/// The common shape of a probe request.
pub trait Probe: Sync {
    /// The probe's name in logs (`sftp`, `postgres`, `llm`, `telegram`,
    /// `smtp`, `imap`).
    const NAME: &'static str;

    /// Whose slots the probe takes.
    const POOL: Pool;

    /// Checks the request's shape before anything is sent.
    fn validate(&self) -> Result<(), Vec<FieldError>>;

    /// Runs the probe and returns the facts it learnt. `slot` is the
    /// probe's right to run: whatever the probe starts that may outlive its
    /// future (a blocking thread) keeps it until that work has ended.
    fn execute(
        &self,
        ctx: &ProbeContext,
        slot: Slot,
    ) -> impl Future<Output = Result<serde_json::Value, (serde_json::Value, ProbeFailure)>> + Send;

    /// Secret values that must never appear in a result.
    fn secrets(&self) -> Vec<&str>;
}

/// Runs `req` for organization `org_id` within the total time limit —
/// waiting for a slot of its [`Pool`] included — measures it and shapes the
/// result. Every probe's public `probe` function ends here.
pub async fn run<P: Probe>(ctx: &ProbeContext, org_id: &OrgId, req: &P) -> ProbeResult {
    let started = Instant::now();
    let total = ctx.timeouts.total;
    let deadline = started + total;
    let slot = tokio::time::timeout_at(deadline, ctx.slot(P::POOL, org_id, deadline))
        .await
        .ok()
        // A slot freed by probes that ran out of time at this same deadline
        // comes too late to use.
        .filter(|_| Instant::now() < deadline);
    let outcome = match slot {
        Some(slot) => tokio::time::timeout_at(deadline, req.execute(ctx, slot))
            .await
            .unwrap_or_else(|_| Err((serde_json::json!({}), ProbeFailure::timeout("the probe", total)))),
        None => Err((serde_json::json!({}), busy(P::NAME, total))),
    };
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (ok, detail, error) = match outcome {
        Ok(detail) => (true, detail, None),
        Err((detail, failure)) => (false, detail, Some(failure)),
    };
    // Only the name, outcome and code are logged: messages may name hosts
    // and paths, and a request's values never reach a log line.
    tracing::info!(
        probe = P::NAME,
        ok,
        latency_ms,
        code = error.as_ref().map(|f| f.code.as_str()),
        "probe finished"
    );
    let secrets = req.secrets();
    ProbeResult {
        ok,
        latency_ms,
        detail: scrub_json(detail, &secrets),
        error: error.map(|f| ProbeFailure {
            message: scrub(&f.message, &secrets),
            ..f
        }),
    }
}

/// The failure of a probe that never got a slot.
fn busy(name: &str, limit: Duration) -> ProbeFailure {
    ProbeFailure::new(
        FailureCode::Timeout,
        format!(
            "no {name} probe slot became free within {}s: too many {name} probes are running for \
             this organization or on this server; try again later",
            limit.as_secs_f32()
        ),
    )
}

/// Runs one stage of a probe under `limit`, naming the stage on timeout.
pub(crate) async fn stage<T>(
    name: &str,
    limit: Duration,
    fut: impl Future<Output = Result<T, ProbeFailure>>,
) -> Result<T, ProbeFailure> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| Err(ProbeFailure::timeout(name, limit)))
}

/// Replaces every occurrence of a secret (of 4+ characters) in `text`.
pub fn scrub(text: &str, secrets: &[&str]) -> String {
    secrets
        .iter()
        .filter(|s| s.len() >= 4)
        .fold(text.to_owned(), |acc, s| acc.replace(s, "[REDACTED]"))
}

fn scrub_json(value: serde_json::Value, secrets: &[&str]) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(scrub(&s, secrets)),
        Value::Array(items) => items.into_iter().map(|v| scrub_json(v, secrets)).collect(),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, scrub_json(v, secrets))).collect()),
        other => other,
    }
}

/// Shared checks of `host` and `port` fields.
pub(crate) fn check_host_port(host: &str, port: Option<i64>, errors: &mut Vec<FieldError>) {
    if host.trim().is_empty() {
        errors.push(FieldError::new("host", "is required"));
    } else if host.len() > 253 || host.chars().any(|c| c.is_whitespace() || c == '/') {
        errors.push(FieldError::new("host", "must be a host name or IP address"));
    }
    if let Some(port) = port {
        if !(1..=65535).contains(&port) {
            errors.push(FieldError::new("port", "must be between 1 and 65535"));
        }
    }
}

/// `Err(errors)` unless `errors` is empty.
pub(crate) fn into_result(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}
