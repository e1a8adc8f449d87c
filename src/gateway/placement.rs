//! Where a credential's call goes and how its authentication is placed in
//! it, known from its provider file (`[proxy]`, else `[probe]`) and its
//! opened fields: the base URL, the headers or query parameter, and the
//! secrets placed (kept out of the answer, see `echo`).

use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use url::Url;

use crate::error::Error;
use crate::execution::Resolved;
use crate::model::AuthKind;
use crate::providers::{authority_end, hostname_ok, placeholders, Generic, ProbeAuth, Provider};

/// A 422 `not_proxyable`: `provider`'s credentials have no HTTP API the
/// gateway can call, or none whose authentication it can place.
pub(super) fn not_proxyable(provider: &Provider, why: &str) -> Error {
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

pub(super) fn text<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    fields.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
}

pub(super) fn base_url(provider: &Provider, resolved: &Resolved) -> Option<Url> {
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
        // A field in the host (each Shopify shop is its own) is a host name,
        // as written; one in the path is escaped as a segment.
        let (origin, path) = template.split_at(authority_end(template));
        if !placeholders(origin)
            .iter()
            .all(|n| text(fields, n).is_some_and(hostname_ok))
        {
            return None;
        }
        let segment = |v: &str| percent_encoding::utf8_percent_encode(v, PATH_VALUE).to_string();
        let url = filled(origin, provider, fields, str::to_owned)? + &filled(path, provider, fields, segment)?;
        return Url::parse(&url).ok();
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
    crate::providers::fill(template, |name| {
        if name == "api_base_url" {
            let base = provider.api_base_url.as_ref()?;
            return Some(base.as_str().trim_end_matches('/').to_owned());
        }
        text(fields, name).filter(|v| *v != "." && *v != "..").map(&encode)
    })
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Header or query parameter pairs (name, value).
pub(super) type Pairs = Vec<(String, String)>;

/// Where a credential's authentication goes in a call: headers, or a query
/// parameter; and the secrets it puts there, which must never come back.
pub(super) struct Placement {
    pub(super) headers: Pairs,
    pub(super) query: Option<(String, String)>,
    /// Query parameters that are not secret (Trello's key).
    pub(super) params: Pairs,
    pub(super) secrets: Vec<String>,
}

impl Placement {
    fn header(name: String, value: String, secrets: Vec<String>) -> Self {
        Self {
            headers: vec![(name, value)],
            secrets,
            ..Self::none()
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
            params: Vec::new(),
            secrets: Vec::new(),
        }
    }

    fn query(name: String, value: String) -> Self {
        Self {
            query: Some((name, value.clone())),
            secrets: vec![value],
            ..Self::none()
        }
    }
}

/// How the credential authenticates a call: headers, or a query parameter.
pub(super) fn authentication(provider: &Provider, resolved: &Resolved) -> Result<Placement, Error> {
    let fields = &resolved.fields;
    let unsupported = || not_proxyable(provider, "the gateway cannot place its authentication in a request");
    if let Some(token) = &resolved.access_token {
        return Ok(Placement::bearer(token.expose_secret().to_owned()));
    }
    if resolved.row.auth_type == AuthKind::AwsSigv4 {
        // Signed per request, over its body (see `http::proxy`); the
        // secret key never goes, a session token does.
        return Ok(Placement {
            secrets: text(fields, "session_token").map(str::to_owned).into_iter().collect(),
            ..Placement::none()
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
        for (name, template) in &proxy.query {
            if let Some(value) = filled(template, provider, fields, str::to_owned) {
                placement.params.push((name.clone(), value));
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
