//! OAuth 2.0 client side (RFC 6749, PKCE per RFC 7636, RFC 9700 practice):
//! the authorize/callback flow, token exchange and refresh, identity lookup
//! and revocation, for any provider whose file declares `oauth2`.

pub mod flow;
mod page;
pub mod refresh;
mod tokens;
pub mod worker;

pub use page::result_page;
pub use tokens::{exchange_code, fetch_identity, refresh, revoke, Identity, TokenSet};

use std::time::Duration;

/// Seconds a pending authorization (`state`) stays valid.
pub const STATE_TTL_SECS: i64 = 600;

/// A failed OAuth step: a stable code and words for a person.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct OAuthError {
    /// `oauth_state_invalid`, `access_denied`, `provider_error`, …
    pub code: &'static str,
    /// Never contains a token or code.
    pub message: String,
    /// Seconds the provider asked us to wait (`Retry-After`).
    pub retry_after: Option<u64>,
}

impl OAuthError {
    /// A new error.
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

/// The HTTP client for provider endpoints: redirects off (following them
/// from a token endpoint is an SSRF hole), bounded time for every call.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .user_agent(concat!("credgate/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client configuration is valid")
}

/// After OAuth credentials are deleted, revokes their tokens at providers
/// that have a revocation endpoint. Best effort, in the background: a slow
/// or failing provider never holds up or undoes the delete.
pub fn revoke_deleted(state: &crate::http::AppState, rows: Vec<crate::store::CredentialRow>) {
    for row in rows.into_iter().filter(|r| r.auth_type == "oauth2") {
        let Some(provider) = state.registry.get(&row.provider) else {
            continue;
        };
        let Some(url) = provider.oauth.as_ref().and_then(|o| o.revocation_url.clone()) else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let Ok(groups) = state
                .vault
                .open(&row.org_id, &row.id, &row.secret_ct, row.key_version)
                .await
            else {
                return;
            };
            let Some(tokens) = groups.get("tokens") else { return };
            let settings = state.registry.get(&row.provider).and_then(|p| p.oauth.as_ref());
            let token = tokens
                .get("refresh_token")
                .map(|t| (t, "refresh_token"))
                .or_else(|| tokens.get("access_token").map(|t| (t, "access_token")));
            if let (Some(settings), Some((token, hint))) = (settings, token) {
                revoke(&state.http, settings, &url, token, hint).await;
            }
        });
    }
}
