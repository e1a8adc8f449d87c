//! The PostgreSQL probe: connect (TLS per `sslmode`), log in, run
//! `SELECT version()` and report what the server says about the session.
//!
//! Every host of the connection (several hosts, `hostaddr`) goes through the
//! egress guard, Unix-socket hosts are refused, and tokio-postgres speaks
//! over a stream opened to the checked address (`Config::connect_raw`).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::error::SqlState;
use tokio_postgres::Config;

use super::pg_tls::PgTls;
use super::{
    check_host_port, into_result, run, stage, FailureCode, FieldError, Probe, ProbeContext,
    ProbeFailure, ProbeResult,
};

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
enum Tls {
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

    fn libpq_name(self) -> &'static str {
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
enum Endpoint {
    Tcp {
        host: String,
        addr: Option<IpAddr>,
        port: u16,
    },
    Unix(String),
}

/// The request turned into a tokio-postgres config plus our own TLS mode.
struct Target {
    config: Config,
    tls: Tls,
    endpoints: Vec<Endpoint>,
}

fn sslmode_pattern() -> &'static Regex {
    static PATTERN: OnceLock<Regex> = OnceLock::new();
    PATTERN.get_or_init(|| {
        Regex::new(r"(?:^|[\s?&])sslmode\s*=\s*'?([A-Za-z-]*)'?").expect("valid pattern")
    })
}

impl PostgresRequest {
    /// Builds the connection target, or the field error that prevents it.
    fn target(&self) -> Result<Target, FieldError> {
        match &self.connection_string {
            Some(s) if !s.expose_secret().trim().is_empty() => from_string(s.expose_secret()),
            _ => self.from_fields(),
        }
    }

    fn from_fields(&self) -> Result<Target, FieldError> {
        let tls = match self.sslmode.as_deref() {
            None | Some("") => Tls::Prefer,
            Some(mode) => Tls::parse(mode).ok_or_else(bad_sslmode)?,
        };
        let port = self
            .port
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(5432);
        let mut config = Config::new();
        config
            .host(&self.host)
            .port(port)
            .dbname(&self.database)
            .user(&self.username);
        if let Some(password) = &self.password {
            config.password(password.expose_secret());
        }
        finish(config, tls)
    }
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
            (
                tls,
                format!("{}{name}{}", &s[..value.start()], &s[value.end()..]),
            )
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
    Ok(Target {
        config,
        tls,
        endpoints,
    })
}

impl Probe for PostgresRequest {
    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let uses_string = self
            .connection_string
            .as_ref()
            .is_some_and(|s| !s.expose_secret().trim().is_empty());
        let mut errors = Vec::new();
        if !uses_string {
            check_host_port(&self.host, self.port, &mut errors);
            if self.database.trim().is_empty() {
                errors.push(FieldError::new("database", "is required"));
            }
            if self.username.trim().is_empty() {
                errors.push(FieldError::new("username", "is required"));
            }
        }
        if errors.is_empty() {
            if let Err(e) = self.target() {
                errors.push(e);
            }
        }
        into_result(errors)
    }

    async fn execute(&self, ctx: &ProbeContext) -> Result<Value, (Value, ProbeFailure)> {
        let target = self.target().map_err(|e| {
            (
                json!({}),
                ProbeFailure::new(FailureCode::Protocol, e.message),
            )
        })?;
        // Check every endpoint that needs no DNS before connecting anywhere.
        for endpoint in &target.endpoints {
            match endpoint {
                Endpoint::Unix(path) => {
                    return Err((
                        json!({}),
                        ProbeFailure::new(
                            FailureCode::EgressDenied,
                            format!(
                                "Unix-socket host `{path}` may not be reached; give a TCP host"
                            ),
                        ),
                    ))
                }
                Endpoint::Tcp {
                    host,
                    addr: Some(ip),
                    ..
                } => ctx
                    .egress
                    .check(host, *ip)
                    .map_err(|e| (json!({}), e.into()))?,
                Endpoint::Tcp { .. } => {}
            }
        }
        let mut last = None;
        for endpoint in &target.endpoints {
            match attempt(ctx, &target, endpoint).await {
                Ok(facts) => return Ok(facts),
                Err(failure) if failure.code == FailureCode::EgressDenied => {
                    return Err((json!({}), failure))
                }
                Err(failure) => last = Some(failure),
            }
        }
        let failure = last.unwrap_or_else(|| ProbeFailure::new(FailureCode::Protocol, "no host"));
        Err((json!({ "sslmode": target.tls.libpq_name() }), failure))
    }

    fn secrets(&self) -> Vec<&str> {
        [&self.password, &self.connection_string]
            .into_iter()
            .flatten()
            .map(|s| s.expose_secret())
            .collect()
    }
}

/// Connects to one endpoint, logs in and asks the server about the session.
async fn attempt(
    ctx: &ProbeContext,
    target: &Target,
    endpoint: &Endpoint,
) -> Result<Value, ProbeFailure> {
    let Endpoint::Tcp { host, addr, port } = endpoint else {
        unreachable!("Unix endpoints are refused before connecting");
    };
    let limit = ctx.timeouts.connect;
    let (stream, reached) = match addr {
        Some(ip) => {
            let at = SocketAddr::new(*ip, *port);
            (ctx.egress.connect_addr(host, at, limit).await?, at)
        }
        None => ctx.egress.connect_tcp(host, *port, limit).await?,
    };
    let tls = PgTls::new(host, target.tls == Tls::VerifyFull);
    let (client, connection) = stage(
        "the PostgreSQL handshake and login",
        ctx.timeouts.stage,
        async {
            target
                .config
                .connect_raw(stream, tls)
                .await
                .map_err(|e| classify(&e, &target.config))
        },
    )
    .await?;
    let driver = tokio::spawn(connection);
    let row = stage("SELECT version()", ctx.timeouts.stage, async {
        client
            .query_one(
                "SELECT version(), current_database()::text, current_user::text, \
                 current_setting('server_version'), \
                 COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
                &[],
            )
            .await
            .map_err(|e| classify(&e, &target.config))
    })
    .await;
    drop(client);
    driver.abort();
    let row = row?;
    Ok(json!({
        "host": host,
        "port": port,
        "address": reached.to_string(),
        "version": row.get::<_, String>(0),
        "server_version": row.get::<_, String>(3),
        "database": row.get::<_, String>(1),
        "user": row.get::<_, String>(2),
        "tls": row.get::<_, bool>(4),
        "sslmode": target.tls.libpq_name(),
    }))
}

/// Maps a tokio-postgres error to a failure.
fn classify(e: &tokio_postgres::Error, config: &Config) -> ProbeFailure {
    let user = config.get_user().unwrap_or_default();
    let database = config.get_dbname().unwrap_or(user);
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        return if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            ProbeFailure::new(
                FailureCode::AuthFailed,
                format!(
                    "the server rejected user `{user}` or its password (SQLSTATE {})",
                    code.code()
                ),
            )
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            ProbeFailure::new(
                FailureCode::DatabaseNotFound,
                format!("logged in, but database `{database}` does not exist"),
            )
        } else {
            ProbeFailure::new(
                FailureCode::Protocol,
                format!(
                    "the server said: {} (SQLSTATE {})",
                    db.message(),
                    code.code()
                ),
            )
        };
    }
    let text = e.to_string();
    let cause = std::error::Error::source(e)
        .map(ToString::to_string)
        .unwrap_or_default();
    if text.starts_with("error performing TLS handshake") {
        ProbeFailure::new(
            FailureCode::Tls,
            format!("TLS failed: {cause}; check sslmode and the server's certificate"),
        )
    } else if cause.contains("password missing") {
        ProbeFailure::new(
            FailureCode::AuthFailed,
            "the server asks for a password and none was given",
        )
    } else {
        ProbeFailure::new(
            FailureCode::Protocol,
            format!(
                "{text}{}{cause}; is this a PostgreSQL server?",
                if cause.is_empty() { "" } else { ": " }
            ),
        )
    }
}

/// Probes a PostgreSQL server: connect, log in, `SELECT version()`.
pub async fn probe(ctx: &ProbeContext, req: &PostgresRequest) -> ProbeResult {
    run(ctx, req).await
}
