//! Turning a PostgreSQL probe request (fields or a libpq connection string)
//! into a tokio-postgres `Config`, our own TLS mode, and the list of
//! endpoints the egress guard must check.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;
use secrecy::ExposeSecret;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::Config;

use super::FieldError;
use secrecy::SecretString;
use serde::Deserialize;

/// Body of `POST /integrations/postgres/test-connection`.
#[derive(Debug, Deserialize)]
pub struct PostgresRequest {
    /// A libpq URL or key/value string; when present, the fields are ignored.
    #[serde(default)]
    pub connection_string: Option<SecretString>,
    /// Host name or IP address.
    #[serde(default)]
    pub host: String,
    /// TCP port; 5432 when absent.
    #[serde(default)]
    pub port: Option<i64>,
    /// Database name.
    #[serde(default)]
    pub database: String,
    /// Role to log in as.
    #[serde(default)]
    pub username: String,
    /// The role's password.
    #[serde(default)]
    pub password: Option<SecretString>,
    /// `disable`, `allow`, `prefer` (default), `require`, `verify-ca` or
    /// `verify-full`; `verify-ca` is treated as `verify-full`.
    #[serde(default)]
    pub sslmode: Option<String>,
}

/// How TLS is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tls {
    Disable,
    Prefer,
    Require,
    VerifyFull,
}

impl Tls {
    fn parse(mode: &str) -> Option<Self> {
        Some(match mode {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" | "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    pub(super) fn libpq_name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyFull => "verify-full",
        }
    }

    /// The nearest mode tokio-postgres knows; verification is ours.
    fn ssl_mode(self) -> SslMode {
        match self {
            Self::Disable => SslMode::Disable,
            Self::Prefer => SslMode::Prefer,
            Self::Require | Self::VerifyFull => SslMode::Require,
        }
    }
}

/// One place to connect to: a host (for TLS and messages), maybe a fixed
/// address, and a port.
#[derive(Debug)]
pub(super) enum Endpoint {
    Tcp {
        host: String,
        addr: Option<IpAddr>,
        port: u16,
    },
    Unix(String),
}

/// The request turned into a tokio-postgres config plus our own TLS mode.
pub(super) struct Target {
    pub config: Config,
    pub tls: Tls,
    pub endpoints: Vec<Endpoint>,
}

fn sslmode_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| Regex::new(r"(?:^|[\s?&])sslmode\s*=\s*'?([A-Za-z-]*)'?").expect("valid pattern"))
}

/// Builds the connection target of a request, or the field error that
/// prevents it; `connection_string` wins over the fields.
pub(super) fn target(req: &PostgresRequest) -> Result<Target, FieldError> {
    match &req.connection_string {
        Some(s) if !s.expose_secret().trim().is_empty() => from_string(s.expose_secret()),
        _ => from_fields(req),
    }
}

fn from_fields(req: &PostgresRequest) -> Result<Target, FieldError> {
    let tls = match req.sslmode.as_deref() {
        None | Some("") => Tls::Prefer,
        Some(mode) => Tls::parse(mode).ok_or_else(bad_sslmode)?,
    };
    let port = req.port.and_then(|p| u16::try_from(p).ok()).unwrap_or(5432);
    let mut config = Config::new();
    config
        .host(&req.host)
        .port(port)
        .dbname(&req.database)
        .user(&req.username);
    if let Some(password) = &req.password {
        config.password(password.expose_secret());
    }
    finish(config, tls)
}

fn bad_sslmode() -> FieldError {
    FieldError::new(
        "sslmode",
        "must be disable, allow, prefer, require, verify-ca or verify-full",
    )
}

/// Parses a connection string after replacing the `sslmode` value that
/// tokio-postgres does not know (`verify-full`, …) by its nearest mode.
fn from_string(s: &str) -> Result<Target, FieldError> {
    let (tls, rewritten) = match sslmode_pattern().captures(s) {
        Some(caps) => {
            let value = caps.get(1).expect("group 1 always participates");
            let tls = Tls::parse(value.as_str()).ok_or_else(bad_sslmode)?;
            let name = match tls.ssl_mode() {
                SslMode::Disable => "disable",
                SslMode::Prefer => "prefer",
                _ => "require",
            };
            (tls, format!("{}{name}{}", &s[..value.start()], &s[value.end()..]))
        }
        None => (Tls::Prefer, s.to_owned()),
    };
    let config = Config::from_str(&rewritten).map_err(|e| {
        FieldError::new(
            "connection_string",
            format!("is not a valid PostgreSQL connection string ({e})"),
        )
    })?;
    finish(config, tls)
}

fn finish(mut config: Config, tls: Tls) -> Result<Target, FieldError> {
    config.ssl_mode(tls.ssl_mode());
    let hosts = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let count = hosts.len().max(addrs.len());
    if count == 0 {
        return Err(FieldError::new("connection_string", "names no host"));
    }
    if config.get_user().unwrap_or_default().is_empty() {
        return Err(FieldError::new("connection_string", "names no user"));
    }
    let endpoints = (0..count)
        .map(|i| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let addr = addrs.get(i).copied();
            match hosts.get(i) {
                Some(Host::Unix(path)) => Endpoint::Unix(path.display().to_string()),
                Some(Host::Tcp(host)) => Endpoint::Tcp {
                    host: host.clone(),
                    addr,
                    port,
                },
                None => Endpoint::Tcp {
                    host: addr.map(|a| a.to_string()).unwrap_or_default(),
                    addr,
                    port,
                },
            }
        })
        .collect();
    Ok(Target { config, tls, endpoints })
}
