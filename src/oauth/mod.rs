//! OAuth 2.0 client side (RFC 6749, PKCE per RFC 7636, RFC 9700 practice):
//! the authorize/callback flow, token exchange and refresh, identity lookup
//! and revocation, for any provider whose file declares `oauth2`.

pub mod flow;
pub mod outcome;
pub mod refresh;
pub mod return_to;
mod single_flight;
mod tokens;
pub mod worker;

pub use outcome::schedule;
pub use single_flight::{Refresher, LEASE_SECS};
pub use tokens::{exchange_code, fetch_identity, refresh, revoke, Identity, TokenSet};

use std::time::Duration;

use crate::context::Context;
use crate::credentials::OAuthTokens;

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

/// Revokes tokens at the provider when it has a revocation endpoint (the
/// refresh token if there is one, which ends the grant). Best effort.
pub async fn revoke_tokens(ctx: &Context, provider: &str, tokens: Option<&OAuthTokens>) {
    let Some(settings) = ctx.registry.get(provider).and_then(|p| p.oauth.as_ref()) else {
        return;
    };
    let (Some(url), Some(tokens)) = (settings.revocation_url.as_deref(), tokens) else {
        return;
    };
    let (token, hint) = match &tokens.refresh_token {
        Some(rt) => (rt, "refresh_token"),
        None => (&tokens.access_token, "access_token"),
    };
    revoke(&ctx.http, settings, url, token, hint).await;
}

/// [`revoke_tokens`] in the background: a slow provider holds nothing up.
pub fn revoke_tokens_later(ctx: &Context, provider: &str, tokens: Option<OAuthTokens>) {
    let (ctx, provider) = (ctx.clone(), provider.to_owned());
    tokio::spawn(async move { revoke_tokens(&ctx, &provider, tokens.as_ref()).await });
}

/// Revokes a token set that will not be stored (in the background).
pub fn revoke_token_set(ctx: &Context, provider: &str, set: &TokenSet) {
    let tokens = OAuthTokens {
        access_token: set.access_token.clone(),
        refresh_token: set.refresh_token.clone(),
    };
    revoke_tokens_later(ctx, provider, Some(tokens));
}
