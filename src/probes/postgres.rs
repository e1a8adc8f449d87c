//! The PostgreSQL probe: connect (TLS per `sslmode`), log in, run
//! `SELECT version()` and report what the server says about the session.
//!
//! Every host of the connection (several hosts, `hostaddr`) goes through the
//! egress guard, Unix-socket hosts are refused, and tokio-postgres speaks
//! over a stream opened to the checked address (`Config::connect_raw`).
//!
//! The connection is driven inside the probe's own future, never spawned:
//! when the probe ends or is dropped (its time is up, the caller left), the
//! socket closes with it. Reads are capped at [`MAX_READ`], so a server that
//! announces a huge message cannot make the client buffer it.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Config;

use crate::ids::OrgId;

use super::capped::{Capped, TooMuchData};
pub use super::pg_target::PostgresRequest;
use super::pg_target::{target, Endpoint, Target, Tls};
use super::pg_tls::PgTls;
use super::{
    check_host_port, into_result, run, stage, FailureCode, FieldError, Pool, Probe, ProbeContext, ProbeFailure,
    ProbeResult, Slot,
};

/// Bytes a probe reads from one server at most: a login and one query's
/// answer take a few kilobytes.
const MAX_READ: usize = 1 << 20;

/// The query whose answer the probe reports.
const QUERY: &str = "SELECT version(), current_database()::text, current_user::text, \
                     current_setting('server_version'), \
                     COALESCE((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)";

impl Probe for PostgresRequest {
    const NAME: &'static str = "postgres";
    const POOL: Pool = Pool::Postgres;

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
            if let Err(e) = target(self) {
                errors.push(e);
            }
        }
        into_result(errors)
    }

    async fn execute(&self, ctx: &ProbeContext, _slot: Slot) -> Result<Value, (Value, ProbeFailure)> {
        let target = target(self).map_err(|e| (json!({}), ProbeFailure::new(FailureCode::Protocol, e.message)))?;
        // Check every endpoint that needs no DNS before connecting anywhere.
        for endpoint in &target.endpoints {
            match endpoint {
                Endpoint::Unix(path) => {
                    return Err((
                        json!({}),
                        ProbeFailure::new(
                            FailureCode::EgressDenied,
                            format!("Unix-socket host `{path}` may not be reached; give a TCP host"),
                        ),
                    ))
                }
                Endpoint::Tcp {
                    host, addr: Some(ip), ..
                } => ctx.egress.check(host, *ip).map_err(|e| (json!({}), e.into()))?,
                Endpoint::Tcp { .. } => {}
            }
        }
        let mut last = None;
        for endpoint in &target.endpoints {
            match attempt(ctx, &target, endpoint).await {
                Ok(facts) => return Ok(facts),
                Err(failure) if failure.code == FailureCode::EgressDenied => return Err((json!({}), failure)),
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
async fn attempt(ctx: &ProbeContext, target: &Target, endpoint: &Endpoint) -> Result<Value, ProbeFailure> {
    let Endpoint::Tcp { host, addr, port } = endpoint else {
        return Err(ProbeFailure::new(
            FailureCode::EgressDenied,
            "Unix-socket hosts may not be reached; give a TCP host",
        ));
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
    let stream = Capped::new(stream, MAX_READ);
    let (client, connection) = stage("the PostgreSQL handshake and login", ctx.timeouts.stage, async {
        target
            .config
            .connect_raw(stream, tls)
            .await
            .map_err(|e| classify(&e, &target.config))
    })
    .await?;
    // The connection does the socket's reading and writing; polling it here
    // beside the query ties the socket's life to this future.
    let mut connection = std::pin::pin!(connection);
    let row = stage("SELECT version()", ctx.timeouts.stage, async {
        tokio::select! {
            row = client.query_one(QUERY, &[]) => row.map_err(|e| classify(&e, &target.config)),
            ended = &mut connection => Err(match ended {
                Err(e) => classify(&e, &target.config),
                Ok(()) => ProbeFailure::new(FailureCode::Protocol, "the server closed the connection before answering"),
            }),
        }
    })
    .await;
    // Dropping the client queues a Terminate; a moment of driving sends it,
    // so an honest server sees a clean goodbye rather than a reset.
    drop(client);
    let _ = tokio::time::timeout(Duration::from_millis(500), connection).await;
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
    if TooMuchData::is_cause_of(e) {
        return ProbeFailure::new(
            FailureCode::Protocol,
            "the server sent more than 1 MiB where a login and one query take a few kB; \
             is this a PostgreSQL server?",
        );
    }
    if let Some(db) = e.as_db_error() {
        let code = db.code();
        return if *code == SqlState::INVALID_PASSWORD || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION {
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
                format!("the server said: {} (SQLSTATE {})", db.message(), code.code()),
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

/// Probes a PostgreSQL server for organization `org_id`: connect, log in,
/// `SELECT version()`.
pub async fn probe(ctx: &ProbeContext, org_id: &OrgId, req: &PostgresRequest) -> ProbeResult {
    run(ctx, org_id, req).await
}
