//! The gateway: a call the engine makes to a service through credgate,
//! which adds the credential's authentication, so the secret never leaves.
//! Here: where a call may go (never off the credential's origin or above
//! its base path), and what authenticates it; the HTTP half is
//! `http::proxy`.

use secrecy::ExposeSecret;
use serde_json::{json, Map, Value};
use url::Url;

use crate::context::Context;
use crate::error::Error;
use crate::execution::{resolve_as, Resolved};
use crate::ids::CredentialId;
use crate::model::{AuthKind, Principal};
use crate::providers::{Generic, ProbeAuth, Provider};
use crate::store::{CredentialRow, Usage, UseOutcome};

mod echo;
mod inflate;
mod path;
mod replicas;
use echo::without_parameter;
pub use echo::{Placed, Scrubbed};
pub use inflate::Inflater;
use path::join;
pub use path::safe_segments;
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

/// A 422 `not_proxyable`: `provider`'s credentials have no HTTP API the
/// gateway can call, or none whose authentication it can place.
fn not_proxyable(provider: &Provider, why: &str) -> Error {
    Error::Unprocessable {
        code: "not_proxyable",
        message: format!(
            "{} credentials cannot be called through the gateway: {why}",
            provider.display_name
        ),
        errors: Vec::new(),
    }
}

/// Whether a `kind` credential of `provider` can be called through the
/// gateway at all, known from the provider file alone: before the
/// credential is read, refreshed or its use recorded. An HTTP base (the
/// provider's API base, or the credential's own base URL) and a place
/// for its authentication (a token, a signature, or the probe's bearer,
/// header, basic or query placement of its key).
pub fn check_proxyable(provider: &Provider, kind: AuthKind) -> Result<(), Error> {
    if kind == AuthKind::AwsSigv4 {
        return match provider.aws_service {
            Some(_) => Ok(()),
            None => Err(not_proxyable(provider, "it names no AWS service to sign for")),
        };
    }
    let http = provider.generic == Some(Generic::Http);
    let own_base = provider
        .auth_type(kind)
        .is_some_and(|a| a.fields.iter().any(|f| f.name == "base_url" || f.name == "server_url"));
    let declared_base = provider.proxy.as_ref().is_some_and(|p| p.base_url.is_some());
    if !(http || own_base || declared_base || provider.api_base_url.is_some()) {
        return Err(not_proxyable(provider, "it has no HTTP API"));
    }
    let placed = kind.has_tokens()
        || http
        || matches!(kind, AuthKind::ApiKey | AuthKind::UserPassword)
            && (provider.proxy.is_some()
                || provider.probe.as_ref().is_some_and(|p| {
                    p.secret.is_some()
                        && matches!(
                            p.auth,
                            ProbeAuth::Bearer
                                | ProbeAuth::Header { .. }
                                | ProbeAuth::Basic { .. }
                                | ProbeAuth::Query { .. }
                        )
                }));
    if placed {
        Ok(())
    } else {
        Err(not_proxyable(
            provider,
            "the gateway cannot place its authentication in a request",
        ))
    }
}

fn text<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn base_url(provider: &Provider, resolved: &Resolved) -> Option<Url> {
    let fields = &resolved.fields;
    if provider.generic == Some(Generic::Http) {
        return text(fields, "base_url").and_then(|u| Url::parse(u).ok());
    }
    if provider.oauth.as_ref().is_some_and(|o| o.dynamic_registration) {
        return text(fields, "server_url").and_then(|u| Url::parse(u).ok());
    }
    if resolved.row.auth_type == AuthKind::AwsSigv4 {
        let region = text(fields, "region")?;
        return match text(fields, "endpoint_url") {
            Some(u) => Url::parse(u).ok(),
            None => Url::parse(&provider.aws_endpoint.as_ref()?.replace("{region}", region)).ok(),
        };
    }
    if let Some(template) = provider.proxy.as_ref().and_then(|p| p.base_url.as_deref()) {
        let segment = |v: &str| percent_encoding::utf8_percent_encode(v, PATH_VALUE).to_string();
        return filled(template, provider, fields, segment).and_then(|u| Url::parse(&u).ok());
    }
    let own = text(fields, "base_url").and_then(|u| Url::parse(u).ok());
    own.or_else(|| provider.api_base_url.clone())
}

/// What a field's value may hold as it is in a path: RFC 3986's `pchar`
/// (Telegram's `bot123:ABC`), everything else escaped, `/` included.
const PATH_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b':')
    .remove(b'@')
    .remove(b'!')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b';')
    .remove(b'=');

/// A provider file's `template` filled with `{api_base_url}` (as it is) and
/// the credential's `fields` (each as `encode` writes it); `None` when a
/// field it names is not set, or is a whole `.` or `..`.
fn filled(
    template: &str,
    provider: &Provider,
    fields: &Map<String, Value>,
    encode: impl Fn(&str) -> String,
) -> Option<String> {
    let mut out = template.to_owned();
    for name in crate::providers::placeholders(template) {
        let value = if name == "api_base_url" {
            provider
                .api_base_url
                .as_ref()?
                .as_str()
                .trim_end_matches('/')
                .to_owned()
        } else {
            let value = text(fields, &name)?;
            if value == "." || value == ".." {
                return None;
            }
            encode(value)
        };
        out = out.replace(&format!("{{{name}}}"), &value);
    }
    Some(out)
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Header or query parameter pairs (name, value).
type Pairs = Vec<(String, String)>;

/// Where a credential's authentication goes in a call: headers, or a query
/// parameter; and the secrets it puts there, which must never come back.
struct Placement {
    headers: Pairs,
    query: Option<(String, String)>,
    secrets: Vec<String>,
}

impl Placement {
    fn header(name: String, value: String, secrets: Vec<String>) -> Self {
        Self {
            headers: vec![(name, value)],
            query: None,
            secrets,
        }
    }

    fn bearer(token: String) -> Self {
        Self::header("authorization".into(), format!("Bearer {token}"), vec![token])
    }

    fn basic(user: &str, password: String) -> Self {
        let value = basic(user, &password);
        let blob = value.trim_start_matches("Basic ").to_owned();
        Self::header("authorization".into(), value, vec![password, blob])
    }

    fn none() -> Self {
        Self {
            headers: Vec::new(),
            query: None,
            secrets: Vec::new(),
        }
    }

    fn query(name: String, value: String) -> Self {
        Self {
            headers: Vec::new(),
            query: Some((name, value.clone())),
            secrets: vec![value],
        }
    }
}

/// How the credential authenticates a call: headers, or a query parameter.
fn authentication(provider: &Provider, resolved: &Resolved) -> Result<Placement, Error> {
    let fields = &resolved.fields;
    let unsupported = || not_proxyable(provider, "the gateway cannot place its authentication in a request");
    if let Some(token) = &resolved.access_token {
        return Ok(Placement::bearer(token.expose_secret().to_owned()));
    }
    if resolved.row.auth_type == AuthKind::AwsSigv4 {
        // Signed per request, over its body (see `http::proxy`); the
        // secret key never goes, a session token does.
        return Ok(Placement {
            headers: Vec::new(),
            query: None,
            secrets: text(fields, "session_token").map(str::to_owned).into_iter().collect(),
        });
    }
    if provider.generic == Some(Generic::Http) {
        let field = |n: &str| text(fields, n).unwrap_or_default().to_owned();
        return match text(fields, "scheme") {
            Some("bearer") => Ok(Placement::bearer(field("token"))),
            Some("header") => Ok(Placement::header(
                field("header_name").to_ascii_lowercase(),
                field("header_value"),
                vec![field("header_value")],
            )),
            Some("basic") => Ok(Placement::basic(&field("username"), field("password"))),
            Some("query") => Ok(Placement::query(field("param_name"), field("param_value"))),
            _ => Err(unsupported()),
        };
    }
    // The file's `[proxy]`, else its probe's placement.
    let kind = resolved.row.auth_type;
    let declared = match (&provider.proxy, &provider.probe) {
        (Some(proxy), _) => Some((&proxy.auth, proxy.secret.as_deref())),
        (None, Some(probe)) => Some((&probe.auth, probe.secret.as_deref())),
        (None, None) => None,
    };
    // A key the credential may go without, which its `[proxy]` places (an
    // OpenAI-compatible server of one's own): the call goes without one.
    let optional = |field| provider.proxy.is_some() && !required(provider, kind, field);
    let (Some((auth, secret_field)), AuthKind::ApiKey | AuthKind::UserPassword) = (declared, kind) else {
        return Err(unsupported());
    };
    let mut placement = match (auth, secret_field.and_then(|s| text(fields, s))) {
        (ProbeAuth::None, _) => Placement::none(),
        (_, None) if optional(secret_field) => Placement::none(),
        (_, None) => return Err(unsupported()),
        (ProbeAuth::Bearer, Some(secret)) => Placement::bearer(secret.to_owned()),
        (ProbeAuth::Header { name, prefix }, Some(secret)) => Placement::header(
            name.to_ascii_lowercase(),
            format!("{prefix}{secret}"),
            vec![secret.to_owned()],
        ),
        (ProbeAuth::Basic { user }, Some(secret)) => {
            let user = filled(user, provider, fields, str::to_owned).ok_or_else(unsupported)?;
            Placement::basic(&user, secret.to_owned())
        }
        (ProbeAuth::Query { param }, Some(secret)) => Placement::query(param.clone(), secret.to_owned()),
        (ProbeAuth::Body { .. }, Some(_)) => return Err(unsupported()),
    };
    if let Some(proxy) = &provider.proxy {
        // Secrets in the path go in with the base URL; kept out of answers.
        for name in &proxy.secrets_in_base {
            placement.secrets.extend(text(fields, name).map(str::to_owned));
        }
        for (name, template) in &proxy.headers {
            if let Some(value) = filled(template, provider, fields, str::to_owned) {
                placement.headers.push((name.to_ascii_lowercase(), value));
            }
        }
    }
    Ok(placement)
}

/// Whether `kind`'s field `name` must be set (a field the file does not
/// declare counts as one).
fn required(provider: &Provider, kind: AuthKind, name: Option<&str>) -> bool {
    provider
        .auth_type(kind)
        .and_then(|a| a.fields.iter().find(|f| Some(f.name.as_str()) == name))
        .is_none_or(|f| f.required)
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
        secrets,
    } = authentication(provider, resolved)?;
    let mut url = join(&base, segments, query)?;
    if let Some((name, value)) = &query_auth {
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
