//! The gateway: a call the engine makes to a service through credgate,
//! which adds the credential's authentication, so the secret never leaves.
//! Here: preparing a call (its use recorded, its path never off the
//! credential's origin or above its base path, see `path`), where it goes
//! and what authenticates it (`placement`), what must not come back
//! (`echo`, `inflate`, `ranges`); the HTTP half is `http::proxy`.

use secrecy::ExposeSecret;
use serde_json::json;
use url::Url;

use crate::context::Context;
use crate::error::Error;
use crate::execution::{resolve_as, Resolved};
use crate::ids::CredentialId;
use crate::model::{AuthKind, Principal};
use crate::store::{CredentialRow, Usage, UseOutcome};

mod echo;
mod inflate;
mod path;
mod placement;
mod ranges;
mod replicas;
use echo::without_parameter;
pub use echo::{Placed, Scrubbed};
pub use inflate::Inflater;
use path::join;
pub use path::safe_segments;
pub use placement::check_proxyable;
use placement::{authentication, base_url, not_proxyable, text, Pairs, Placement};
pub use ranges::{Asked, Cut};
pub use replicas::{replica_beat, replica_gone, REPLICA_BEAT, REPLICA_EXPIRES_SECS};

/// A call ready to send: the URL and the headers that authenticate it.
/// `Debug` prints neither header values nor the path and query (a secret
/// may be placed in either).
pub struct Call {
    pub url: Url,
    /// Authentication and the provider's static headers (secret values).
    pub headers: Vec<(String, String)>,
    pub resolved: Resolved,
    /// An `aws_sigv4` credential's service: each request is signed, its
    /// body included.
    pub aws_service: Option<String>,
    /// The secrets placed in the request, kept out of the answer.
    pub placed: Placed,
}

impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("host", &self.url.host_str())
            .field("headers", &self.headers.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Prepares `method path?query` through credential `id` for `who`: checks
/// `use`, refreshes a token within the resolve margin, records the use
/// durably (`credential.proxy`, the method and the path without its query),
/// and returns the call. The path is checked before anything is read.
pub async fn prepare(
    ctx: &Context,
    who: &Principal,
    id: &CredentialId,
    usage: &Usage,
    (method, path, query): (&str, &str, Option<&str>),
) -> Result<Call, Error> {
    let segments = safe_segments(path)?;
    let detail = json!({"method": method, "path": format!("/{path}")});
    let proxyable = |row: &CredentialRow| match ctx.registry.get(&row.provider) {
        Some(provider) => check_proxyable(provider, row.auth_type),
        None => Err(Error::NotFound),
    };
    let resolved = resolve_as(ctx, who, id, usage, ("credential.proxy", Some(detail)), &proxyable).await?;
    // The use is recorded: a call refused from here on (what only the
    // opened credential tells, such as a base URL or key it lacks) gets its
    // outcome too, or it would read as one that went through.
    match addressed(ctx, &resolved, &segments, query) {
        Ok((url, headers, aws_service, placed)) => Ok(Call {
            url,
            headers,
            resolved,
            aws_service,
            placed,
        }),
        Err(e) => {
            let code = match &e {
                Error::Unprocessable { code, .. } => *code,
                _ => "not_proxyable",
            };
            ctx.outcomes.enqueue(use_outcome(&resolved, None, Some(code))).await;
            Err(e)
        }
    }
}

/// Where `resolved`'s call goes and what authenticates it: the URL, the
/// headers, the AWS service that signs it, and what it places.
fn addressed(
    ctx: &Context,
    resolved: &Resolved,
    segments: &[String],
    query: Option<&str>,
) -> Result<(Url, Pairs, Option<String>, Placed), Error> {
    let provider = ctx.registry.get(&resolved.row.provider).ok_or(Error::NotFound)?;
    let base = base_url(provider, resolved).ok_or_else(|| not_proxyable(provider, "it has no base URL"))?;
    let Placement {
        mut headers,
        query: query_auth,
        params,
        secrets,
    } = authentication(provider, resolved)?;
    let mut url = join(&base, segments, query)?;
    for (name, value) in params.iter().chain(&query_auth) {
        // The engine's own parameter of that name goes: the service must
        // never read it in place of the credential's.
        let others = url.query().map(|q| without_parameter(q, name));
        url.set_query(others.as_deref().filter(|q| !q.is_empty()));
        url.query_pairs_mut().append_pair(name, value);
    }
    let placed = Placed::new(secrets, query_auth.as_ref().map(|(n, v)| (n.as_str(), v.as_str())));
    for (name, value) in &provider.proxy_headers {
        headers.push((name.to_ascii_lowercase(), value.clone()));
    }
    let aws_service = (resolved.row.auth_type == AuthKind::AwsSigv4)
        .then(|| provider.aws_service.clone())
        .flatten();
    if resolved.row.auth_type == AuthKind::AwsSigv4 && aws_service.is_none() {
        return Err(not_proxyable(provider, "it names no AWS service to sign for"));
    }
    Ok((url, headers, aws_service, placed))
}

/// The outcome of `resolved`'s use: the service's `status`, or what went
/// wrong (its latency is the caller's to set).
pub fn use_outcome(resolved: &Resolved, status: Option<u16>, error: Option<&'static str>) -> UseOutcome {
    UseOutcome {
        event_id: resolved.use_event.0,
        org_id: resolved.row.org_id.clone(),
        detail: resolved.use_event.1.clone(),
        status,
        error,
        latency_ms: 0,
    }
}

/// The headers that sign an `aws_sigv4` call of `method` with `headers`
/// (sent as they are) and `body`.
pub fn aws_signature(
    call: &Call,
    method: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<Vec<(String, String)>, Error> {
    let fields = &call.resolved.fields;
    let service = call.aws_service.as_deref().unwrap_or_default();
    let key = crate::aws_sign::AwsKey {
        access_key_id: text(fields, "access_key_id").unwrap_or_default(),
        secret_access_key: text(fields, "secret_access_key").unwrap_or_default(),
        session_token: text(fields, "session_token"),
        region: text(fields, "region").unwrap_or_default(),
    };
    crate::aws_sign::sigv4_headers(&key, service, (method, call.url.as_str()), headers, body).map_err(|e| {
        Error::Unprocessable {
            code: "not_proxyable",
            message: format!("the request could not be signed: {e}"),
            errors: Vec::new(),
        }
    })
}

/// After the service refused the token (401): one refresh now, and the
/// new `Authorization` header; `None` for a credential without tokens or
/// a refresh that failed. The new token is kept out of the answer too.
pub async fn renewed_authorization(ctx: &Context, call: &mut Call) -> Option<String> {
    let row = &call.resolved.row;
    if !row.auth_type.has_tokens() {
        return None;
    }
    let row = crate::oauth::refresh::refresh_credential(ctx, &row.org_id, &row.id, crate::oauth::refresh::Mode::Now)
        .await
        .ok()?;
    let tokens = crate::credentials::CredentialSecrets::open(&ctx.vault, &row)
        .await
        .ok()?
        .tokens?;
    let token = tokens.access_token.expose_secret().to_owned();
    let header = format!("Bearer {token}");
    call.placed.add(token);
    Some(header)
}
