//! Test-connection probes: one file per service, one [`Probe`] trait, one
//! timeout wrapper ([`run`]) and the [`ProbeResult`] the API returns.
//!
//! A probe that ran and failed is not an error of the API: it is a
//! `ProbeResult` with `ok: false` and a [`ProbeFailure`] whose code is
//! stable and whose message a person can act on. Failure messages are built
//! from our own words and facts (host, status code, SQLSTATE), never from a
//! request's secret values; [`scrub`] removes them once more as a backstop.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::egress::{EgressError, EgressPolicy};

mod http;
pub mod llm;
mod pg_target;
mod pg_tls;
pub mod postgres;
pub mod sftp;
mod sftp_session;
pub mod telegram;

pub use llm::{LlmProviderType, LlmRequest};
pub use postgres::PostgresRequest;
pub use sftp::SftpRequest;
pub use telegram::TelegramRequest;

/// What a probe returns: the contract's ProbeResult.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeResult {
    /// Whether the service accepted the credentials and answered.
    pub ok: bool,
    /// Wall time of the whole probe.
    pub latency_ms: u64,
    /// Facts learnt on the way (server version, fingerprint, bot name, …).
    pub detail: serde_json::Value,
    /// Why the probe failed; absent when `ok`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ProbeFailure>,
}

/// A stable machine code for a failed probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// The SFTP path does not exist.
    NotFound,
    /// The SFTP path exists but may not be read.
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeFailure {
    /// The stable machine code.
    pub code: FailureCode,
    /// What happened and what to check.
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

/// One malformed field of a probe request (the API answers 422).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The JSON field name.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error for `field`.
    pub fn new(field: &str, message: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            message: message.into(),
        }
    }
}

/// Time limits for probes. Each stage (connect, handshake, authentication,
/// first response) gets `stage`; the whole probe gets `total`.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTimeouts {
    /// Resolving and opening the TCP connection.
    pub connect: Duration,
    /// Each later stage: handshake, authentication, first response.
    pub stage: Duration,
    /// The whole probe.
    pub total: Duration,
}

impl Default for ProbeTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            stage: Duration::from_secs(10),
            total: Duration::from_secs(25),
        }
    }
}

/// Default API base URLs of the hosted providers; each can be overridden by
/// the provider definition's `api_base_url`.
#[derive(Debug, Clone)]
pub struct ApiBaseUrls {
    /// OpenAI, without `/v1`.
    pub openai: String,
    /// Anthropic, without `/v1`.
    pub anthropic: String,
    /// The Telegram Bot API.
    pub telegram: String,
}

impl Default for ApiBaseUrls {
    fn default() -> Self {
        Self {
            openai: "https://api.openai.com".into(),
            anthropic: "https://api.anthropic.com".into(),
            telegram: "https://api.telegram.org".into(),
        }
    }
}

/// What every probe needs: the egress policy, time limits, base URLs and an
/// HTTP client built on that policy.
#[derive(Debug, Clone)]
pub struct ProbeContext {
    /// Decides which addresses may be reached.
    pub egress: Arc<EgressPolicy>,
    /// Stage and total time limits.
    pub timeouts: ProbeTimeouts,
    /// Provider API base URLs.
    pub base_urls: ApiBaseUrls,
    http: reqwest::Client,
    ssh_slots: Arc<tokio::sync::Semaphore>,
}

impl ProbeContext {
    /// Builds the context and its guarded HTTP client.
    pub fn new(
        egress: Arc<EgressPolicy>,
        timeouts: ProbeTimeouts,
        base_urls: ApiBaseUrls,
    ) -> Result<Self, EgressError> {
        let http = egress.http_client(timeouts.connect, timeouts.stage)?;
        Ok(Self {
            egress,
            timeouts,
            base_urls,
            http,
            ssh_slots: Arc::new(tokio::sync::Semaphore::new(Self::MAX_SSH_SESSIONS)),
        })
    }

    /// SSH sessions (blocking threads doing key exchange) at once; more
    /// probes wait for a slot within their time limit, so a burst of SFTP
    /// probes cannot take every core from the API.
    pub const MAX_SSH_SESSIONS: usize = 8;

    /// Waits for one of the [`Self::MAX_SSH_SESSIONS`] slots.
    pub(crate) async fn ssh_slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        Arc::clone(&self.ssh_slots)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }

    /// The HTTP client whose connections go through `egress`.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

/// The common shape of a probe request.
pub trait Probe: Sync {
    /// The probe's name in logs (`sftp`, `postgres`, `llm`, `telegram`).
    const NAME: &'static str;

    /// Checks the request's shape before anything is sent.
    fn validate(&self) -> Result<(), Vec<FieldError>>;

    /// Runs the probe and returns the facts it learnt.
    fn execute(
        &self,
        ctx: &ProbeContext,
    ) -> impl Future<Output = Result<serde_json::Value, (serde_json::Value, ProbeFailure)>> + Send;

    /// Secret values that must never appear in a result.
    fn secrets(&self) -> Vec<&str>;
}

/// Runs `req` within the total time limit, measures it and shapes the
/// result. Every probe's public `probe` function ends here.
pub async fn run<P: Probe>(ctx: &ProbeContext, req: &P) -> ProbeResult {
    let started = Instant::now();
    let outcome = tokio::time::timeout(ctx.timeouts.total, req.execute(ctx)).await;
    let latency_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (ok, detail, error) = match outcome {
        Ok(Ok(detail)) => (true, detail, None),
        Ok(Err((detail, failure))) => (false, detail, Some(failure)),
        Err(_) => (
            false,
            serde_json::json!({}),
            Some(ProbeFailure::timeout("the probe", ctx.timeouts.total)),
        ),
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
