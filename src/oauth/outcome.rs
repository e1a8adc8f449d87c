//! What a refresh's answer means, as a pure function: the provider's outcome
//! and what was known before → the credential's new state. No I/O, so every
//! answer the code classifies is unit-tested here.

use rand::Rng;

use crate::credentials::{OAuthTokens, Refreshed};
use crate::error::Error;
use crate::model::CredentialStatus;
use crate::oauth_client::{keep_alive, schedule_with, OAuthError, TokenSet};
use crate::store::{LastError, RefreshFailure};
use secrecy::SecretString;

/// Longest backoff after repeated transient failures.
pub const MAX_BACKOFF_SECS: i64 = 3600;
/// First backoff after a transient failure.
pub const FIRST_BACKOFF_SECS: i64 = 30;

/// What was known when the refresh started.
#[derive(Debug, Clone)]
pub struct Before {
    pub now: i64,
    /// When the current access token expires.
    pub expires_at: Option<i64>,
    /// Consecutive failures so far.
    pub failures: i64,
    /// The refresh token that was used (kept when the provider sends none).
    pub refresh_token: Option<SecretString>,
    /// `CREDGATE_REFRESH_LEAD_SECS`.
    pub lead: i64,
    /// When the refresh token ends, as known before, and the provider's
    /// declared lifetime.
    pub refresh_expires_at: Option<i64>,
    pub refresh_lifetime: Option<crate::providers::RefreshLifetime>,
}

/// The new state.
#[derive(Debug)]
pub enum Verdict {
    /// Store these tokens.
    Refreshed(Refreshed),
    /// Record this failure; tell the caller `error`.
    Failed {
        failure: RefreshFailure,
        /// Notify `credential.refresh_failed` (first failure or a dead grant).
        notify: bool,
        error: Error,
    },
}

/// Exponential backoff with up to 20 % jitter, at least what the provider asked.
fn backoff_secs(rng: &mut impl Rng, failures: i64, retry_after: Option<u64>) -> i64 {
    let exp = FIRST_BACKOFF_SECS
        .saturating_mul(1 << failures.clamp(0, 10))
        .min(MAX_BACKOFF_SECS);
    let jittered = exp + rng.gen_range(0..=exp / 5);
    jittered.max(retry_after.unwrap_or(0) as i64)
}

/// The verdict on a refresh's answer.
pub fn decide(rng: &mut impl Rng, answer: Result<TokenSet, OAuthError>, before: &Before) -> Verdict {
    match answer {
        Ok(set) => {
            let lifetime = set.expires_in.map(|d| d.as_secs());
            let expires_at = lifetime.map(|l| before.now + l as i64);
            let rotated = set.refresh_token.is_some();
            let renewable = set.refresh_expires_in.is_some() || before.refresh_lifetime.is_some_and(|l| l.renewed);
            let refresh_expires_at = crate::providers::refresh_end(
                before.refresh_lifetime,
                set.refresh_expires_in,
                before.now,
                before.refresh_expires_at,
                false,
            );
            let refresh_after = schedule_with(rng, expires_at, lifetime, before.lead);
            Verdict::Refreshed(Refreshed {
                tokens: OAuthTokens {
                    access_token: set.access_token,
                    // Microsoft rotates; Google omits it: then the old one stays.
                    refresh_token: set.refresh_token.or_else(|| before.refresh_token.clone()),
                },
                expires_at,
                refresh_after: keep_alive(refresh_after, refresh_expires_at, renewable, before.now),
                refresh_expires_at,
                scopes: set.scopes,
                rotated,
            })
        }
        Err(e) => {
            let dead = e.code == "needs_reauth";
            let token_valid = before.expires_at.is_some_and(|t| t > before.now);
            let backoff = backoff_secs(rng, before.failures, e.retry_after);
            let last_error = LastError {
                code: if dead { "needs_reauth".into() } else { e.code.into() },
                message: e.message.clone(),
                at: chrono::DateTime::from_timestamp(before.now, 0).unwrap_or_default(),
            };
            Verdict::Failed {
                failure: RefreshFailure {
                    status: CredentialStatus::after_refresh_failure(dead, token_valid),
                    last_error,
                    refresh_after: (!dead).then_some(before.now + backoff),
                },
                notify: dead || before.failures == 0,
                error: if dead {
                    Error::NeedsReauth(e.message)
                } else {
                    Error::ProviderUnavailable {
                        message: e.message,
                        retry_after_secs: backoff as u64,
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rand::SeedableRng;
    use secrecy::ExposeSecret;

    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn before(expires_in: i64, failures: i64) -> Before {
        Before {
            now: NOW,
            expires_at: Some(NOW + expires_in),
            failures,
            refresh_token: Some(SecretString::from("old-rt")),
            lead: 600,
            refresh_expires_at: None,
            refresh_lifetime: None,
        }
    }

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    fn tokens(refresh: Option<&str>, expires_in: u64) -> TokenSet {
        TokenSet {
            access_token: SecretString::from("new-at"),
            refresh_token: refresh.map(SecretString::from),
            expires_in: Some(Duration::from_secs(expires_in)),
            refresh_expires_in: None,
            scopes: None,
            identity: None,
        }
    }

    fn failed(v: Verdict) -> (RefreshFailure, bool, Error) {
        match v {
            Verdict::Failed { failure, notify, error } => (failure, notify, error),
            Verdict::Refreshed(_) => panic!("expected a failure"),
        }
    }

    fn provider_error(code: &'static str, retry_after: Option<u64>) -> OAuthError {
        let mut e = OAuthError::new(code, "the provider said no");
        e.retry_after = retry_after;
        e
    }

    #[test]
    fn a_rotated_refresh_token_replaces_the_old_one() {
        let Verdict::Refreshed(r) = decide(&mut rng(), Ok(tokens(Some("new-rt"), 3600)), &before(10, 2)) else {
            panic!("expected refreshed")
        };
        assert_eq!(r.tokens.refresh_token.unwrap().expose_secret(), "new-rt");
        assert!(r.rotated);
        assert_eq!(r.expires_at, Some(NOW + 3600));
        let after = r.refresh_after.unwrap();
        assert!(
            (NOW + 3000..=NOW + 3120).contains(&after),
            "600 s lead plus up to 20 % jitter: {after}"
        );
    }

    #[test]
    fn a_missing_refresh_token_keeps_the_old_one() {
        let Verdict::Refreshed(r) = decide(&mut rng(), Ok(tokens(None, 3599)), &before(10, 0)) else {
            panic!("expected refreshed")
        };
        assert_eq!(r.tokens.refresh_token.unwrap().expose_secret(), "old-rt");
        assert!(!r.rotated);
    }

    #[test]
    fn a_short_lived_token_is_refreshed_at_half_its_life() {
        let Verdict::Refreshed(r) = decide(&mut rng(), Ok(tokens(None, 120)), &before(10, 0)) else {
            panic!("expected refreshed")
        };
        let after = r.refresh_after.unwrap();
        assert!((NOW + 60..=NOW + 72).contains(&after), "{after}");
    }

    #[test]
    fn a_dead_grant_needs_reauth_and_stops_retrying() {
        // tokens.rs classifies invalid_grant, interaction_required and the
        // AADSTS70008/700082/50173/70043/700084 descriptions as needs_reauth.
        let (failure, notify, error) = failed(decide(
            &mut rng(),
            Err(provider_error("needs_reauth", None)),
            &before(100, 3),
        ));
        assert_eq!(failure.status, CredentialStatus::NeedsReauth);
        assert_eq!(failure.refresh_after, None);
        assert_eq!(failure.last_error.code, "needs_reauth");
        assert!(notify, "a dead grant is always notified");
        assert!(matches!(error, Error::NeedsReauth(_)));
    }

    #[test]
    fn a_server_error_backs_off_and_keeps_a_valid_token_active() {
        let (failure, notify, error) = failed(decide(
            &mut rng(),
            Err(provider_error("provider_unavailable", None)),
            &before(100, 0),
        ));
        assert_eq!(failure.status, CredentialStatus::Active);
        let wait = failure.refresh_after.unwrap() - NOW;
        assert!((30..=36).contains(&wait), "{wait}");
        assert!(notify, "the first failure is notified");
        assert!(matches!(error, Error::ProviderUnavailable { .. }));
    }

    #[test]
    fn a_timeout_after_expiry_makes_the_credential_expired_and_backs_off_longer() {
        let (failure, notify, _) = failed(decide(
            &mut rng(),
            Err(provider_error("provider_unavailable", None)),
            &before(-5, 3),
        ));
        assert_eq!(failure.status, CredentialStatus::Expired);
        let wait = failure.refresh_after.unwrap() - NOW;
        assert!((240..=288).contains(&wait), "30 s doubled three times: {wait}");
        assert!(!notify, "repeated transient failures are not notified again");
    }

    #[test]
    fn retry_after_is_honoured_and_backoff_is_capped() {
        let (failure, _, error) = failed(decide(
            &mut rng(),
            Err(provider_error("provider_unavailable", Some(900))),
            &before(100, 0),
        ));
        assert_eq!(failure.refresh_after, Some(NOW + 900));
        assert!(matches!(
            error,
            Error::ProviderUnavailable {
                retry_after_secs: 900,
                ..
            }
        ));
        let (capped, _, _) = failed(decide(
            &mut rng(),
            Err(provider_error("provider_error", None)),
            &before(100, 40),
        ));
        let wait = capped.refresh_after.unwrap() - NOW;
        assert!((3600..=4320).contains(&wait), "{wait}");
        assert_eq!(capped.status, CredentialStatus::Active);
        assert_eq!(capped.last_error.code, "provider_error");
    }
}
