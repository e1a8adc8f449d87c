//! Who a connected account is: from the token response or the provider's
//! identity endpoint, as its file maps it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::{OAuthError, TokenSet};
use crate::providers::{IdentitySource, OAuthSettings};

/// Who the account is.
#[derive(Debug, Clone)]
pub struct Identity {
    pub id: String,
    pub email: Option<String>,
    pub display_name: Option<String>,
    /// Microsoft tenant id (`tid`) when the token carries one.
    pub tenant_id: Option<String>,
}

/// The first of `keys` present in `doc`: a top-level key, or a JSON
/// pointer (`/team/id`) into a nested object.
fn pick(doc: &Value, keys: &[String]) -> Option<String> {
    keys.iter().find_map(|k| {
        let found = if k.starts_with('/') { doc.pointer(k) } else { doc.get(k) };
        match found {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        }
    })
}

/// The account named in a token response, as the provider file maps it.
pub(super) fn identity_in(doc: &Value, settings: &OAuthSettings) -> Option<Identity> {
    Some(Identity {
        id: pick(doc, &settings.identity.id)?,
        email: pick(doc, &settings.identity.email),
        display_name: pick(doc, &settings.identity.display_name),
        tenant_id: None,
    })
}

/// The `tid` claim of a JWT access token (read, not verified: it only labels).
fn tenant_of(access_token: &str) -> Option<String> {
    let payload = access_token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("tid")?.as_str().map(str::to_owned)
}

/// Who the account is: from the token response (when the provider file
/// says it names the account), else by asking the identity endpoint.
pub async fn fetch_identity(
    http: &reqwest::Client,
    settings: &OAuthSettings,
    tokens: &TokenSet,
) -> Result<Identity, OAuthError> {
    // An MCP server is the account its tokens are for.
    if let (true, Some(resource)) = (settings.dynamic_registration, &settings.resource) {
        return Ok(Identity {
            id: resource.clone(),
            email: None,
            display_name: Some(resource.clone()),
            tenant_id: None,
        });
    }
    if settings.identity.source == IdentitySource::TokenResponse {
        return tokens.identity.clone().ok_or_else(|| {
            OAuthError::new(
                "identity_failed",
                "could not read the account: the token response names no account",
            )
        });
    }
    userinfo(http, settings, &tokens.access_token).await
}

/// Asks the provider's identity endpoint who the account of `access_token` is.
pub async fn userinfo(
    http: &reqwest::Client,
    settings: &OAuthSettings,
    access_token: &SecretString,
) -> Result<Identity, OAuthError> {
    let failed = |m: &str| OAuthError::new("identity_failed", format!("could not read the account: {m}"));
    let mut request = http
        .get(&settings.userinfo_url)
        .bearer_auth(access_token.expose_secret())
        .header("accept", "application/json");
    for (name, value) in &settings.identity.headers {
        request = request.header(name, value);
    }
    let resp = request.send().await.map_err(|e| {
        failed(if e.is_timeout() {
            "the provider did not answer in time"
        } else {
            "the provider could not be reached"
        })
    })?;
    let status = resp.status();
    if !status.is_success() {
        return Err(failed(&format!(
            "the identity endpoint answered HTTP {}",
            status.as_u16()
        )));
    }
    let doc: Value = resp
        .json()
        .await
        .map_err(|_| failed("the identity response is not JSON"))?;
    let id = pick(&doc, &settings.identity.id).ok_or_else(|| failed("the identity response has no account id"))?;
    Ok(Identity {
        id,
        email: pick(&doc, &settings.identity.email),
        display_name: pick(&doc, &settings.identity.display_name),
        tenant_id: tenant_of(access_token.expose_secret()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_is_read_from_a_jwt_access_token() {
        let claims = URL_SAFE_NO_PAD.encode(br#"{"tid":"72f988bf-86f1-41af-91ab-2d7cd011db47"}"#);
        assert_eq!(
            tenant_of(&format!("eyJhbGciOiJub25lIn0.{claims}.sig")).as_deref(),
            Some("72f988bf-86f1-41af-91ab-2d7cd011db47")
        );
        assert_eq!(tenant_of("opaque-token"), None);
    }
}
