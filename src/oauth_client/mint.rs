//! Minting an access token with a signed JWT assertion (RFC 7523), as a
//! Google service account does: the key file's private key signs (RS256,
//! through `jsonwebtoken`), its `token_uri` answers.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::tokens::minted_failure;
use super::{OAuthError, TokenSet};

/// The parts of a Google service account key file credgate uses. `Debug`
/// prints no key.
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key: SecretString,
    pub private_key_id: Option<String>,
    pub token_uri: String,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct KeyFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    client_email: Option<String>,
    private_key: Option<String>,
    private_key_id: Option<String>,
    token_uri: Option<String>,
}

impl ServiceAccountKey {
    /// Reads a key file; the error says what is wrong in words that never
    /// quote it.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let file: KeyFile = serde_json::from_str(text).map_err(|_| "is not a service account key file (JSON)")?;
        if file.kind.as_deref() != Some("service_account") {
            return Err("is not a service account key file (its `type` is not `service_account`)");
        }
        let client_email = file
            .client_email
            .filter(|e| e.contains('@') && e.len() <= 320)
            .ok_or("has no valid `client_email`")?;
        let private_key = file.private_key.ok_or("has no `private_key`")?;
        jsonwebtoken::EncodingKey::from_rsa_pem(private_key.as_bytes())
            .map_err(|_| "has a `private_key` that is not an RSA private key in PEM")?;
        let token_uri = file
            .token_uri
            .filter(|u| url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "http" | "https")))
            .ok_or("has no valid `token_uri`")?;
        Ok(Self {
            client_email,
            private_key: SecretString::from(private_key),
            private_key_id: file.private_key_id,
            token_uri,
        })
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: String,
    aud: &'a str,
    iat: i64,
    exp: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub: Option<&'a str>,
}

/// Signs an assertion for `scopes` (as `subject`, for domain-wide
/// delegation) and exchanges it at the key's `token_uri`.
pub async fn jwt_bearer(
    http: &reqwest::Client,
    key: &ServiceAccountKey,
    scopes: &[String],
    subject: Option<&str>,
    now: i64,
) -> Result<TokenSet, OAuthError> {
    let claims = Claims {
        iss: &key.client_email,
        scope: scopes.join(" "),
        aud: &key.token_uri,
        iat: now,
        exp: now + 3600,
        sub: subject,
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = key.private_key_id.clone();
    let signing = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.expose_secret().as_bytes())
        .map_err(|_| OAuthError::new("needs_reauth", "the key file's private key cannot sign"))?;
    let assertion = jsonwebtoken::encode(&header, &claims, &signing)
        .map_err(|_| OAuthError::new("needs_reauth", "the key file's private key cannot sign"))?;
    let form = [
        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
        ("assertion", assertion.as_str()),
    ];
    let response = http.post(&key.token_uri).form(&form).send().await.map_err(|e| {
        OAuthError::new(
            "provider_unavailable",
            if e.is_timeout() {
                "the token endpoint did not answer in time"
            } else {
                "the token endpoint could not be reached"
            },
        )
    })?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let body: Option<Value> = response.json().await.ok();
    if status == 429 || status >= 500 {
        let mut e = OAuthError::new(
            "provider_unavailable",
            format!("the token endpoint answered HTTP {status}"),
        );
        e.retry_after = retry_after;
        return Err(e);
    }
    let doc = body.unwrap_or(Value::Null);
    match doc.get("access_token").and_then(Value::as_str) {
        Some(token) if status == 200 => Ok(TokenSet {
            access_token: SecretString::from(token.to_owned()),
            refresh_token: None,
            expires_in: doc.get("expires_in").and_then(Value::as_u64).map(Duration::from_secs),
            refresh_expires_in: None,
            scopes: doc
                .get("scope")
                .and_then(Value::as_str)
                .map(|s| s.split_whitespace().map(str::to_owned).collect()),
            identity: None,
        }),
        _ => {
            let error: String = doc
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("no error code")
                .chars()
                .take(64)
                .collect();
            let description: String = doc
                .get("error_description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect();
            let message = format!("the provider refused: {error} {description}").trim().to_owned();
            Err(minted_failure(OAuthError::new("provider_error", message)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_is_checked_and_never_printed() {
        for bad in [
            "",
            "{}",
            r#"{"type":"user"}"#,
            r#"{"type":"service_account","client_email":"a@b"}"#,
        ] {
            assert!(ServiceAccountKey::parse(bad).is_err(), "{bad}");
        }
        let not_pem = r#"{"type":"service_account","client_email":"a@b.iam","private_key":"SENTINEL","token_uri":"https://oauth2.googleapis.com/token"}"#;
        let err = ServiceAccountKey::parse(not_pem).unwrap_err();
        assert!(!err.contains("SENTINEL"));
    }
}
