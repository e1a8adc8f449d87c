//! Discovery (RFC 9728, RFC 8414, OpenID Connect discovery): from the
//! MCP server's URL to its authorization server's endpoints.

use serde_json::Value;
use url::Url;

use super::challenge::{challenge_params, param};
use super::{canonical, refused, send, MAX_URL_LEN};
use crate::context::Context;
use crate::error::Error;
use crate::oauth_apps::ServerEndpoints;

/// What the server's protected-resource metadata says.
pub(super) struct Resource {
    /// The resource identifier tokens are asked for (RFC 8707).
    pub(super) resource: String,
    /// Its authorization server (the first listed).
    pub(super) issuer: String,
    /// Scopes to ask for: the challenge's, else the metadata's.
    pub(super) scopes: Vec<String>,
}

fn string_list(doc: &Value, key: &str) -> Option<Vec<String>> {
    doc.get(key)?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_owned))
        .collect()
}

fn http_url(value: Option<&Value>) -> Option<Url> {
    let url = Url::parse(value?.as_str()?).ok()?;
    (matches!(url.scheme(), "http" | "https") && url.host_str().is_some() && url.as_str().len() <= MAX_URL_LEN)
        .then_some(url)
}

/// The well-known URL of `kind` for `url` (RFC 9728 §3.1, RFC 8414 §3.1):
/// the well-known path inserted between the host and the URL's path.
fn well_known(url: &Url, kind: &str) -> Url {
    let mut out = url.clone();
    let path = canonical(url.path()).to_owned();
    out.set_path(&format!("/.well-known/{kind}{path}"));
    out.set_query(None);
    out
}

/// RFC 9728: the server's protected-resource metadata.
pub(super) async fn protected_resource(ctx: &Context, server: &Url) -> Result<Resource, Error> {
    let answer = send(ctx, server.clone(), None, "the MCP server").await?;
    let challenge = answer.challenge.as_deref().map(challenge_params).unwrap_or_default();
    let mut candidates = Vec::new();
    if let Some(url) = param(&challenge, "resource_metadata").and_then(|u| http_url(Some(&Value::String(u)))) {
        candidates.push(url);
    }
    candidates.push(well_known(server, "oauth-protected-resource"));
    if !canonical(server.path()).is_empty() {
        let mut root = server.clone();
        root.set_path("/.well-known/oauth-protected-resource");
        root.set_query(None);
        candidates.push(root);
    }
    let mut doc = None;
    for url in candidates {
        let answer = send(ctx, url, None, "the server's protected-resource metadata").await?;
        if answer.status == 200 {
            doc = Some(answer.json.ok_or_else(|| {
                refused("the server's protected-resource metadata (RFC 9728) is not a JSON document")
            })?);
            break;
        }
    }
    let doc = doc.ok_or_else(|| {
        refused(
            "the server publishes no protected-resource metadata (RFC 9728); is this the URL of an MCP server that uses OAuth?",
        )
    })?;
    let resource = http_url(doc.get("resource"))
        .ok_or_else(|| refused("the server's protected-resource metadata names no valid `resource`"))?;
    if canonical(resource.as_str()) != canonical(server.as_str())
        && canonical(resource.as_str()) != canonical(server.origin().ascii_serialization().as_str())
    {
        return Err(refused(
            "the server's protected-resource metadata is for another resource; give the server's own URL",
        ));
    }
    let issuer = doc
        .get("authorization_servers")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|v| http_url(Some(v)))
        .ok_or_else(|| refused("the server's protected-resource metadata names no authorization server"))?;
    let scopes = match param(&challenge, "scope") {
        Some(s) => s.split_whitespace().map(str::to_owned).collect(),
        None => string_list(&doc, "scopes_supported").unwrap_or_default(),
    };
    Ok(Resource {
        resource: resource.to_string(),
        issuer: issuer.to_string(),
        scopes,
    })
}

/// What the authorization server's metadata says.
pub(super) struct ServerMetadata {
    pub(super) endpoints: ServerEndpoints,
    pub(super) registration_endpoint: Option<Url>,
    pub(super) auth_methods: Vec<String>,
}

/// RFC 8414, else OpenID Connect discovery, for `issuer`.
pub(super) async fn authorization_server(ctx: &Context, issuer: &str) -> Result<ServerMetadata, Error> {
    let issuer_url = Url::parse(issuer).map_err(|_| refused("the authorization server's URL is not valid"))?;
    let mut candidates = vec![
        well_known(&issuer_url, "oauth-authorization-server"),
        well_known(&issuer_url, "openid-configuration"),
    ];
    if !canonical(issuer_url.path()).is_empty() {
        let mut appended = issuer_url.clone();
        appended.set_path(&format!(
            "{}/.well-known/openid-configuration",
            canonical(issuer_url.path())
        ));
        candidates.push(appended);
    }
    let mut doc = None;
    for url in candidates {
        let answer = send(ctx, url, None, "the authorization server's metadata").await?;
        if answer.status == 200 {
            doc = Some(
                answer
                    .json
                    .ok_or_else(|| refused("the authorization server's metadata (RFC 8414) is not a JSON document"))?,
            );
            break;
        }
    }
    let doc = doc.ok_or_else(|| refused("the authorization server publishes no metadata (RFC 8414)"))?;
    let named = doc.get("issuer").and_then(Value::as_str).unwrap_or_default();
    if canonical(named) != canonical(issuer) {
        return Err(refused(
            "the authorization server's metadata names another issuer (RFC 8414 §3.3)",
        ));
    }
    let endpoint = |key: &str| {
        http_url(doc.get(key))
            .ok_or_else(|| refused(format!("the authorization server's metadata has no valid `{key}`")))
    };
    let authorization_endpoint = endpoint("authorization_endpoint")?;
    let token_endpoint = endpoint("token_endpoint")?;
    ctx.probes
        .egress
        .check_url(&token_endpoint)
        .map_err(|_| refused("credgate is not allowed to reach the authorization server's token endpoint"))?;
    let pkce = string_list(&doc, "code_challenge_methods_supported").unwrap_or_default();
    if !pkce.iter().any(|m| m == "S256") {
        return Err(refused(
            "the authorization server does not offer PKCE with S256, which MCP requires",
        ));
    }
    let auth_methods = string_list(&doc, "token_endpoint_auth_methods_supported")
        .unwrap_or_else(|| vec!["client_secret_basic".into()]);
    Ok(ServerMetadata {
        endpoints: ServerEndpoints {
            issuer: named.to_owned(),
            authorization_endpoint: authorization_endpoint.to_string(),
            token_endpoint: token_endpoint.to_string(),
            revocation_endpoint: http_url(doc.get("revocation_endpoint")).map(|u| u.to_string()),
            token_endpoint_auth_method: String::new(),
        },
        registration_endpoint: http_url(doc.get("registration_endpoint")),
        auth_methods,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_known_urls_go_between_host_and_path() {
        let url = Url::parse("https://mcp.example.com/v1/mcp/").unwrap();

        assert_eq!(
            well_known(&url, "oauth-protected-resource").as_str(),
            "https://mcp.example.com/.well-known/oauth-protected-resource/v1/mcp"
        );
        assert_eq!(
            well_known(
                &Url::parse("https://as.example.com/").unwrap(),
                "oauth-authorization-server"
            )
            .as_str(),
            "https://as.example.com/.well-known/oauth-authorization-server"
        );
    }
}
