//! The OAuth 2.0 client's calls to a provider (RFC 6749, PKCE per RFC 7636,
//! RFC 9700 practice): code exchange, refresh, identity lookup, revocation,
//! their error classification, and when a token is due again. It knows
//! providers' files and HTTP, and nothing of credentials or the store.

mod identity;
mod mint;
mod tokens;

use std::time::Duration;

use rand::Rng;
use secrecy::SecretString;

pub use identity::{fetch_identity, userinfo, Identity};
pub use mint::{jwt_bearer, ServiceAccountKey};
pub use tokens::{client_credentials, exchange_code, refresh, revoke};

/// Tokens from a token endpoint. `Debug` prints no token.
pub struct TokenSet {
    pub access_token: SecretString,
    /// `None` when the provider sent none (keep the old one).
    pub refresh_token: Option<SecretString>,
    pub expires_in: Option<Duration>,
    /// `refresh_token_expires_in`: seconds the refresh token lasts, where
    /// the provider says (GitHub apps, some Microsoft tenants).
    pub refresh_expires_in: Option<u64>,
    pub scopes: Option<Vec<String>>,
    /// The account, for a provider whose token response names it.
    pub identity: Option<Identity>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("refresh_token_sent", &self.refresh_token.is_some())
            .field("expires_in", &self.expires_in)
            .field("scopes", &self.scopes)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

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

/// When the worker should refresh a token that lives `lifetime` seconds
/// until `expires_at`: `lead` before expiry (at most half the lifetime, so
/// short-lived tokens are not refreshed back to back), plus up to a fifth of
/// that as jitter, so tokens issued together do not all come due together.
pub fn schedule(expires_at: Option<i64>, lifetime: Option<u64>, lead: i64) -> Option<i64> {
    schedule_with(&mut rand::thread_rng(), expires_at, lifetime, lead)
}

/// When to refresh a token whose access token never expires (no
/// `refresh_after` from [`schedule`]) only to keep its refresh token alive:
/// halfway to the refresh token's end, when refreshing renews that end (a
/// lifetime the service states with each token, or a sliding or inactivity
/// one). Otherwise `refresh_after` as it is.
pub fn keep_alive(refresh_after: Option<i64>, refresh_end: Option<i64>, renewable: bool, now: i64) -> Option<i64> {
    refresh_after.or_else(|| {
        let end = refresh_end.filter(|end| renewable && *end > now)?;
        Some(now + (end - now) / 2)
    })
}

pub(crate) fn schedule_with(
    rng: &mut impl Rng,
    expires_at: Option<i64>,
    lifetime: Option<u64>,
    lead: i64,
) -> Option<i64> {
    let expires_at = expires_at?;
    let lead = lifetime.map_or(lead, |l| lead.min(l as i64 / 2)).max(1);
    Some(expires_at - lead + rng.gen_range(0..=lead / 5))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn a_token_is_due_lead_seconds_before_expiry_plus_at_most_a_fifth_of_jitter() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let due = schedule_with(&mut rng, Some(10_000), Some(3600), 600).expect("scheduled");
            assert!((9_400..=9_520).contains(&due), "{due}");
        }
        assert_eq!(schedule_with(&mut rng, None, Some(3600), 600), None);
    }

    #[test]
    fn a_token_that_never_expires_is_refreshed_halfway_to_its_renewable_end() {
        assert_eq!(
            keep_alive(Some(500), Some(10_000), true, 0),
            Some(500),
            "the access token decides"
        );
        assert_eq!(keep_alive(None, Some(10_000), true, 2_000), Some(6_000));
        assert_eq!(
            keep_alive(None, Some(10_000), false, 2_000),
            None,
            "refreshing would not renew it"
        );
        assert_eq!(keep_alive(None, Some(1_000), true, 2_000), None, "it ended");
        assert_eq!(keep_alive(None, None, true, 2_000), None);
    }
}
