//! A provider file's `[proxy]`: how the gateway authenticates the calls it
//! makes for a credential, when that is not what its `[probe]` declares
//! (or the provider's test is built in). The probe's vocabulary, less
//! `body`; and where the calls go, when not to `api_base_url` (Telegram's
//! token is part of the path).
//!
//! ```toml
//! [proxy]
//! auth = "header"                  # bearer | header | basic | query | none
//! secret = "api_key"               # the field placed
//! header = "x-api-key"             # auth = "header": its name …
//! prefix = ""                      # … and what precedes the secret
//! param = "key"                    # auth = "query": its name
//! user = "{account_sid}"           # auth = "basic": the user name
//! base_url = "{api_base_url}/bot{bot_token}"   # where calls go (default: the credential's base_url, else api_base_url)
//! headers = { "OpenAI-Organization" = "{organization_id}" }  # sent when each field they name is set
//! query = { key = "{api_key}" }    # query parameters, the same (Trello's key beside its token)
//! ```
//!
//! A secret field in `base_url` is placed in the path (and kept out of the
//! answers like any secret placed). A field in its host (Shopify's
//! `https://{shop_domain}/admin/api/2024-10`: each shop its own host) must
//! be a field of type `hostname`, not secret: the credential's value is a
//! host name or nothing is called. A credential without its `secret`,
//! when that field is not required, is called without authentication.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::probe::{check_secret, check_template, is_http_url, parse_auth, placeholders, ProbeAuth};
use super::{AuthKind, AuthType, FieldKind};

/// Where `template`'s own authority ends (after `https://{shop_domain}` in
/// `https://{shop_domain}/admin`): 0 when it has none of its own, as when
/// it begins with `{api_base_url}`, whose origin is the file's.
pub fn authority_end(template: &str) -> usize {
    match template.split_once("://") {
        Some((scheme, rest)) if !scheme.contains('{') => {
            scheme.len() + 3 + rest.find(['/', '?', '#']).unwrap_or(rest.len())
        }
        _ => 0,
    }
}

/// A checked `[proxy]`.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub auth: ProbeAuth,
    /// The field placed (`None` with `auth = "none"`).
    pub secret: Option<String>,
    /// Template over `{api_base_url}` and the credential's fields.
    pub base_url: Option<String>,
    /// Secret fields `base_url` names.
    pub secrets_in_base: Vec<String>,
    /// Header templates, each sent when the fields it names are set.
    pub headers: BTreeMap<String, String>,
    /// Query parameter templates, the same.
    pub query: BTreeMap<String, String>,
}

impl ProxySpec {
    /// A field in the host of `base_url` chooses where calls go: it must be
    /// a host name (checked when the credential is written), and never a
    /// secret (it would travel in DNS queries and TLS handshakes).
    pub(super) fn check_hosts(&self, auth_types: &[AuthType]) -> Result<(), (String, String)> {
        let Some(base) = self.base_url.as_deref() else {
            return Ok(());
        };
        for name in placeholders(&base[..authority_end(base)]) {
            let defs = || {
                auth_types
                    .iter()
                    .filter(|a| a.kind != AuthKind::Oauth2)
                    .flat_map(|a| &a.fields)
                    .filter(|f| f.name == name)
            };
            let host = defs().next().is_some() && defs().all(|f| f.kind == FieldKind::Hostname && !f.secret);
            if !host {
                return Err((
                    "base_url".into(),
                    format!(
                        "places {{{name}}} in the host: it must be a field of type \"hostname\" that is not secret"
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// `[proxy]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProxy {
    auth: String,
    secret: Option<String>,
    header: Option<String>,
    #[serde(default)]
    prefix: String,
    param: Option<String>,
    user: Option<String>,
    base_url: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    query: BTreeMap<String, String>,
}

impl RawProxy {
    /// Checks the declaration against the provider's fields (those of every
    /// non-OAuth auth type): `Err((field, message))`.
    pub(super) fn build(
        self,
        fields: &[Vec<(String, bool)>],
        has_base_url: bool,
    ) -> Result<ProxySpec, (String, String)> {
        let e = |field: &str, message: &str| Err((field.to_owned(), message.to_owned()));
        if fields.is_empty() {
            return e("-", "a provider with a [proxy] needs a non-OAuth auth type");
        }
        let placement = (self.header, self.prefix, self.param, self.user);
        let auth = parse_auth(&self.auth, placement, "bearer, header, basic, query or none")?;
        if let ProbeAuth::Basic { user } = &auth {
            check_template("user", user, fields, has_base_url)?;
        }
        check_secret(&auth, self.secret.as_deref(), fields)?;
        let secret = |name: &str| fields.iter().any(|f| f.iter().any(|(n, s)| n == name && *s));
        let mut secrets_in_base = Vec::new();
        if let Some(base) = &self.base_url {
            check_template("base_url", base, fields, has_base_url)?;
            if !is_http_url(base) {
                return e("base_url", "must be an absolute http or https URL once filled in");
            }
            secrets_in_base = placeholders(base).into_iter().filter(|n| secret(n)).collect();
        }
        // Headers and query parameters: templates of fields that are not
        // secret (a secret is placed by `auth`, and kept out of answers).
        let header_name = |n: &str| reqwest::header::HeaderName::from_bytes(n.as_bytes()).is_ok();
        let param_name = |n: &str| !n.is_empty();
        for (kind, templates, valid) in [
            ("headers", &self.headers, &header_name as &dyn Fn(&str) -> bool),
            ("query", &self.query, &param_name),
        ] {
            for (name, value) in templates {
                let field = format!("{kind}.{name}");
                if !valid(name) {
                    return e(&field, "is not a valid name");
                }
                check_template(&field, value, fields, has_base_url)?;
                if placeholders(value).iter().any(|n| secret(n)) {
                    return e(&field, "names a secret field: a secret is placed by `auth`");
                }
            }
        }
        Ok(ProxySpec {
            auth,
            secret: self.secret,
            base_url: self.base_url,
            secrets_in_base,
            headers: self.headers,
            query: self.query,
        })
    }
}
