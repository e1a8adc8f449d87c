//! Rate limits (governor, keyed): API requests per organization, probes per
//! organization, and unauthenticated requests per client address. Idle keys
//! are evicted by [`RateLimits::evict_idle`], which the server calls every
//! minute, so memory stays flat however many keys pass through.
//!
//! An address over its failed-authentication budget is shut out until the
//! Retry-After it was told: [`RateLimits::check_auth_blocked`] answers 429
//! for it before anything asks the store.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use super::error::ApiError;

/// Requests per second per client address on routes without an API key.
pub const UNAUTHENTICATED_PER_SEC: u32 = 20;
/// Addresses remembered as over their failure budget, at most.
const BLOCKED_MAX: usize = 10_000;

/// One kind of limited action, with its quota.
#[derive(Debug, Clone, Copy)]
pub enum LimitedAction {
    /// Any authenticated API request, per organization: `n` per second, bursts of `2n`.
    Api(u32),
    /// Test-connection probes, per organization: `n` per minute.
    Probe(u32),
    /// Unauthenticated routes, per client address.
    Unauthenticated,
    /// Failed authentications (no key, unknown key), per client address: `n` per second.
    AuthFailure(u32),
}

impl LimitedAction {
    fn quota(self) -> Option<Quota> {
        let nz = |n: u32| NonZeroU32::new(n);
        match self {
            Self::Api(n) => Some(Quota::per_second(nz(n)?).allow_burst(nz(n.saturating_mul(2))?)),
            Self::Probe(n) => Some(Quota::per_minute(nz(n)?)),
            Self::Unauthenticated => {
                let n = nz(UNAUTHENTICATED_PER_SEC)?;
                Some(Quota::per_second(n).allow_burst(nz(UNAUTHENTICATED_PER_SEC * 2)?))
            }
            Self::AuthFailure(n) => Some(Quota::per_second(nz(n)?).allow_burst(nz(n.saturating_mul(2))?)),
        }
    }
}

struct Limiter<K: Hash + Eq + Clone>(Option<DefaultKeyedRateLimiter<K>>);

impl<K: Hash + Eq + Clone> Limiter<K> {
    fn new(action: LimitedAction) -> Self {
        Self(action.quota().map(RateLimiter::keyed))
    }

    fn check(&self, key: &K) -> Result<(), ApiError> {
        let Some(limiter) = &self.0 else { return Ok(()) };
        limiter.check_key(key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            ApiError::RateLimited {
                retry_after_secs: wait.as_secs() + u64::from(wait.subsec_nanos() > 0),
            }
        })
    }

    fn evict(&self) {
        if let Some(limiter) = &self.0 {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |l| l.len())
    }
}

/// All of credgate's rate limiters.
pub struct RateLimits {
    api: Limiter<String>,
    probes: Limiter<String>,
    unauthenticated: Limiter<IpAddr>,
    auth_failures: Limiter<IpAddr>,
    /// Addresses over their failure budget, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("keys", &self.tracked_keys())
            .finish()
    }
}

impl RateLimits {
    /// Limits with the configured quotas (`0` turns one off).
    pub fn new(api_per_sec: u32, probes_per_min: u32, auth_failures_per_sec: u32) -> Self {
        Self {
            api: Limiter::new(LimitedAction::Api(api_per_sec)),
            probes: Limiter::new(LimitedAction::Probe(probes_per_min)),
            unauthenticated: Limiter::new(LimitedAction::Unauthenticated),
            auth_failures: Limiter::new(LimitedAction::AuthFailure(auth_failures_per_sec)),
            blocked: Mutex::default(),
        }
    }

    /// One API request of `org`.
    pub fn check_api(&self, org: &str) -> Result<(), ApiError> {
        self.api.check(&org.to_owned())
    }

    /// One probe of `org`.
    pub fn check_probe(&self, org: &str) -> Result<(), ApiError> {
        self.probes.check(&org.to_owned())
    }

    /// One unauthenticated request from `ip`.
    pub fn check_unauthenticated(&self, ip: IpAddr) -> Result<(), ApiError> {
        self.unauthenticated.check(&ip)
    }

    /// One failed authentication from `ip`; over the budget, `ip` is shut
    /// out (see [`Self::check_auth_blocked`]) for the Retry-After it is told.
    pub fn check_auth_failure(&self, ip: IpAddr) -> Result<(), ApiError> {
        let checked = self.auth_failures.check(&ip);
        if let Err(ApiError::RateLimited { retry_after_secs }) = &checked {
            let until = Instant::now() + Duration::from_secs(*retry_after_secs);
            let mut blocked = self.blocked.lock().expect("not poisoned");
            if blocked.len() >= BLOCKED_MAX {
                let now = Instant::now();
                blocked.retain(|_, t| *t > now);
                if blocked.len() >= BLOCKED_MAX {
                    blocked.clear();
                }
            }
            blocked.insert(ip, until);
        }
        checked
    }

    /// 429 while `ip` is shut out for failing to authenticate too often;
    /// counts nothing, so callers ask it before they ask the store.
    pub fn check_auth_blocked(&self, ip: IpAddr) -> Result<(), ApiError> {
        let blocked = self.blocked.lock().expect("not poisoned");
        match blocked
            .get(&ip)
            .map(|until| until.saturating_duration_since(Instant::now()))
        {
            Some(left) if !left.is_zero() => Err(ApiError::RateLimited {
                retry_after_secs: left.as_secs() + u64::from(left.subsec_nanos() > 0),
            }),
            _ => Ok(()),
        }
    }

    /// Forgets keys whose limits are back to full.
    pub fn evict_idle(&self) {
        self.api.evict();
        self.probes.evict();
        self.unauthenticated.evict();
        self.auth_failures.evict();
        let now = Instant::now();
        self.blocked.lock().expect("not poisoned").retain(|_, t| *t > now);
    }

    /// How many keys are tracked now (all limiters).
    pub fn tracked_keys(&self) -> usize {
        self.api.len() + self.probes.len() + self.unauthenticated.len() + self.auth_failures.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_organization_over_its_burst_is_limited_with_a_retry_delay() {
        let limits = RateLimits::new(1, 0, 0);
        assert!(limits.check_api("org").is_ok());
        assert!(limits.check_api("org").is_ok());
        let err = limits.check_api("org").unwrap_err();
        assert!(matches!(err, ApiError::RateLimited { retry_after_secs: 1 }));
        assert!(limits.check_api("other").is_ok(), "limits are per organization");
        assert!(limits.check_probe("org").is_ok(), "0 turns the probe limit off");
    }

    #[test]
    fn an_address_over_its_failure_budget_is_blocked_until_its_retry_after() {
        let limits = RateLimits::new(0, 0, 1);
        let ip = IpAddr::from([192, 0, 2, 1]);
        let before = limits.check_auth_blocked(ip);
        let failures: Vec<bool> = (0..3).map(|_| limits.check_auth_failure(ip).is_ok()).collect();
        let blocked = limits.check_auth_blocked(ip);
        let other = limits.check_auth_blocked(IpAddr::from([192, 0, 2, 2]));

        assert!(before.is_ok(), "no failure yet, no block");
        assert_eq!(failures, [true, true, false], "a burst of two, then limited");
        assert!(matches!(blocked, Err(ApiError::RateLimited { retry_after_secs: 1 })));
        assert!(other.is_ok(), "blocks are per address");
    }

    #[test]
    fn idle_keys_are_evicted() {
        let limits = RateLimits::new(1000, 0, 0);
        for i in 0..100 {
            limits.check_api(&format!("org{i}")).unwrap();
        }
        assert_eq!(limits.tracked_keys(), 100);
        std::thread::sleep(std::time::Duration::from_millis(5));
        limits.evict_idle();
        assert_eq!(limits.tracked_keys(), 0);
    }
}
