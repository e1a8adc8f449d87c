//! Talking to a provider's token endpoints: code exchange, refresh,
//! revocation, in the provider's dialect.

use oauth2::basic::{BasicClient, BasicErrorResponseType, BasicRequestTokenError};
use oauth2::{
    AsyncHttpClient, AuthType, AuthorizationCode, ClientId, ClientSecret, EndpointNotSet, EndpointSet, HttpClientError,
    HttpRequest, HttpResponse, PkceCodeVerifier, RedirectUrl, RefreshToken, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::identity::identity_in;
use super::{Identity, OAuthError, TokenSet};
use crate::providers::{ClientAuth, IdentitySource, OAuthSettings, TokenBody};

/// Sends through reqwest in the provider's dialect and remembers the
/// response's status and `Retry-After`, which the oauth2 crate does not
/// surface: the body as JSON for a provider that wants it (Notion), and an
/// error answered with 200 (Slack's `{"ok": false, "error": …}`) turned
/// into the 400 it means. For a provider whose token response names the
/// account, the account is read from it here (the crate drops other fields).
struct Recording<'s> {
    inner: reqwest::Client,
    settings: &'s OAuthSettings,
    seen: std::sync::Mutex<(Option<u16>, Option<u64>)>,
    identity: std::sync::Mutex<Option<Identity>>,
    /// The answer's `refresh_token_expires_in` (the crate drops it).
    refresh_expires_in: std::sync::Mutex<Option<u64>>,
}

impl<'s> Recording<'s> {
    fn new(inner: &reqwest::Client, settings: &'s OAuthSettings) -> Self {
        Self {
            inner: inner.clone(),
            settings,
            seen: std::sync::Mutex::new((None, None)),
            identity: std::sync::Mutex::new(None),
            refresh_expires_in: std::sync::Mutex::new(None),
        }
    }

    fn seen(&self) -> (Option<u16>, Option<u64>) {
        *self.seen.lock().expect("not poisoned")
    }

    fn identity(&self) -> Option<Identity> {
        self.identity.lock().expect("not poisoned").clone()
    }
}

/// An error body of the provider's own shape (`{"status": "BAD_REFRESH_TOKEN",
/// "message": …}`) rewritten as RFC 6749's `{"error", "error_description"}`,
/// so it is classified like any other.
fn rewrite_error(response: &mut HttpResponse, pointer: &str) {
    let Ok(doc) = serde_json::from_slice::<Value>(response.body()) else {
        return;
    };
    if doc.get("access_token").is_some() || doc.get("error").is_some() {
        return;
    }
    let Some(code) = doc.pointer(pointer).and_then(Value::as_str) else {
        return;
    };
    let description = doc.get("message").and_then(Value::as_str).unwrap_or_default();
    *response.body_mut() = serde_json::json!({"error": code, "error_description": description})
        .to_string()
        .into_bytes();
    if response.status().is_success() {
        *response.status_mut() = oauth2::http::StatusCode::BAD_REQUEST;
    }
}

/// The request's form parameters as one JSON object.
fn as_json(mut request: HttpRequest) -> HttpRequest {
    let fields: serde_json::Map<String, Value> = url::form_urlencoded::parse(request.body())
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    *request.body_mut() = Value::Object(fields).to_string().into_bytes();
    request.headers_mut().insert(
        oauth2::http::header::CONTENT_TYPE,
        oauth2::http::HeaderValue::from_static("application/json"),
    );
    request
}

impl<'c, 's> AsyncHttpClient<'c> for Recording<'s> {
    type Error = HttpClientError<reqwest::Error>;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<HttpResponse, Self::Error>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            let request = match self.settings.token_body {
                TokenBody::Form => request,
                TokenBody::Json => as_json(request),
            };
            let mut response = self.inner.call(request).await?;
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok());
            *self.seen.lock().expect("not poisoned") = (Some(response.status().as_u16()), retry_after);
            if let Some(pointer) = &self.settings.token_error_pointer {
                rewrite_error(&mut response, pointer);
            }
            if response.status().is_success() {
                let doc: Option<Value> = serde_json::from_slice(response.body()).ok();
                let answered_error = doc
                    .as_ref()
                    .is_some_and(|d| d.get("access_token").is_none() && d.get("error").is_some_and(Value::is_string));
                *self.refresh_expires_in.lock().expect("not poisoned") = doc
                    .as_ref()
                    .and_then(|d| d.get("refresh_token_expires_in"))
                    .and_then(|v| v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
                if answered_error {
                    *response.status_mut() = oauth2::http::StatusCode::BAD_REQUEST;
                } else if let (Some(doc), IdentitySource::TokenResponse) = (&doc, self.settings.identity.source) {
                    *self.identity.lock().expect("not poisoned") = identity_in(doc, self.settings);
                }
            }
            Ok(response)
        })
    }
}

type Client = BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

fn client(settings: &OAuthSettings, tenant: Option<&str>, redirect_uri: Option<&str>) -> Result<Client, OAuthError> {
    let bad = |what: &str| OAuthError::new("provider_error", format!("the provider's {what} is not a valid URL"));
    let token_url = TokenUrl::new(settings.with_tenant(&settings.token_url, tenant)).map_err(|_| bad("token_url"))?;
    let mut client = BasicClient::new(ClientId::new(settings.client_id.clone()))
        .set_token_uri(token_url)
        .set_auth_type(match settings.client_auth {
            ClientAuth::Body | ClientAuth::None => AuthType::RequestBody,
            ClientAuth::Basic => AuthType::BasicAuth,
        });
    // A public client sends its id and no secret.
    if settings.client_auth != ClientAuth::None {
        client = client.set_client_secret(ClientSecret::new(settings.client_secret.expose_secret().to_owned()));
    }
    if let Some(uri) = redirect_uri {
        client = client.set_redirect_uri(RedirectUrl::new(uri.to_owned()).map_err(|_| bad("redirect URI"))?);
    }
    Ok(client)
}

/// Microsoft error codes (in `error_description`) that mean the grant is
/// gone for good and a person must sign in again.
const REAUTH_MARKERS: &[&str] = &[
    "AADSTS70008",
    "AADSTS700082",
    "AADSTS50173",
    "AADSTS70043",
    "AADSTS700084",
];

/// Maps a token endpoint failure to a stable code. `needs_reauth` means the
/// grant itself is dead (revoked, expired, reused); the rest may pass.
fn classify(
    err: BasicRequestTokenError<HttpClientError<reqwest::Error>>,
    seen: (Option<u16>, Option<u64>),
    settings: &OAuthSettings,
) -> OAuthError {
    let (status, retry_after) = seen;
    let temporary = status.is_some_and(|s| s == 429 || s >= 500);
    let mut classified = match err {
        _ if temporary => OAuthError::new(
            "provider_unavailable",
            format!(
                "the provider's token endpoint answered HTTP {}",
                status.unwrap_or_default()
            ),
        ),
        BasicRequestTokenError::ServerResponse(resp) => {
            let description = resp.error_description().cloned().unwrap_or_default();
            let error = resp.error().to_string();
            let dead = matches!(resp.error(), BasicErrorResponseType::InvalidGrant)
                || error == "interaction_required"
                || settings.reauth_errors.contains(&error)
                || REAUTH_MARKERS.iter().any(|m| description.contains(m));
            // The description is the provider's text about our request; it
            // never echoes a token, but keep it short.
            let detail: String = description.chars().take(200).collect();
            let message = format!("the provider refused: {error} {detail}").trim().to_owned();
            if dead {
                OAuthError::new("needs_reauth", message)
            } else if error == "invalid_client" || error == "unauthorized_client" {
                OAuthError::new("provider_error", format!("{message} (check the client id and secret)"))
            } else {
                OAuthError::new("provider_error", message)
            }
        }
        BasicRequestTokenError::Request(e) => {
            let timeout = matches!(&e, HttpClientError::Reqwest(r) if r.is_timeout());
            let message = if timeout {
                "the provider did not answer in time"
            } else {
                "the provider could not be reached"
            };
            OAuthError::new("provider_unavailable", message)
        }
        BasicRequestTokenError::Parse(_, body) => {
            let status_hint = if body.is_empty() { "an empty" } else { "an unreadable" };
            OAuthError::new(
                "provider_unavailable",
                format!("the provider sent {status_hint} token response"),
            )
        }
        BasicRequestTokenError::Other(_) => OAuthError::new(
            "provider_error",
            "the provider's token endpoint answered with an unexpected response",
        ),
    };
    classified.retry_after = retry_after;
    classified
}

fn token_set<T: TokenResponse>(resp: &T, settings: &OAuthSettings, recording: &Recording) -> TokenSet {
    // The crate splits `scope` on spaces; a provider that joins them
    // otherwise (Slack: `,`) is split here.
    let sep = settings.scope_separator.as_str();
    TokenSet {
        access_token: SecretString::from(resp.access_token().secret().clone()),
        refresh_token: resp.refresh_token().map(|r| SecretString::from(r.secret().clone())),
        expires_in: resp.expires_in(),
        refresh_expires_in: *recording.refresh_expires_in.lock().expect("not poisoned"),
        scopes: resp.scopes().map(|s| {
            s.iter()
                .flat_map(|x| x.split(sep).map(str::to_owned).collect::<Vec<_>>())
                .filter(|x| !x.is_empty())
                .collect()
        }),
        identity: recording.identity(),
    }
}

/// Exchanges an authorization code (with the PKCE verifier).
pub async fn exchange_code(
    http: &reqwest::Client,
    settings: &OAuthSettings,
    tenant: Option<&str>,
    redirect_uri: &str,
    code: &str,
    verifier: &SecretString,
) -> Result<TokenSet, OAuthError> {
    let client = client(settings, tenant, Some(redirect_uri))?;
    let recording = Recording::new(http, settings);
    let mut request = client.exchange_code(AuthorizationCode::new(code.to_owned()));
    if settings.pkce {
        request = request.set_pkce_verifier(PkceCodeVerifier::new(verifier.expose_secret().to_owned()));
    }
    if let Some(resource) = &settings.resource {
        request = request.add_extra_param("resource", resource.clone());
    }
    let resp = request
        .request_async(&recording)
        .await
        .map_err(|e| match classify(e, recording.seen(), settings) {
            // At exchange time a dead grant is simply a rejected code.
            e if e.code == "needs_reauth" => OAuthError::new(
                "provider_error",
                format!("the authorization code was rejected ({})", e.message),
            ),
            e => e,
        })?;
    Ok(token_set(&resp, settings, &recording))
}

/// Uses a refresh token.
pub async fn refresh(
    http: &reqwest::Client,
    settings: &OAuthSettings,
    tenant: Option<&str>,
    refresh_token: &SecretString,
) -> Result<TokenSet, OAuthError> {
    let client = client(settings, tenant, None)?;
    let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
    let recording = Recording::new(http, settings);
    let mut request = client.exchange_refresh_token(&token);
    if let Some(resource) = &settings.resource {
        request = request.add_extra_param("resource", resource.clone());
    }
    let resp = request
        .request_async(&recording)
        .await
        .map_err(|e| classify(e, recording.seen(), settings))?;
    Ok(token_set(&resp, settings, &recording))
}

/// Token-endpoint errors that are the minting credential's own fault (a
/// wrong client secret or key, a scope it may not have): no retry helps.
const CREDENTIAL_FAULTS: [&str; 4] = [
    "invalid_client",
    "unauthorized_client",
    "invalid_grant",
    "invalid_scope",
];

/// A failed mint: the credential's fault is `needs_reauth` (it stays so
/// until its fields are replaced), the rest as for a refresh.
pub(super) fn minted_failure(e: OAuthError) -> OAuthError {
    if e.code == "provider_error" && CREDENTIAL_FAULTS.iter().any(|f| e.message.contains(f)) {
        let mut e = OAuthError::new(
            "needs_reauth",
            e.message.replace(" (check the client id and secret)", ""),
        );
        e.message.push_str("; replace the credential's fields");
        return e;
    }
    e
}

/// Mints an access token with the client credentials grant (RFC 6749 §4.4).
pub async fn client_credentials(
    http: &reqwest::Client,
    settings: &OAuthSettings,
    tenant: Option<&str>,
) -> Result<TokenSet, OAuthError> {
    let client = client(settings, tenant, None)?;
    let recording = Recording::new(http, settings);
    let mut request = client.exchange_client_credentials();
    if !settings.scopes.is_empty() {
        request = request.add_scope(oauth2::Scope::new(settings.scopes.join(&settings.scope_separator)));
    }
    if let Some(resource) = &settings.resource {
        request = request.add_extra_param("resource", resource.clone());
    }
    let resp = request
        .request_async(&recording)
        .await
        .map_err(|e| minted_failure(classify(e, recording.seen(), settings)))?;
    // A minted token names no person.
    let mut set = token_set(&resp, settings, &recording);
    set.identity = None;
    Ok(set)
}

/// Revokes a token (RFC 7009), best effort: failures are only logged.
pub async fn revoke(http: &reqwest::Client, settings: &OAuthSettings, url: &str, token: &SecretString, hint: &str) {
    let mut form = vec![
        ("token", token.expose_secret().to_owned()),
        ("token_type_hint", hint.to_owned()),
    ];
    let mut req = http.post(url);
    match settings.client_auth {
        ClientAuth::Basic => req = req.basic_auth(&settings.client_id, Some(settings.client_secret.expose_secret())),
        ClientAuth::Body => {
            form.push(("client_id", settings.client_id.clone()));
            form.push(("client_secret", settings.client_secret.expose_secret().to_owned()));
        }
        ClientAuth::None => form.push(("client_id", settings.client_id.clone())),
    }
    match req.form(&form).send().await {
        Ok(r) if r.status().is_success() => tracing::info!("token revoked at the provider"),
        Ok(r) => tracing::warn!(status = r.status().as_u16(), "the provider refused to revoke a token"),
        Err(e) => tracing::warn!(error = %e.without_url(), "could not reach the revocation endpoint"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_sets_never_print_tokens() {
        let set = TokenSet {
            access_token: SecretString::from("at-sentinel"),
            refresh_token: Some(SecretString::from("rt-sentinel")),
            expires_in: None,
            refresh_expires_in: None,
            scopes: None,
            identity: None,
        };
        let printed = format!("{set:?}");
        assert!(!printed.contains("sentinel"));
    }
}

#[cfg(test)]
#[path = "classify_tests.rs"]
mod classify_tests;
