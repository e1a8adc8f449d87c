//! The SFTP probe: SSH handshake, host key check, password or key login,
//! then a listing of one directory over the SFTP subsystem.
//!
//! The TCP connection is opened here, through the egress guard, to the
//! checked address; the blocking ssh2 work runs in [`super::sftp_session`] on
//! a blocking thread. A thread cannot be cancelled, and libssh2's timeout
//! bounds each call, not a session of many calls, so this side keeps a
//! second handle on the socket ([`Hangup`]) and shuts it down when the
//! probe's future ends for any reason: the thread's current call then fails
//! at once and the thread ends, giving back its slot.

use std::net::{Shutdown, TcpStream};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;

use crate::ids::OrgId;

pub use super::sftp_session::MAX_LISTED_ENTRIES;
use super::{
    check_host_port, into_result, run, sftp_session, FailureCode, FieldError, Pool, Probe, ProbeContext, ProbeFailure,
    ProbeResult, Slot,
};

/// Body of `POST /integrations/sftp/test-connection`.
#[derive(Debug, Deserialize)]
pub struct SftpRequest {
    /// Host name or IP address.
    #[serde(default)]
    pub host: String,
    /// TCP port; 22 when absent.
    #[serde(default)]
    pub port: Option<i64>,
    /// Login name.
    #[serde(default)]
    pub username: String,
    /// Password, for password login.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// Private key in OpenSSH or PEM format, for key login.
    #[serde(default)]
    pub private_key: Option<SecretString>,
    /// Passphrase of `private_key`, when it is encrypted.
    #[serde(default)]
    pub passphrase: Option<SecretString>,
    /// Expected host key SHA-256 fingerprint, `SHA256:…` or bare base64.
    #[serde(default)]
    pub host_key_sha256: Option<String>,
    /// Directory to list; the login's home directory when absent.
    #[serde(default)]
    pub path: Option<String>,
}

impl SftpRequest {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(22)
    }

    /// The expected fingerprint in `SHA256:<base64>` form, if one was given.
    pub fn expected_fingerprint(&self) -> Option<String> {
        let given = self.host_key_sha256.as_deref()?.trim();
        let bare = given.strip_prefix("SHA256:").unwrap_or(given);
        Some(format!("SHA256:{}", bare.trim_end_matches('=')))
    }
}

impl Probe for SftpRequest {
    const NAME: &'static str = "sftp";
    const POOL: Pool = Pool::Ssh;

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_host_port(&self.host, self.port, &mut errors);
        if self.username.trim().is_empty() {
            errors.push(FieldError::new("username", "is required"));
        }
        let has = |s: &Option<SecretString>| s.as_ref().is_some_and(|s| !s.expose_secret().is_empty());
        if !has(&self.password) && !has(&self.private_key) {
            errors.push(FieldError::new("password", "give a password or a private_key"));
        }
        if let Some(key) = &self.private_key {
            if !key.expose_secret().contains("PRIVATE KEY-----") {
                errors.push(FieldError::new(
                    "private_key",
                    "must be a PEM or OpenSSH private key (-----BEGIN … PRIVATE KEY-----)",
                ));
            }
        }
        if let Some(fp) = self.expected_fingerprint() {
            let body = &fp["SHA256:".len()..];
            let valid = body.len() == 43 && body.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/');
            if !valid {
                errors.push(FieldError::new(
                    "host_key_sha256",
                    "must be an OpenSSH SHA-256 fingerprint such as SHA256:<43 base64 characters>",
                ));
            }
        }
        if self.path.as_deref().is_some_and(|p| p.contains('\0')) {
            errors.push(FieldError::new("path", "must not contain NUL"));
        }
        into_result(errors)
    }

    async fn execute(
        &self,
        ctx: &ProbeContext,
        slot: Slot,
    ) -> Result<serde_json::Value, (serde_json::Value, ProbeFailure)> {
        let no_detail = |f: ProbeFailure| (json!({}), f);
        let network = |e: std::io::Error| no_detail(ProbeFailure::new(FailureCode::Network, e.to_string()));
        let (stream, addr) = ctx
            .egress
            .connect_tcp(&self.host, self.port(), ctx.timeouts.connect)
            .await
            .map_err(|e| no_detail(e.into()))?;
        let stream = stream
            .into_std()
            .and_then(|s| s.set_nonblocking(false).map(|()| s))
            .map_err(network)?;
        let hangup = Hangup(stream.try_clone().map_err(network)?);
        let login = sftp_session::Login {
            username: self.username.clone(),
            password: self.password.clone(),
            private_key: self.private_key.clone(),
            passphrase: self.passphrase.clone(),
            expected_fingerprint: self.expected_fingerprint(),
            path: self.path.clone().unwrap_or_else(|| ".".into()),
            stage_timeout: ctx.timeouts.stage,
            deadline: slot.deadline().into_std(),
            total: ctx.timeouts.total,
        };
        let work = tokio::task::spawn_blocking(move || {
            // The slot stays taken until the thread has ended, not merely
            // until this probe's future has.
            let _slot = slot;
            sftp_session::run(stream, &login)
        });
        // If this future is dropped here (the probe's time is up, or the
        // caller went away), `hangup` ends the thread's session.
        let outcome = work.await.map_err(|_| {
            no_detail(ProbeFailure::new(
                FailureCode::Protocol,
                "the SSH session ended unexpectedly",
            ))
        })?;
        drop(hangup);
        let mut facts = outcome.facts;
        facts["address"] = json!(addr.to_string());
        match outcome.failure {
            None => Ok(facts),
            Some(failure) => Err((facts, failure)),
        }
    }

    fn secrets(&self) -> Vec<&str> {
        [&self.password, &self.private_key, &self.passphrase]
            .into_iter()
            .flatten()
            .map(|s| s.expose_secret())
            .collect()
    }
}

/// Shuts a socket down when dropped. The blocking thread holds the other
/// handle of the same socket; its pending libssh2 call sees the connection
/// end and returns at once.
struct Hangup(TcpStream);

impl Drop for Hangup {
    fn drop(&mut self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

/// Probes an SFTP server for organization `org_id`: connect, check the host
/// key, log in, list `path`.
pub async fn probe(ctx: &ProbeContext, org_id: &OrgId, req: &SftpRequest) -> ProbeResult {
    run(ctx, org_id, req).await
}
