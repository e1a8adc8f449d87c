//! The blocking half of the SFTP probe: one ssh2 session over a TCP stream
//! that the egress guard already opened to a checked address.
//!
//! Every libssh2 call is bounded by `Session::set_timeout`, but a server can
//! answer each call in time and never finish: the directory is read with our
//! own loop, counted (names are not kept), capped at [`MAX_LISTED_ENTRIES`] and
//! checked against the probe's deadline. What bounds the thread in the end is
//! the async side shutting the socket down (see `super::sftp`).

use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use ssh2::{ErrorCode, File, HashType, HostKeyType, Session, Sftp};

use super::{FailureCode, ProbeFailure};

/// Directory entries counted at most: a listing that goes on is reported as
/// having this many, with `entry_count_capped: true`. A big directory is no
/// reason to fail a connection test, and a server that never ends its
/// listing must not keep the probe.
pub const MAX_LISTED_ENTRIES: usize = 10_000;

// libssh2 error codes (libssh2.h) that we classify.
const LIBSSH2_ERROR_BANNER_RECV: i32 = -2;
const LIBSSH2_ERROR_KEX_FAILURE: i32 = -5;
const LIBSSH2_ERROR_TIMEOUT: i32 = -9;
const LIBSSH2_ERROR_FILE: i32 = -16;
const LIBSSH2_ERROR_AUTHENTICATION_FAILED: i32 = -18;
const LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED: i32 = -19;
const LIBSSH2_FX_NO_SUCH_FILE: i32 = 2;
const LIBSSH2_FX_PERMISSION_DENIED: i32 = 3;
const LIBSSH2_FX_NO_SUCH_PATH: i32 = 10;

/// What the blocking session needs; secrets stay wrapped until libssh2.
pub(super) struct Login {
    pub username: String,
    pub password: Option<SecretString>,
    pub private_key: Option<SecretString>,
    pub passphrase: Option<SecretString>,
    pub expected_fingerprint: Option<String>,
    pub path: String,
    pub stage_timeout: Duration,
    /// When the whole probe's time is up.
    pub deadline: Instant,
    /// The whole probe's limit, for messages.
    pub total: Duration,
}

/// Facts gathered so far, and the failure that stopped the session if any.
pub(super) struct Outcome {
    pub facts: Value,
    pub failure: Option<ProbeFailure>,
}

/// The libssh2 objects of a session, dropped in field order: a handle's drop
/// talks to the server (close the directory, end the SFTP channel), so they
/// live here until the session's outcome is known.
#[derive(Default)]
struct Held {
    dir: Option<File>,
    sftp: Option<Sftp>,
    session: Option<Session>,
}

/// Runs the whole session on the calling (blocking) thread.
pub(super) fn run(stream: TcpStream, login: &Login) -> Outcome {
    let hangup = stream.try_clone().ok();
    let mut held = Held::default();
    let mut facts = json!({});
    let failure = session(stream, login, &mut facts, &mut held).err();
    let hang_up = || {
        if let Some(socket) = &hangup {
            let _ = socket.shutdown(Shutdown::Both);
        }
    };
    if failure.is_some() {
        // A failed session is not closed politely: each handle's close would
        // wait for a server that may never answer.
        hang_up();
    }
    drop(held);
    // The async side still holds a handle on the socket; the connection
    // ends here all the same, before the thread gives back its slot.
    hang_up();
    Outcome { facts, failure }
}

fn session(stream: TcpStream, login: &Login, facts: &mut Value, held: &mut Held) -> Result<(), ProbeFailure> {
    let limit = login.stage_timeout;
    let _ = stream.set_read_timeout(Some(limit));
    let _ = stream.set_write_timeout(Some(limit));
    let session = held
        .session
        .insert(Session::new().map_err(|_| ProbeFailure::new(FailureCode::Network, "could not start an SSH session"))?);
    session.set_timeout(u32::try_from(limit.as_millis()).unwrap_or(u32::MAX));
    session.set_tcp_stream(stream);

    session
        .handshake()
        .map_err(|e| classify(&e, "the SSH handshake", limit))?;
    if let Some(banner) = session.banner() {
        facts["banner"] = json!(banner);
    }
    let fingerprint = session
        .host_key_hash(HashType::Sha256)
        .map(|hash| format!("SHA256:{}", STANDARD_NO_PAD.encode(hash)));
    facts["host_key_sha256"] = json!(fingerprint);
    if let Some((_, kind)) = session.host_key() {
        facts["host_key_type"] = json!(key_type_name(kind));
    }
    if let Some(expected) = &login.expected_fingerprint {
        if fingerprint.as_deref() != Some(expected.as_str()) {
            return Err(ProbeFailure::new(
                FailureCode::HostKeyMismatch,
                format!(
                    "the server's host key is {}, not the expected {expected}; if the server \
                     was re-keyed, update host_key_sha256, otherwise do not trust this host",
                    fingerprint.as_deref().unwrap_or("unknown")
                ),
            ));
        }
    }

    let method = authenticate(session, login)?;
    facts["auth_method"] = json!(method);

    let sftp = held.sftp.insert(session.sftp().map_err(|e| {
        if e.code() == ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT) {
            classify(&e, "opening the SFTP subsystem", limit)
        } else {
            ProbeFailure::new(
                FailureCode::Protocol,
                "logged in, but the server does not offer the SFTP subsystem",
            )
        }
    })?);
    let dir = held.dir.insert(
        sftp.opendir(Path::new(&login.path))
            .map_err(|e| listing_failure(&e, &login.path, limit))?,
    );
    let (count, capped) = count_entries(dir, login)?;
    facts["path"] = json!(login.path);
    facts["entry_count"] = json!(count);
    if capped {
        facts["entry_count_capped"] = json!(true);
    }
    // A clean goodbye: close the directory, the SFTP channel, the session.
    held.dir = None;
    held.sftp = None;
    let _ = session.disconnect(None, "credgate probe done", None);
    Ok(())
}

/// Counts the entries of an open directory, but `.` and `..`, up to
/// [`MAX_LISTED_ENTRIES`]; `true` when it stopped there.
fn count_entries(dir: &mut File, login: &Login) -> Result<(usize, bool), ProbeFailure> {
    let mut count = 0;
    loop {
        if Instant::now() >= login.deadline {
            return Err(ProbeFailure::timeout("listing the directory", login.total));
        }
        match dir.readdir() {
            Ok((name, _)) if name == Path::new(".") || name == Path::new("..") => {}
            Ok(_) => {
                count += 1;
                if count == MAX_LISTED_ENTRIES {
                    return Ok((count, true));
                }
            }
            // ssh2 reports the end of the directory as this error code.
            Err(e) if e.code() == ErrorCode::Session(LIBSSH2_ERROR_FILE) => return Ok((count, false)),
            Err(e) => return Err(listing_failure(&e, &login.path, login.stage_timeout)),
        }
    }
}

/// Tries the private key, then the password; returns the method that worked.
fn authenticate(session: &Session, login: &Login) -> Result<&'static str, ProbeFailure> {
    let user = login.username.as_str();
    let mut failure = None;
    if let Some(key) = &login.private_key {
        let passphrase = login.passphrase.as_ref().map(|p| p.expose_secret());
        match session.userauth_pubkey_memory(user, None, key.expose_secret(), passphrase) {
            Ok(()) if session.authenticated() => return Ok("publickey"),
            Ok(()) => failure = Some(auth_failed(user, "key")),
            Err(e) => failure = Some(auth_error(&e, user, "key", login.stage_timeout)),
        }
    }
    if let Some(password) = &login.password {
        match session.userauth_password(user, password.expose_secret()) {
            Ok(()) if session.authenticated() => return Ok("password"),
            Ok(()) => failure = Some(auth_failed(user, "password")),
            Err(e) => failure = Some(auth_error(&e, user, "password", login.stage_timeout)),
        }
    }
    Err(failure.unwrap_or_else(|| auth_failed(user, "credentials")))
}

fn auth_failed(user: &str, what: &str) -> ProbeFailure {
    ProbeFailure::new(
        FailureCode::AuthFailed,
        format!("the server rejected the {what} for user `{user}`"),
    )
}

fn auth_error(e: &ssh2::Error, user: &str, what: &str, limit: Duration) -> ProbeFailure {
    match e.code() {
        ErrorCode::Session(LIBSSH2_ERROR_FILE) => ProbeFailure::new(
            FailureCode::InvalidKey,
            "the private key could not be read: check the passphrase and that it is an \
             OpenSSH or PEM private key",
        ),
        ErrorCode::Session(LIBSSH2_ERROR_AUTHENTICATION_FAILED | LIBSSH2_ERROR_PUBLICKEY_UNVERIFIED) => {
            auth_failed(user, what)
        }
        _ => classify(e, "authentication", limit),
    }
}

fn listing_failure(e: &ssh2::Error, path: &str, limit: Duration) -> ProbeFailure {
    match e.code() {
        ErrorCode::SFTP(LIBSSH2_FX_NO_SUCH_FILE | LIBSSH2_FX_NO_SUCH_PATH) => ProbeFailure::new(
            FailureCode::NotFound,
            format!("logged in, but the directory `{path}` does not exist"),
        ),
        ErrorCode::SFTP(LIBSSH2_FX_PERMISSION_DENIED) => ProbeFailure::new(
            FailureCode::PermissionDenied,
            format!("logged in, but the user may not list `{path}`"),
        ),
        _ => classify(e, "listing the directory", limit),
    }
}

/// Maps a libssh2 error during `stage` to a failure.
fn classify(e: &ssh2::Error, stage: &str, limit: Duration) -> ProbeFailure {
    match e.code() {
        ErrorCode::Session(LIBSSH2_ERROR_TIMEOUT) => ProbeFailure::timeout(stage, limit),
        ErrorCode::Session(LIBSSH2_ERROR_BANNER_RECV | LIBSSH2_ERROR_KEX_FAILURE) => ProbeFailure::new(
            FailureCode::Protocol,
            format!("{stage} failed: the server does not speak SSH on this port, or offers no algorithm we support"),
        ),
        ErrorCode::Session(code) => ProbeFailure::new(
            FailureCode::Protocol,
            format!("{stage} failed (libssh2 error {code}): {}", e.message()),
        ),
        ErrorCode::SFTP(code) => {
            ProbeFailure::new(FailureCode::Protocol, format!("{stage} failed (SFTP status {code})"))
        }
    }
}

fn key_type_name(kind: HostKeyType) -> &'static str {
    match kind {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        _ => "unknown",
    }
}
