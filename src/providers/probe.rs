//! A provider file's `[probe]`: the "who am I" HTTP call that tests a
//! credential, declared instead of coded. Checked when the file loads, so a
//! malformed declaration stops startup naming the file and the field; run
//! by `probes::declared`.
//!
//! ```toml
//! [probe]
//! method = "GET"                              # GET (default), POST or HEAD
//! url = "{api_base_url}/v1/account"           # {api_base_url} and {field} placeholders
//! auth = "bearer"                             # bearer | header | basic | query | body | none
//! secret = "secret_key"                       # the field sent as the secret
//! header = "Authorization"                    # auth = "header": its name …
//! prefix = "Bot "                             # … and what precedes the secret
//! param = "key"                               # auth = "query" or "body": its name
//! user = "{account_sid}"                      # auth = "basic": the user name
//! headers = { "Notion-Version" = "2022-06-28" }
//! body = '{"query": "{ viewer { id } }"}'     # a JSON body (POST)
//! ok = [200]                                  # default [200]
//! auth_failed = [401, 403]                    # default [401, 403]
//! rate_limited = [429]                        # default [429]
//! success = "/ok"                             # a JSON pointer that must be true
//! error = "/error"                            # a JSON pointer to the service's error word
//! account = { id = "/id", name = "/name", email = "/email" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// Where the secret goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAuth {
    /// Nothing is sent (a public endpoint).
    None,
    /// `Authorization: Bearer {secret}`.
    Bearer,
    /// `{header}: {prefix}{secret}`.
    Header { name: String, prefix: String },
    /// HTTP basic: `user` (a template) and the secret as password.
    Basic { user: String },
    /// A query parameter.
    Query { param: String },
    /// A field of the JSON body.
    Body { param: String },
}

/// JSON pointers to the account facts shown in a probe's `detail`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccountPointers {
    pub id: Option<String>,
    pub name: Option<String>,
    pub email: Option<String>,
}

/// A checked `[probe]`.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    pub method: reqwest::Method,
    /// Template over `{api_base_url}` and the credential's fields.
    pub url: String,
    pub auth: ProbeAuth,
    /// The field whose value is the secret (`None` with `auth = "none"`).
    pub secret: Option<String>,
    /// Extra headers (templates).
    pub headers: BTreeMap<String, String>,
    /// A JSON body template.
    pub body: Option<String>,
    pub ok: Vec<u16>,
    pub auth_failed: Vec<u16>,
    pub rate_limited: Vec<u16>,
    /// A JSON pointer that must hold `true` for success.
    pub success: Option<String>,
    /// A JSON pointer to the service's own error word.
    pub error: Option<String>,
    pub account: AccountPointers,
    /// A response header that tells when the secret expires (GitHub's
    /// `github-authentication-token-expiration`).
    pub expires_header: Option<String>,
}

/// `[probe]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProbe {
    method: Option<String>,
    url: String,
    auth: String,
    secret: Option<String>,
    header: Option<String>,
    #[serde(default)]
    prefix: String,
    param: Option<String>,
    user: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<String>,
    ok: Option<Vec<u16>>,
    auth_failed: Option<Vec<u16>>,
    rate_limited: Option<Vec<u16>>,
    success: Option<String>,
    error: Option<String>,
    #[serde(default)]
    account: AccountPointers,
    expires_header: Option<String>,
}

/// The `{name}` placeholders of a template.
pub fn placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            names.push(name.to_owned());
        }
        rest = &after[end + 1..];
    }
    names
}

/// Whether a URL template is an absolute http or https URL once filled in.
pub(super) fn is_http_url(template: &str) -> bool {
    let sample = placeholders(template).iter().fold(template.to_owned(), |url, name| {
        let value = if name == "api_base_url" {
            "https://api.example.com"
        } else {
            "x"
        };
        url.replace(&format!("{{{name}}}"), value)
    });
    url::Url::parse(&sample).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
}

/// Checks a template's placeholders: `{api_base_url}` (when the file sets
/// one) and fields of every non-OAuth auth type (`fields`).
pub(super) fn check_template(
    field: &str,
    template: &str,
    fields: &[Vec<(String, bool)>],
    has_base_url: bool,
) -> Result<(), (String, String)> {
    for name in placeholders(template) {
        if name == "api_base_url" {
            if !has_base_url {
                return Err((
                    field.into(),
                    "uses {api_base_url} but the file sets no api_base_url".into(),
                ));
            }
        } else if !fields.iter().all(|f| f.iter().any(|(n, _)| *n == name)) {
            return Err((field.into(), format!("{{{name}}} is not a field of every auth type")));
        }
    }
    Ok(())
}

/// `auth` with what places it (`header`, `prefix`, `param`, `user`):
/// bearer, header, basic, query or none (`kinds` names those allowed, for
/// the error).
pub(super) fn parse_auth(
    auth: &str,
    (header, prefix, param, user): (Option<String>, String, Option<String>, Option<String>),
    kinds: &str,
) -> Result<ProbeAuth, (String, String)> {
    let e = |field: &str, message: String| Err((field.to_owned(), message));
    Ok(match auth {
        "none" => ProbeAuth::None,
        "bearer" => ProbeAuth::Bearer,
        "header" => {
            let Some(name) = header else {
                return e("header", "is required with auth = \"header\"".into());
            };
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return e("header", "is not a valid header name".into());
            }
            ProbeAuth::Header { name, prefix }
        }
        "basic" => {
            let Some(user) = user else {
                return e("user", "is required with auth = \"basic\"".into());
            };
            ProbeAuth::Basic { user }
        }
        "query" => {
            let Some(param) = param.filter(|p| !p.is_empty()) else {
                return e("param", "is required with auth = \"query\"".into());
            };
            ProbeAuth::Query { param }
        }
        other => return e("auth", format!("must be {kinds}, not {other:?}")),
    })
}

/// The field `secret` names: none with `auth = "none"`, else a secret
/// field of every non-OAuth auth type (`fields`).
pub(super) fn check_secret(
    auth: &ProbeAuth,
    secret: Option<&str>,
    fields: &[Vec<(String, bool)>],
) -> Result<(), (String, String)> {
    let e = |message: String| Err(("secret".to_owned(), message));
    match (auth, secret) {
        (ProbeAuth::None, None) => Ok(()),
        (ProbeAuth::None, Some(_)) => e("is not used with auth = \"none\"".into()),
        (_, None) => e("names the field sent as the secret; it is required".into()),
        (_, Some(name)) => {
            let secret_everywhere = fields.iter().all(|f| f.iter().any(|(n, secret)| n == name && *secret));
            if secret_everywhere {
                Ok(())
            } else {
                e(format!("{name:?} is not a secret field of every auth type"))
            }
        }
    }
}

/// `template` with each `{name}` replaced by `value(name)`; `None` when a
/// value is `None`.
pub fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> Option<String> {
    let mut out = template.to_owned();
    for name in placeholders(template) {
        out = out.replace(&format!("{{{name}}}"), &value(&name)?);
    }
    Some(out)
}

impl RawProbe {
    /// Checks the declaration against the provider's fields (`secret_fields`
    /// and `fields` of every non-OAuth auth type): `Err((field, message))`.
    pub(super) fn build(
        self,
        fields: &[Vec<(String, bool)>],
        has_base_url: bool,
    ) -> Result<ProbeSpec, (String, String)> {
        let e = |field: &str, message: String| Err((field.to_owned(), message));
        let method = match self.method.as_deref().unwrap_or("GET") {
            "GET" => reqwest::Method::GET,
            "POST" => reqwest::Method::POST,
            "HEAD" => reqwest::Method::HEAD,
            other => return e("method", format!("must be GET, POST or HEAD, not {other:?}")),
        };
        if fields.is_empty() {
            return e("-", "a provider with a [probe] needs a non-OAuth auth type".into());
        }
        let check_template = |field: &str, template: &str| check_template(field, template, fields, has_base_url);
        check_template("url", &self.url)?;
        if !is_http_url(&self.url) {
            return e("url", "must be an absolute http or https URL once filled in".into());
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return e(&format!("headers.{name}"), "is not a valid header name".into());
            }
            check_template(&format!("headers.{name}"), value)?;
        }
        if let Some(body) = &self.body {
            check_template("body", body)?;
            if serde_json::from_str::<serde_json::Value>(body).map_or(true, |v| !v.is_object()) {
                return e("body", "must be a JSON object".into());
            }
        }
        let auth = if self.auth == "body" {
            let Some(param) = self.param.filter(|p| !p.is_empty()) else {
                return e("param", "is required with auth = \"body\"".into());
            };
            if self.body.is_none() && method != reqwest::Method::POST {
                return e("method", "must be POST with auth = \"body\"".into());
            }
            ProbeAuth::Body { param }
        } else {
            let placement = (self.header, self.prefix, self.param, self.user);
            parse_auth(&self.auth, placement, "bearer, header, basic, query, body or none")?
        };
        if let ProbeAuth::Basic { user } = &auth {
            check_template("user", user)?;
        }
        check_secret(&auth, self.secret.as_deref(), fields)?;
        let statuses = |field: &str, v: Option<Vec<u16>>, default: &[u16]| -> Result<Vec<u16>, (String, String)> {
            let v = v.unwrap_or_else(|| default.to_vec());
            if v.iter().any(|s| !(100..=599).contains(s)) {
                return Err((field.into(), "HTTP statuses are 100 to 599".into()));
            }
            Ok(v)
        };
        let ok = statuses("ok", self.ok, &[200])?;
        if ok.is_empty() {
            return e("ok", "must list at least one status".into());
        }
        let pointer = |field: &str, p: &Option<String>| -> Result<(), (String, String)> {
            match p {
                Some(p) if !p.is_empty() && !p.starts_with('/') => {
                    Err((field.into(), "a JSON pointer starts with \"/\"".into()))
                }
                _ => Ok(()),
            }
        };
        pointer("success", &self.success)?;
        pointer("error", &self.error)?;
        pointer("account.id", &self.account.id)?;
        pointer("account.name", &self.account.name)?;
        pointer("account.email", &self.account.email)?;
        Ok(ProbeSpec {
            method,
            url: self.url,
            auth,
            secret: self.secret,
            headers: self.headers,
            body: self.body,
            ok,
            auth_failed: statuses("auth_failed", self.auth_failed, &[401, 403])?,
            rate_limited: statuses("rate_limited", self.rate_limited, &[429])?,
            success: self.success,
            error: self.error,
            account: self.account,
            expires_header: match self.expires_header {
                Some(h) if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() => {
                    return e("expires_header", format!("{h:?} is not a header name"))
                }
                other => other,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_the_braced_names() {
        assert_eq!(
            placeholders("https://{shop}/x?key={api_key}&q={ not }"),
            vec!["shop".to_owned(), "api_key".to_owned()]
        );
    }
}
