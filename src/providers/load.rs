//! Reading provider files, applying `CREDGATE_PROVIDER_{ID}_{FIELD}`
//! overrides, and turning them into checked [`Provider`]s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::SecretString;

use super::fields::build_field;
use super::overrides::apply_overrides;
use super::raw::{RawIdentity, RawProvider};
use super::{AuthKind, AuthType, ClientAuth, IdentityMap, IdentitySource, OAuthSettings, Provider, TokenBody};

/// A provider file that cannot be used; names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("provider file {file}: field `{field}`: {message}")]
pub struct ProviderFileError {
    /// The file.
    pub file: PathBuf,
    /// Dotted path of the offending field (or `-` for the whole file).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// Loads every `*.toml` in `dir`, applying overrides from `env`
/// (`CREDGATE_PROVIDER_{ID}_{FIELD}` → value).
pub fn load_dir(dir: &Path, env: &BTreeMap<String, String>) -> Result<Vec<Provider>, ProviderFileError> {
    build_all(read_dir(dir)?, env)
}

mod built_in {
    include!(concat!(env!("OUT_DIR"), "/built_in_providers.rs"));
}

/// The catalog: the provider files compiled into the binary, and those of
/// `dir` on top (a file there adds a provider, or replaces the built-in one
/// of the same id), with `env`'s overrides applied. `dir` must exist when
/// it is given (`CREDGATE_PROVIDERS_DIR` set); without it, `./providers` is
/// read when it exists, so a checkout's edited files are served.
pub fn load_catalog(dir: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Vec<Provider>, ProviderFileError> {
    let mut sources: BTreeMap<String, Source> = built_in::BUILT_IN
        .iter()
        .map(|(name, text)| {
            let id = name.trim_end_matches(".toml").to_owned();
            let file = PathBuf::from(format!("built-in providers/{name}"));
            (
                id,
                Source {
                    file,
                    text: (*text).to_owned(),
                },
            )
        })
        .collect();
    let local = Path::new("./providers");
    let dir = match dir {
        Some(dir) => Some(dir),
        None => local.is_dir().then_some(local),
    };
    if let Some(dir) = dir {
        for (id, source) in read_dir(dir)? {
            sources.insert(id, source);
        }
    }
    build_all(sources.into_iter().collect(), env)
}

/// One provider file's text and where it came from.
struct Source {
    file: PathBuf,
    text: String,
}

/// The `*.toml` files of `dir`, by id (the file stem), in id order.
fn read_dir(dir: &Path) -> Result<Vec<(String, Source)>, ProviderFileError> {
    let whole = |file: &Path, message: String| ProviderFileError {
        file: file.to_owned(),
        field: "-".into(),
        message,
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| whole(dir, format!("cannot read the providers directory: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
        .into_iter()
        .filter_map(|file| Some((file.file_stem()?.to_str()?.to_owned(), file)))
        .map(|(id, file)| {
            let text = std::fs::read_to_string(&file).map_err(|e| whole(&file, e.to_string()))?;
            Ok((id, Source { file, text }))
        })
        .collect()
}

/// Parses, overrides and checks every source.
fn build_all(
    sources: Vec<(String, Source)>,
    env: &BTreeMap<String, String>,
) -> Result<Vec<Provider>, ProviderFileError> {
    let ids: Vec<String> = sources.iter().map(|(id, _)| id.clone()).collect();
    let mut providers = Vec::new();
    for (id, Source { file, text }) in &sources {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ProviderFileError {
            file: file.clone(),
            field: "-".into(),
            message: e.message().trim().replace('\n', " "),
        })?;
        let overridden = apply_overrides(&mut table, id, &ids, env);
        // A field set from the environment is named with its variable.
        let blame = |mut e: ProviderFileError| {
            let top = e.field.split(['.', '[']).next().unwrap_or_default();
            if let Some(var) = overridden.get(top) {
                e.message = format!("{} (the value comes from the environment variable {var})", e.message);
            }
            e
        };
        let raw: RawProvider = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| ProviderFileError {
                file: file.clone(),
                field: e.path().to_string(),
                message: e.inner().to_string().trim().replace('\n', " "),
            })
            .map_err(|e| {
                // An unknown field's path is the table's; name the variable
                // that brought it.
                match overridden
                    .iter()
                    .find(|(field, _)| e.message.contains(&format!("`{field}`")))
                {
                    Some((field, var)) => ProviderFileError {
                        field: field.clone(),
                        message: format!("{} (the environment variable {var})", e.message),
                        ..e
                    },
                    None => blame(e),
                }
            })?;
        providers.push(build(file, id, raw).map_err(blame)?);
    }
    Ok(providers)
}

fn build(file: &Path, id: &str, raw: RawProvider) -> Result<Provider, ProviderFileError> {
    let err = |field: &str, message: &str| ProviderFileError {
        file: file.to_owned(),
        field: field.to_owned(),
        message: message.to_owned(),
    };
    if raw.auth_types.is_empty() {
        return Err(err("auth_types", "at least one auth type is required"));
    }
    let mut auth_types = Vec::new();
    for (i, at) in raw.auth_types.into_iter().enumerate() {
        let mut fields = Vec::new();
        for (j, f) in at.fields.into_iter().enumerate() {
            let path = format!("auth_types[{i}].fields[{j}]");
            fields.push(build_field(f).map_err(|(field, message)| err(&format!("{path}.{field}"), &message))?);
        }
        auth_types.push(AuthType { kind: at.kind, fields });
    }
    let check_url = |name: &str, value: &Option<String>| -> Result<(), ProviderFileError> {
        if let Some(v) = value {
            let probe = v.replace("{tenant}", "common");
            let ok = url::Url::parse(&probe).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
            if !ok {
                return Err(err(name, "must be an absolute http or https URL"));
            }
        }
        Ok(())
    };
    check_url("authorization_url", &raw.authorization_url)?;
    check_url("token_url", &raw.token_url)?;
    check_url("userinfo_url", &raw.userinfo_url)?;
    check_url("revocation_url", &raw.revocation_url)?;
    check_url("api_base_url", &raw.api_base_url)?;
    let api_base_url = raw
        .api_base_url
        .as_deref()
        .map(|u| url::Url::parse(u).expect("checked above"));

    let dynamic_registration = match raw.discovery.as_deref() {
        None => false,
        Some("mcp") => true,
        Some(_) => return Err(err("discovery", "must be \"mcp\"")),
    };
    let oauth = if auth_types.iter().any(|a| a.kind == AuthKind::Oauth2) {
        let need = |name: &str, v: Option<String>| {
            if dynamic_registration {
                return Ok(v.unwrap_or_default());
            }
            v.ok_or_else(|| err(name, "is required for an oauth2 provider"))
        };
        let identity = match raw.identity {
            Some(identity) => identity,
            // An MCP server is the account: no identity request.
            None if dynamic_registration => RawIdentity {
                source: Some("token_response".into()),
                id: vec!["/resource".into()],
                email: vec![],
                display_name: vec![],
            },
            None => return Err(err("identity", "is required for an oauth2 provider")),
        };
        if identity.id.is_empty() {
            return Err(err("identity.id", "must name at least one userinfo key"));
        }
        let identity_source = match identity.source.as_deref().unwrap_or("userinfo") {
            "userinfo" => IdentitySource::Userinfo,
            "token_response" => IdentitySource::TokenResponse,
            _ => return Err(err("identity.source", "must be \"userinfo\" or \"token_response\"")),
        };
        for (name, keys) in [
            ("identity.id", &identity.id),
            ("identity.email", &identity.email),
            ("identity.display_name", &identity.display_name),
        ] {
            if keys
                .iter()
                .any(|k| k.is_empty() || (k.starts_with('/') && k.len() == 1))
            {
                return Err(err(name, "holds an empty key or JSON pointer"));
            }
        }
        let userinfo_url = match identity_source {
            IdentitySource::Userinfo => need("userinfo_url", raw.userinfo_url)?,
            IdentitySource::TokenResponse => raw.userinfo_url.unwrap_or_default(),
        };
        let token_body = match raw.token_request_format.as_deref().unwrap_or("form") {
            "form" => TokenBody::Form,
            "json" => TokenBody::Json,
            _ => return Err(err("token_request_format", "must be \"form\" or \"json\"")),
        };
        let scope_separator = raw.scope_separator.unwrap_or_else(|| " ".to_owned());
        if !matches!(scope_separator.as_str(), " " | "," | "+") {
            return Err(err("scope_separator", "must be \" \", \",\" or \"+\""));
        }
        for (name, value) in &raw.identity_headers {
            let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && reqwest::header::HeaderValue::from_str(value).is_ok();
            if !valid {
                return Err(err(&format!("identity_headers.{name}"), "is not a valid HTTP header"));
            }
        }
        let refresh_lifetime = match (raw.refresh_token_lifetime_days, raw.refresh_token_lifetime.as_deref()) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(err(
                    "refresh_token_lifetime_days",
                    "is required with refresh_token_lifetime",
                ))
            }
            (Some(days), _) if !(1..=3650).contains(&days) => {
                return Err(err("refresh_token_lifetime_days", "must be between 1 and 3650"))
            }
            (Some(days), kind) => Some(super::RefreshLifetime {
                secs: days * 86_400,
                renewed: match kind.unwrap_or("absolute") {
                    "absolute" => false,
                    "sliding" | "inactivity" => true,
                    _ => {
                        return Err(err(
                            "refresh_token_lifetime",
                            "must be \"absolute\", \"sliding\" or \"inactivity\"",
                        ))
                    }
                },
            }),
        };
        let client_auth = match raw.client_auth.as_deref().unwrap_or("body") {
            "body" => ClientAuth::Body,
            "basic" => ClientAuth::Basic,
            "none" => ClientAuth::None,
            _ => return Err(err("client_auth", "must be \"body\", \"basic\" or \"none\"")),
        };
        Some(OAuthSettings {
            authorization_url: need("authorization_url", raw.authorization_url)?,
            token_url: need("token_url", raw.token_url)?,
            userinfo_url,
            revocation_url: raw.revocation_url,
            issuer: raw.issuer,
            client_id: raw.client_id.unwrap_or_default(),
            client_secret: SecretString::from(raw.client_secret.unwrap_or_default()),
            scopes: raw.scopes,
            client_auth,
            authorize_params: raw.authorize_params,
            identity: IdentityMap {
                id: identity.id,
                email: identity.email,
                display_name: identity.display_name,
                source: identity_source,
                headers: raw.identity_headers,
            },
            tenant: raw.tenant,
            scope_separator,
            token_body,
            pkce: raw.pkce.unwrap_or(true),
            reauth_errors: raw.reauth_errors,
            token_error_pointer: match raw.token_error_pointer {
                Some(p) if !p.starts_with('/') || p.len() < 2 => {
                    return Err(err("token_error_pointer", "must be a JSON pointer like \"/status\""))
                }
                other => other,
            },
            dynamic_registration,
            resource: None,
            refresh_lifetime,
        })
    } else {
        None
    };
    let generic = match raw.generic.as_deref() {
        None => None,
        Some(g) => Some(super::Generic::parse(g).ok_or_else(|| err("generic", "must be \"key_value\" or \"http\""))?),
    };
    // The fields of every non-OAuth auth type, and whether each is secret.
    let fields: Vec<Vec<(String, bool)>> = auth_types
        .iter()
        .filter(|a| a.kind != AuthKind::Oauth2)
        .map(|a| a.fields.iter().map(|f| (f.name.clone(), f.secret)).collect())
        .collect();
    let probe = match raw.probe {
        Some(probe) => Some(
            probe
                .build(&fields, api_base_url.is_some())
                .map_err(|(field, message)| err(&format!("probe.{field}"), &message))?,
        ),
        None => None,
    };
    let proxy = match raw.proxy {
        Some(proxy) => Some(
            proxy
                .build(&fields, api_base_url.is_some())
                .map_err(|(field, message)| err(&format!("proxy.{field}"), &message))?,
        ),
        None => None,
    };
    if let Some(proxy) = &proxy {
        proxy
            .check_hosts(&auth_types)
            .map_err(|(field, message)| err(&format!("proxy.{field}"), &message))?;
    }
    for (name, value) in &raw.proxy_headers {
        let valid = reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
            && reqwest::header::HeaderValue::from_str(value).is_ok();
        if !valid {
            return Err(err(&format!("proxy_headers.{name}"), "is not a valid HTTP header"));
        }
    }
    if let Some(e) = &raw.aws_endpoint {
        let ok = url::Url::parse(&e.replace("{region}", "us-east-1"))
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
        if !ok {
            return Err(err(
                "aws_endpoint",
                "must be an absolute http or https URL (with `{region}`)",
            ));
        }
    }
    if raw.aws_service.as_deref().is_some_and(|s| {
        s.is_empty()
            || !s
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    }) {
        return Err(err("aws_service", "must be an AWS service name such as `ses`"));
    }
    Ok(Provider {
        aws_service: raw.aws_service,
        aws_endpoint: raw.aws_endpoint,
        proxy_headers: raw.proxy_headers,
        id: id.to_owned(),
        display_name: raw.display_name,
        auth_types,
        oauth,
        api_base_url,
        probe,
        proxy,
        generic,
    })
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
