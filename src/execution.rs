//! Using a stored credential: `resolve` for the workflow engine (a token
//! valid long enough, the decrypted values, a durable use record before they
//! are returned) and the connection test with stored values (which records
//! its outcome on the credential).

use secrecy::SecretString;
use serde_json::{json, Map, Value};

use crate::context::Context;
use crate::credentials::{self, access, CredentialSecrets};
use crate::error::Error;
use crate::ids::{CredentialId, OrgId};
use crate::model::{Access, AuthKind, CredentialStatus, Principal};
use crate::oauth::refresh::ensure_fresh;
use crate::probes::{
    self, DeclaredProbe, FailureCode, ImapRequest, LlmRequest, PostgresRequest, Probe, ProbeFailure, ProbeResult,
    SftpRequest, SmtpRequest, TelegramRequest,
};
use crate::store::{AuditEvent, CredentialRow, Usage, UseRecord};

/// A credential's values for execution. `Debug` prints no value.
pub struct Resolved {
    pub row: CredentialRow,
    /// Every field, secrets decrypted.
    pub fields: Map<String, Value>,
    /// OAuth: the access token (never the refresh token).
    pub access_token: Option<SecretString>,
    /// The use's audit event, and the detail it was recorded with.
    pub use_event: (i64, Option<Value>),
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("id", &self.row.id)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Resolves a credential for the workflow engine: refreshes first when the
/// token expires within `CREDGATE_RESOLVE_MARGIN_SECS`, and records the use
/// (audited, durably) before returning anything.
/// `who` is the principal the engine acts for (its key's user, a user named
/// in the request, or the organization); `use` is checked for it.
pub async fn resolve(ctx: &Context, who: &Principal, id: &CredentialId, usage: &Usage) -> Result<Resolved, Error> {
    resolve_as(ctx, who, id, usage, ("credential.resolve", None), &|_| Ok(())).await
}

/// [`resolve`], audited as `action` with `detail` beside the workflow and
/// run (the gateway's `credential.proxy`, with the method and path; its
/// outcome is added to the event later). `usable` is asked
/// once `use` is granted, before anything is refreshed or recorded (the
/// gateway: whether the credential can be called through it at all).
pub async fn resolve_as(
    ctx: &Context,
    who: &Principal,
    id: &CredentialId,
    usage: &Usage,
    (action, detail): (&'static str, Option<Value>),
    usable: &(dyn Fn(&CredentialRow) -> Result<(), Error> + Sync),
) -> Result<Resolved, Error> {
    // Decided on this process's last read of the credential when its use's
    // write finds that read still current; else on a read of its own.
    let recorded = (action, detail);
    if let Some(resolved) = use_once(ctx, who, id, usage, &recorded, usable, true).await? {
        return Ok(resolved);
    }
    ctx.metrics.use_reads_stale.inc();
    use_once(ctx, who, id, usage, &recorded, usable, false)
        .await?
        .ok_or_else(|| Error::Internal(anyhow::anyhow!("a use decided on its own read was not recorded")))
}

/// One attempt of [`resolve_as`]: `None` when it was decided on an earlier
/// read (`reuse`) that is no longer current, or that would need more than
/// the use itself (a refresh, a status that may have changed); nothing is
/// recorded then.
async fn use_once(
    ctx: &Context,
    who: &Principal,
    id: &CredentialId,
    usage: &Usage,
    (action, detail): &(&'static str, Option<Value>),
    usable: &(dyn Fn(&CredentialRow) -> Result<(), Error> + Sync),
    reuse: bool,
) -> Result<Option<Resolved>, Error> {
    let (mut row, read_at) = access::authorize_use(ctx, who, id, reuse).await?;
    let margin = ctx.config.resolve_margin_secs as i64;
    if read_at.is_some() {
        let refreshing = row.auth_type.has_tokens()
            && (row.status == CredentialStatus::NeedsReauth || row.expires_within(ctx.now(), margin));
        if refreshing || usable(&row).is_err() {
            return Ok(None);
        }
    }
    usable(&row)?;
    let org_id = &who.org_id;
    if row.auth_type.has_tokens() {
        row = ensure_fresh(ctx, row, margin).await?;
    }
    let secrets = match CredentialSecrets::open(&ctx.vault, &row).await {
        Ok(secrets) => secrets,
        // Sealed under a key since rotated away, perhaps: read anew.
        Err(_) if read_at.is_some() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut event = AuditEvent::success(org_id, &row.id, action, &who.actor());
    if usage.workflow_id.is_some() || usage.run_id.is_some() || detail.is_some() {
        let mut d = detail.clone().unwrap_or_else(|| json!({}));
        d["workflow_id"] = json!(usage.workflow_id);
        d["run_id"] = json!(usage.run_id);
        event = event.with_detail(d);
    }
    let recorded = event.detail.clone();
    let reused = read_at.is_some();
    let written = ctx
        .uses
        .submit(UseRecord {
            event,
            usage: usage.clone(),
            read_at,
        })
        .await?;
    let Some(event_id) = written else {
        return Ok(None);
    };
    if reused {
        ctx.metrics.use_reads_reused.inc();
    }
    Ok(Some(Resolved {
        fields: secrets.merged_fields(&row),
        // The refresh token never leaves credgate: it alone refreshes, so a
        // rotated token can never be used twice by someone else.
        access_token: secrets.tokens.map(|t| t.access_token),
        row,
        use_event: (event_id, recorded),
    }))
}

/// Builds probe `P` from a credential's fields (the provider files use the
/// probe bodies' field names), checks it, and runs it.
async fn run_probe<P: Probe + serde::de::DeserializeOwned>(
    ctx: &Context,
    org_id: &OrgId,
    fields: Map<String, Value>,
) -> Result<ProbeResult, Error> {
    let req: P = serde_json::from_value(Value::Object(fields))
        .map_err(|_| Error::field("fields", "do not fit this provider's connection test"))?;
    req.validate().map_err(field_errors)?;
    Ok(probes::run(&ctx.probes, org_id, &req).await)
}

fn field_errors(errors: Vec<probes::FieldError>) -> Error {
    Error::Validation(errors)
}

/// OAuth credentials: a fresh token, then the identity endpoint.
async fn probe_oauth(ctx: &Context, row: CredentialRow) -> ProbeResult {
    let started = std::time::Instant::now();
    let fail = |code, message: String| ProbeResult {
        ok: false,
        latency_ms: started.elapsed().as_millis() as u64,
        detail: json!({}),
        error: Some(ProbeFailure::new(code, message)),
    };
    let Some(settings) = ctx.registry.get(&row.provider).and_then(|p| p.oauth.as_ref()) else {
        return fail(FailureCode::Protocol, "the provider has no OAuth settings".into());
    };
    let row = match ensure_fresh(ctx, row, 60).await {
        Ok(row) => row,
        Err(Error::NeedsReauth(m)) => return fail(FailureCode::AuthFailed, m),
        Err(e) => return fail(FailureCode::ProviderError, e.to_string()),
    };
    let token = CredentialSecrets::open(&ctx.vault, &row)
        .await
        .ok()
        .and_then(|s| s.tokens)
        .map(|t| t.access_token);
    let Some(token) = token else {
        return fail(
            FailureCode::AuthFailed,
            "no access token is stored; re-authorize".into(),
        );
    };
    if settings.dynamic_registration {
        return probe_mcp(ctx, &row, &token, started).await;
    }
    match crate::oauth_client::userinfo(&ctx.http, settings, &token).await {
        Ok(identity) => ProbeResult {
            ok: true,
            latency_ms: started.elapsed().as_millis() as u64,
            detail: json!({"account_id": identity.id, "email": identity.email, "display_name": identity.display_name}),
            error: None,
        },
        Err(e) => fail(FailureCode::AuthFailed, e.message),
    }
}

/// A minted credential: a new token minted now, from its stored fields.
async fn probe_minted(ctx: &Context, row: &CredentialRow) -> ProbeResult {
    let started = std::time::Instant::now();
    let latency = || started.elapsed().as_millis() as u64;
    let fail = |code, message: String| ProbeResult {
        ok: false,
        latency_ms: latency(),
        detail: json!({}),
        error: Some(ProbeFailure::new(code, message)),
    };
    match crate::oauth::refresh::refresh_credential(ctx, &row.org_id, &row.id, crate::oauth::refresh::Mode::Now).await {
        Ok(row) => ProbeResult {
            ok: true,
            latency_ms: latency(),
            detail: json!({
                "account": row.account_email.as_ref().or(row.account_id.as_ref()),
                "scopes": row.scopes,
                "expires_in": row.expires_at.map(|t| t - ctx.now()),
            }),
            error: None,
        },
        Err(Error::NeedsReauth(m)) => fail(FailureCode::AuthFailed, m),
        Err(e) => fail(FailureCode::ProviderError, e.to_string()),
    }
}

/// An MCP server: a request with the token, behind the egress guard. Any
/// answer but 401/403 means the server took the token (a server that
/// streams only on POST may well answer a GET with 405).
async fn probe_mcp(
    ctx: &Context,
    row: &CredentialRow,
    token: &secrecy::SecretString,
    started: std::time::Instant,
) -> ProbeResult {
    use secrecy::ExposeSecret;
    let latency = || started.elapsed().as_millis() as u64;
    let fail = |code, message: String| ProbeResult {
        ok: false,
        latency_ms: latency(),
        detail: json!({}),
        error: Some(ProbeFailure::new(code, message)),
    };
    let Some(url) = row
        .fields
        .get("server_url")
        .and_then(|u| u.as_str())
        .and_then(|u| url::Url::parse(u).ok())
    else {
        return fail(FailureCode::Protocol, "the credential names no MCP server".into());
    };
    if ctx.probes.egress.check_url(&url).is_err() {
        return fail(
            FailureCode::EgressDenied,
            "credgate is not allowed to reach the MCP server".into(),
        );
    }
    let answer = ctx
        .guarded_http
        .get(url)
        .bearer_auth(token.expose_secret())
        .header(reqwest::header::ACCEPT, "application/json, text/event-stream")
        .send()
        .await;
    match answer {
        Ok(r) if matches!(r.status().as_u16(), 401 | 403) => fail(
            FailureCode::AuthFailed,
            format!("the MCP server refused the token (HTTP {})", r.status().as_u16()),
        ),
        Ok(r) if r.status().is_server_error() => fail(
            FailureCode::Protocol,
            format!("the MCP server answered HTTP {}", r.status().as_u16()),
        ),
        Ok(r) => ProbeResult {
            ok: true,
            latency_ms: latency(),
            detail: json!({"status": r.status().as_u16(), "server_url": row.fields.get("server_url")}),
            error: None,
        },
        Err(e) if e.is_timeout() => fail(FailureCode::Timeout, "the MCP server did not answer in time".into()),
        Err(_) => fail(
            FailureCode::ConnectRefused,
            "the MCP server could not be reached".into(),
        ),
    }
}

/// Providers whose connection test is code (the rest declare `[probe]`).
const CODED_PROBES: [&str; 9] = [
    "aws_ses",
    "sftp",
    "postgresql",
    "openai",
    "anthropic",
    "openai_compatible",
    "telegram",
    "smtp",
    "imap",
];

/// Does `provider` have a connection test?
pub fn has_probe(provider: &crate::providers::Provider) -> bool {
    provider.probe.is_some()
        || provider.generic == Some(crate::providers::Generic::Http)
        || CODED_PROBES.contains(&provider.id.as_str())
}

/// Runs `provider`'s connection test on `fields` (stored or just typed);
/// `Conflict(no_probe)` for a provider without one.
pub async fn probe_fields(
    ctx: &Context,
    org_id: &OrgId,
    provider: &str,
    mut fields: Map<String, Value>,
) -> Result<ProbeResult, Error> {
    if let Some(declared) = ctx
        .registry
        .get(provider)
        .and_then(|p| DeclaredProbe::for_provider(p, &fields))
    {
        declared.validate().map_err(field_errors)?;
        return Ok(probes::run(&ctx.probes, org_id, &declared).await);
    }
    match provider {
        "sftp" => run_probe::<SftpRequest>(ctx, org_id, fields).await,
        "postgresql" => run_probe::<PostgresRequest>(ctx, org_id, fields).await,
        "openai" | "anthropic" | "openai_compatible" => {
            fields.insert("provider_type".into(), provider.into());
            run_probe::<LlmRequest>(ctx, org_id, fields).await
        }
        "telegram" => run_probe::<TelegramRequest>(ctx, org_id, fields).await,
        "smtp" => run_probe::<SmtpRequest>(ctx, org_id, fields).await,
        "imap" => run_probe::<ImapRequest>(ctx, org_id, fields).await,
        "aws_ses" => run_probe::<crate::probes::ses::SesRequest>(ctx, org_id, fields).await,
        other => Err(Error::Conflict(
            "no_probe",
            format!("credgate has no connection test for provider {other}"),
        )),
    }
}

/// Tests a saved credential with its stored values and records the outcome
/// (`status`, `last_tested_at`, `last_error`). A caller with `use` alone is
/// told only whether it worked, how long it took and the failure's code.
pub async fn test(ctx: &Context, who: &Principal, id: &CredentialId) -> Result<ProbeResult, Error> {
    let (row, access) = access::authorize(ctx, who, id, Access::Use).await?;
    let org_id = &who.org_id;
    let result = if row.auth_type == AuthKind::Oauth2 {
        probe_oauth(ctx, row.clone()).await
    } else if row.auth_type.is_minted() {
        probe_minted(ctx, &row).await
    } else {
        let secrets = CredentialSecrets::open(&ctx.vault, &row).await?;
        probe_fields(ctx, org_id, &row.provider, secrets.merged_fields(&row)).await?
    };
    let failure = result.error.as_ref().map(|e| (e.code.as_str(), e.message.as_str()));
    // A service that tells when the key expires (GitHub): its end.
    let ends = result.ok.then(|| result.detail.get("expires_at")).flatten();
    let ends = ends
        .and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.timestamp());
    credentials::record_test(ctx, &row, failure, ends).await?;
    tracing::info!(credential = %row.id, ok = result.ok, "credential tested");
    Ok(if access < Access::View {
        result.for_use_only()
    } else {
        result
    })
}
