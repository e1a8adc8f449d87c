//! Connecting a remote MCP server (MCP authorization): from the server's URL
//! to an OAuth client for it. The server's protected-resource metadata
//! (RFC 9728: from its `WWW-Authenticate` challenge, else the well-known
//! URLs) names its authorization server, whose metadata (RFC 8414, else
//! OpenID discovery) gives the endpoints; credgate registers itself there
//! (RFC 7591) once per organization and authorization server, sealed like an
//! organization's own app, and asks for tokens for the server's resource
//! (RFC 8707) with PKCE. Every request goes through the egress guard, with
//! the provider timeout and a size limit; whatever a server answers, a
//! failure is a field error on `server_url` in words, never a 5xx.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::{json, Value};
use url::Url;

mod challenge;
mod discovery;

use discovery::{authorization_server, protected_resource, ServerMetadata};

use super::flow::redirect_uri;
use crate::context::Context;
use crate::error::Error;
use crate::model::Principal;
use crate::oauth_apps::{self as apps, AppSettings, Client, ServerEndpoints};
use crate::providers::{FieldError, Provider};

/// The largest metadata or registration answer read.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024;

/// Longest server URL accepted.
const MAX_URL_LEN: usize = 2048;

/// What the flow keeps and sends besides the client: the resource tokens
/// are asked for, and the server URL the person gave.
pub type Extra = Vec<(&'static str, String)>;

fn refused(message: impl Into<String>) -> Error {
    Error::Validation(vec![FieldError::new("server_url", message)])
}

/// Checks the URL a person gave: absolute http(s), no credentials or fragment.
pub fn check_server_url(raw: &str) -> Result<Url, Error> {
    let url = Url::parse(raw.trim()).map_err(|_| refused("must be an absolute http or https URL"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() || raw.len() > MAX_URL_LEN {
        return Err(refused(
            "must be an absolute http or https URL of at most 2048 characters",
        ));
    }
    if !url.username().is_empty() || url.password().is_some() || url.fragment().is_some() {
        return Err(refused("must not carry a user, password or fragment"));
    }
    Ok(url)
}

/// `url` without a trailing slash, for comparing identifiers.
fn canonical(url: &str) -> &str {
    url.trim_end_matches('/')
}

/// One answer: status, headers, and the body when it is JSON within the limit.
struct Answer {
    status: u16,
    challenge: Option<String>,
    json: Option<Value>,
}

/// One request to a URL a server named, behind the egress guard (the
/// resolver checks named hosts; an address literal is checked here).
async fn send(ctx: &Context, url: Url, body: Option<&Value>, what: &str) -> Result<Answer, Error> {
    ctx.probes
        .egress
        .check_url(&url)
        .map_err(|_| refused(format!("credgate is not allowed to reach {what}")))?;
    let request = match body {
        Some(body) => ctx.guarded_http.post(url).json(body),
        None => ctx
            .guarded_http
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json, text/event-stream"),
    };
    let mut response = request.send().await.map_err(|e| unreachable_error(&e, what))?;
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.trim_start().to_ascii_lowercase().starts_with("bearer"))
        .map(str::to_owned);
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                    return Err(refused(format!("{what} answered more than 64 KiB")));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => return Err(unreachable_error(&e, what)),
        }
    }
    Ok(Answer {
        status,
        challenge,
        json: serde_json::from_slice(&body).ok(),
    })
}

fn unreachable_error(e: &reqwest::Error, what: &str) -> Error {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.downcast_ref::<crate::egress::EgressError>()
            .is_some_and(|e| matches!(e, crate::egress::EgressError::Denied { .. }))
        {
            return refused(format!("credgate is not allowed to reach {what}"));
        }
        source = s.source();
    }
    if e.is_timeout() {
        return refused(format!("{what} did not answer in time"));
    }
    refused(format!("{what} could not be reached"))
}

/// RFC 7591: registers credgate as a client of the authorization server.
async fn register(
    ctx: &Context,
    provider: &Provider,
    server: &ServerMetadata,
) -> Result<(String, Option<SecretString>, String, Option<i64>), Error> {
    let endpoint = server.registration_endpoint.clone().ok_or_else(|| {
        refused("the authorization server offers no dynamic client registration (RFC 7591), which credgate needs")
    })?;
    let method = ["client_secret_post", "client_secret_basic", "none"]
        .into_iter()
        .find(|m| server.auth_methods.iter().any(|s| s == m))
        .ok_or_else(|| refused("the authorization server offers no client authentication credgate supports"))?;
    let body = json!({
        "client_name": "credgate",
        "redirect_uris": [redirect_uri(ctx, &provider.id)],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": method,
    });
    let answer = send(
        ctx,
        endpoint,
        Some(&body),
        "the authorization server's registration endpoint",
    )
    .await?;
    if !(200..300).contains(&answer.status) {
        let error = answer
            .json
            .as_ref()
            .and_then(|d| d.get("error"))
            .and_then(Value::as_str)
            .unwrap_or("no error code")
            .chars()
            .filter(|c| c.is_ascii_graphic())
            .take(64)
            .collect::<String>();
        return Err(refused(format!(
            "the authorization server refused to register credgate (HTTP {}, {error})",
            answer.status
        )));
    }
    let doc = answer
        .json
        .ok_or_else(|| refused("the authorization server's registration answer is not a JSON document"))?;
    let client_id = doc
        .get("client_id")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty() && c.len() <= 512)
        .ok_or_else(|| refused("the authorization server's registration answer has no valid `client_id`"))?
        .to_owned();
    let secret = doc
        .get("client_secret")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 4096)
        .map(|s| SecretString::from(s.to_owned()));
    let granted = doc
        .get("token_endpoint_auth_method")
        .and_then(Value::as_str)
        .filter(|m| ["client_secret_post", "client_secret_basic", "none"].contains(m))
        .unwrap_or(method);
    let granted = if secret.is_none() { "none" } else { granted };
    let expires_at = doc
        .get("client_secret_expires_at")
        .and_then(Value::as_i64)
        .filter(|t| *t > 0);
    Ok((client_id, secret, granted.to_owned(), expires_at))
}

/// The client to connect the MCP server at `server_url` through, and what
/// the flow keeps: the organization's registration at the server's
/// authorization server (made now if there is none, or if it expired).
pub async fn client_for(
    ctx: &Context,
    who: &Principal,
    provider: &Provider,
    server_url: &str,
) -> Result<(Client, Extra), Error> {
    let server = check_server_url(server_url)?;
    let resource = protected_resource(ctx, &server).await?;
    let metadata = authorization_server(ctx, &resource.issuer).await?;
    let app = format!("mcp:{}", canonical(&metadata.endpoints.issuer));
    let existing = ctx.store.oauth_app(&who.org_id, &app).await?;
    let reusable = existing.filter(|row| {
        apps::settings_of(row).is_ok_and(|s| {
            let fresh = s.client_secret_expires_at.is_none_or(|t| t > ctx.now() + 60);
            let same = s.server.as_ref().is_some_and(|e| {
                e.token_endpoint == metadata.endpoints.token_endpoint
                    && e.authorization_endpoint == metadata.endpoints.authorization_endpoint
            });
            fresh && same
        })
    });
    let client_id = match reusable {
        Some(row) => row.client_id,
        None => {
            let (client_id, secret, method, expires_at) = register(ctx, provider, &metadata).await?;
            let settings = AppSettings {
                client_secret_expires_at: expires_at,
                server: Some(ServerEndpoints {
                    token_endpoint_auth_method: method,
                    ..metadata.endpoints.clone()
                }),
                ..AppSettings::default()
            };
            let secret = apps::secret_map(secret);
            // A registration another flow stored meanwhile wins: ours is
            // dropped unused (keep_existing), so neither flow's client changes.
            let (_, row) =
                apps::store_app(ctx, who, (&app, &provider.id), (&client_id, &secret), &settings, true).await?;
            row.client_id
        }
    };
    let mut client = apps::for_app(ctx, &who.org_id, provider, Some(&(app, client_id)))
        .await
        .map_err(|_| refused("the registration at the authorization server changed meanwhile; try again"))?;
    {
        let settings = Arc::make_mut(&mut client.settings);
        settings.resource = Some(resource.resource.clone());
        settings.scopes = resource.scopes;
    }
    let extra = vec![("resource", resource.resource), ("server_url", server.to_string())];
    Ok((client, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls_are_checked() {
        for bad in [
            "",
            "ftp://x",
            "mcp.example.com",
            "https://u:p@x.example/",
            "https://x.example/#f",
        ] {
            assert!(check_server_url(bad).is_err(), "{bad}");
        }
        assert!(check_server_url("https://x.example/mcp").is_ok());
    }
}
