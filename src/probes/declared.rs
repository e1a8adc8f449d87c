//! The probe a provider file declares (`[probe]`, see
//! `providers::ProbeSpec`): one HTTP call through the egress guard with the
//! credential's secret where the file says, judged by the statuses and JSON
//! pointers it names. Same time limits, byte cap and failure codes as the
//! coded probes.

use reqwest::header::{HeaderName, HeaderValue};
use serde_json::{json, Map, Value};
use url::Url;

use super::http::{send, status_failure};
use super::{FailureCode, FieldError, Pool, Probe, ProbeContext, ProbeFailure, Slot};
use crate::providers::{placeholders, ProbeAuth, ProbeSpec};

/// A declared probe with a credential's values. `Debug` shows no value.
pub struct DeclaredProbe {
    /// The provider's name, for messages.
    pub service: String,
    pub spec: ProbeSpec,
    /// The provider's `api_base_url`, if any.
    pub api_base_url: Option<String>,
    /// The credential's fields (secrets included).
    pub fields: Map<String, Value>,
    /// Names of the secret fields.
    pub secret_names: Vec<String>,
}

impl std::fmt::Debug for DeclaredProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclaredProbe")
            .field("service", &self.service)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// The probe of a generic HTTP credential: `GET {base_url}{test_path}` with
/// its own scheme; any 2xx passes.
fn http_spec(fields: &Map<String, Value>) -> ProbeSpec {
    let text = |name: &str| fields.get(name).and_then(Value::as_str).unwrap_or_default().to_owned();
    let (auth, secret) = match text("scheme").as_str() {
        "header" => (
            ProbeAuth::Header {
                name: text("header_name"),
                prefix: String::new(),
            },
            "header_value",
        ),
        "basic" => (
            ProbeAuth::Basic {
                user: "{username}".into(),
            },
            "password",
        ),
        "query" => (
            ProbeAuth::Query {
                param: text("param_name"),
            },
            "param_value",
        ),
        _ => (ProbeAuth::Bearer, "token"),
    };
    // The path is the credential's own, inserted as typed (it was checked
    // to be a path); `{` would be read as a placeholder, so it is escaped.
    let path = text("test_path").replace('{', "%7B").replace('}', "%7D");
    ProbeSpec {
        method: reqwest::Method::GET,
        url: format!("{{api_base_url}}{path}"),
        auth,
        secret: Some(secret.into()),
        headers: Default::default(),
        body: None,
        ok: (200..300).collect(),
        auth_failed: vec![401, 403],
        rate_limited: vec![429],
        success: None,
        error: None,
        account: Default::default(),
        expires_header: None,
    }
}

/// Characters left as they are when a value fills a URL placeholder.
const URL_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

impl DeclaredProbe {
    /// `provider`'s declared probe with a credential's `fields`, if its file
    /// has a `[probe]`.
    pub fn for_provider(provider: &crate::providers::Provider, fields: &Map<String, Value>) -> Option<Self> {
        let spec = match provider.generic {
            Some(crate::providers::Generic::Http) => http_spec(fields),
            _ => provider.probe.clone()?,
        };
        let api_base_url = match provider.generic {
            Some(crate::providers::Generic::Http) => fields.get("base_url").and_then(Value::as_str).map(str::to_owned),
            _ => provider.api_base_url.as_ref().map(ToString::to_string),
        };
        let secret_names = provider
            .auth_types
            .iter()
            .flat_map(|a| a.fields.iter().filter(|f| f.secret).map(|f| f.name.clone()))
            .collect();
        Some(Self {
            service: provider.display_name.clone(),
            spec,
            api_base_url,
            fields: fields.clone(),
            secret_names,
        })
    }

    fn text(&self, name: &str) -> Option<String> {
        if name == "api_base_url" {
            return self.api_base_url.as_ref().map(|u| u.trim_end_matches('/').to_owned());
        }
        match self.fields.get(name)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }

    /// Fills `template`; `encode` escapes each value (not `{api_base_url}`).
    fn fill(&self, template: &str, encode: impl Fn(&str) -> String) -> String {
        let filled = crate::providers::fill(template, |name| {
            let value = self.text(name).unwrap_or_default();
            Some(if name == "api_base_url" { value } else { encode(&value) })
        });
        filled.unwrap_or_default()
    }

    fn secret(&self) -> String {
        self.spec
            .secret
            .as_deref()
            .and_then(|s| self.text(s))
            .unwrap_or_default()
    }

    fn request(&self, ctx: &ProbeContext) -> Result<(Url, reqwest::RequestBuilder), ProbeFailure> {
        let protocol = |m: &str| ProbeFailure::new(FailureCode::Protocol, m.to_owned());
        let url = self.fill(&self.spec.url, |v| {
            percent_encoding::utf8_percent_encode(v, URL_VALUE).to_string()
        });
        let mut url = Url::parse(&url).map_err(|_| protocol("the values do not make a valid URL"))?;
        let secret = self.secret();
        if let ProbeAuth::Query { param } = &self.spec.auth {
            url.query_pairs_mut().append_pair(param, &secret);
        }
        let mut request = ctx.http().request(self.spec.method.clone(), url.clone());
        for (name, template) in &self.spec.headers {
            let value = self.fill(template, str::to_owned);
            let value = HeaderValue::from_str(&value).map_err(|_| protocol("a header value is not valid"))?;
            request = request.header(HeaderName::from_bytes(name.as_bytes()).expect("checked at load"), value);
        }
        let sensitive = |text: String| {
            let mut v = HeaderValue::from_str(&text)
                .map_err(|_| protocol("the secret contains characters a header cannot carry"))?;
            v.set_sensitive(true);
            Ok::<_, ProbeFailure>(v)
        };
        request = match &self.spec.auth {
            ProbeAuth::None | ProbeAuth::Query { .. } | ProbeAuth::Body { .. } => request,
            ProbeAuth::Bearer => request.header(reqwest::header::AUTHORIZATION, sensitive(format!("Bearer {secret}"))?),
            ProbeAuth::Header { name, prefix } => request.header(
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| protocol("the header name is not valid"))?,
                sensitive(format!("{prefix}{secret}"))?,
            ),
            ProbeAuth::Basic { user } => request.basic_auth(self.fill(user, str::to_owned), Some(secret.clone())),
        };
        let mut body = match &self.spec.body {
            Some(template) => Some(
                serde_json::from_str::<Value>(&self.fill(template, |v| {
                    let quoted = Value::String(v.to_owned()).to_string();
                    quoted[1..quoted.len() - 1].to_owned()
                }))
                .map_err(|_| protocol("the values do not make a valid JSON body"))?,
            ),
            None => None,
        };
        if let ProbeAuth::Body { param } = &self.spec.auth {
            body.get_or_insert_with(|| json!({}))[param.as_str()] = Value::String(secret);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        Ok((url, request))
    }

    /// The account facts the file points at.
    fn account(&self, body: &Value) -> Value {
        let mut detail = Map::new();
        let pointers = &self.spec.account;
        for (key, pointer) in [
            ("account_id", &pointers.id),
            ("account_name", &pointers.name),
            ("email", &pointers.email),
        ] {
            let Some(found) = pointer.as_deref().and_then(|p| body.pointer(p)) else {
                continue;
            };
            let text = match found {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            detail.insert(key.into(), Value::String(text.chars().take(200).collect()));
        }
        Value::Object(detail)
    }

    /// The service's own error word, if the file points at one.
    fn said(&self, body: &Value) -> Option<String> {
        let word = body.pointer(self.spec.error.as_deref()?)?;
        let text = word.as_str().map_or_else(|| word.to_string(), str::to_owned);
        Some(text.chars().take(120).collect())
    }
}

/// A service's expiry header as a time: GitHub's `2027-01-31 12:00:00 UTC`
/// (or `… +0100`), or RFC 3339.
fn expiry_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let text = text.trim();
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(t.to_utc());
    }
    if let Ok(t) = chrono::DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S %z") {
        return Some(t.to_utc());
    }
    let naive = text.strip_suffix(" UTC")?;
    chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

impl Probe for DeclaredProbe {
    const NAME: &'static str = "declared";
    const POOL: Pool = Pool::Http;

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut names = placeholders(&self.spec.url);
        names.extend(self.spec.headers.values().flat_map(|v| placeholders(v)));
        if let ProbeAuth::Basic { user } = &self.spec.auth {
            names.extend(placeholders(user));
        }
        names.extend(self.spec.secret.clone());
        let errors: Vec<FieldError> = names
            .iter()
            .filter(|n| n.as_str() != "api_base_url" && self.text(n).is_none_or(|t| t.is_empty()))
            .map(|n| FieldError::new(format!("fields.{n}"), "is required for the connection test"))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    async fn execute(&self, ctx: &ProbeContext, _slot: Slot) -> Result<Value, (Value, ProbeFailure)> {
        let (url, request) = self.request(ctx).map_err(|f| (json!({}), f))?;
        let mut detail = json!({ "host": url.host_str() });
        let reply = send(ctx, &url, request).await.map_err(|f| (detail.clone(), f))?;
        let status = reply.status.as_u16();
        let service = self.service.as_str();
        if self.spec.ok.contains(&status) {
            let passed = self
                .spec
                .success
                .as_deref()
                .is_none_or(|p| reply.json.pointer(p) == Some(&Value::Bool(true)));
            if !passed {
                let said = self.said(&reply.json).map(|w| format!(" ({w})")).unwrap_or_default();
                let failure = ProbeFailure::new(
                    FailureCode::AuthFailed,
                    format!("{service} did not accept the credentials{said}; check the key or token"),
                );
                return Err((detail, failure));
            }
            if let (Value::Object(d), Value::Object(a)) = (&mut detail, self.account(&reply.json)) {
                d.extend(a);
            }
            let ends = self
                .spec
                .expires_header
                .as_deref()
                .and_then(|h| reply.headers.get(h))
                .and_then(|v| v.to_str().ok())
                .and_then(expiry_time);
            if let Some(t) = ends {
                detail["expires_at"] = json!(t);
            }
            return Ok(detail);
        }
        if let Some(secs) = reply.headers.get("retry-after").and_then(|v| v.to_str().ok()) {
            detail["retry_after"] = json!(secs.chars().take(32).collect::<String>());
        }
        let said = self.said(&reply.json);
        let failure = if self.spec.auth_failed.contains(&status) {
            let said = said.map(|w| format!(" ({w})")).unwrap_or_default();
            ProbeFailure::new(
                FailureCode::AuthFailed,
                format!("{service} rejected the credentials: HTTP {status}{said}; check the key or token"),
            )
        } else if self.spec.rate_limited.contains(&status) {
            ProbeFailure::new(
                FailureCode::RateLimited,
                format!("{service} is rate limiting this key: HTTP {status}; try again later"),
            )
        } else {
            status_failure(reply.status, said, service)
        };
        Err((detail, failure))
    }

    fn secrets(&self) -> Vec<&str> {
        self.secret_names
            .iter()
            .filter_map(|n| self.fields.get(n).and_then(Value::as_str))
            .filter(|s| !s.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::expiry_time;

    #[test]
    fn expiry_headers_are_read_in_githubs_format_and_rfc_3339() {
        let want = chrono::DateTime::parse_from_rfc3339("2027-01-31T12:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(expiry_time("2027-01-31 12:00:00 UTC"), Some(want));
        assert_eq!(expiry_time("2027-01-31 13:00:00 +0100"), Some(want));
        assert_eq!(expiry_time("2027-01-31T12:00:00Z"), Some(want));
        assert_eq!(expiry_time("next week"), None);
    }
}
