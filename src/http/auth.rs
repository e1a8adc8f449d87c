//! Who is calling: the bearer API key (verified keys cached briefly, unknown
//! ones remembered briefly too), the client address (`X-Forwarded-For` only
//! from trusted proxies), failed authentications limited per address, last
//! use recorded at most once a minute per key, and role checks (denials are
//! audited by `credentials::access`).
//!
//! A token's checksum decides whether it is worth a lookup, not its
//! address: one that was never issued here is refused without asking the
//! store, and one that may have been is always looked up, so a valid key is
//! never refused for what other clients at its address did.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use ipnet::IpNet;

use super::error::ApiError;
use super::AppState;
use crate::api_tokens::{token_hash, Shape, TokenFormat};
use crate::model::{Principal, Role};
use crate::store::ApiKeyRow;

/// How long a verified API key is trusted without asking the store again:
/// a revoked key stops working on every replica within this.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// How long an unknown token is answered 401 without asking the store.
const NEGATIVE_TTL: Duration = Duration::from_secs(2);
const CACHE_MAX: usize = 10_000;
/// Last use is written at most this often per key.
const TOUCH_EVERY_SECS: i64 = 60;

#[derive(Debug, Clone)]
struct Known {
    key: ApiKeyRow,
    at: Instant,
}

/// When an unknown bearer token is looked up in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// It may have been issued here: whatever its address sent before.
    Always,
    /// A legacy-shaped token of no key this replica knew at start: only
    /// while its address is within its failure budget.
    WithinBudget,
    /// Its checksum fails: it was never issued here.
    Never,
}

/// The installation's token format, the hashes of keys issued before
/// checksums, recently verified keys, recently unknown tokens and last-use
/// bookkeeping; every map is bounded.
#[derive(Debug)]
pub struct KeyCache {
    format: TokenFormat,
    legacy: HashSet<String>,
    known: RwLock<HashMap<String, Known>>,
    unknown: RwLock<HashMap<String, Instant>>,
    touched: Mutex<HashMap<String, i64>>,
}

fn bounded<V>(map: &mut HashMap<String, V>, fresh: impl Fn(&V) -> bool) {
    if map.len() >= CACHE_MAX {
        map.retain(|_, v| fresh(v));
        if map.len() >= CACHE_MAX {
            map.clear();
        }
    }
}

impl KeyCache {
    /// A cache for tokens of `format`; `legacy`: the hashes of live keys
    /// issued before checksums.
    pub fn new(format: TokenFormat, legacy: HashSet<String>) -> Self {
        Self {
            format,
            legacy,
            known: RwLock::default(),
            unknown: RwLock::default(),
            touched: Mutex::default(),
        }
    }

    /// When `token` is worth asking the store about.
    fn lookup(&self, token: &str, hash: &str) -> Lookup {
        match self.format.shape(token) {
            Shape::Checksummed => Lookup::Always,
            Shape::Legacy if self.legacy.contains(hash) => Lookup::Always,
            Shape::Legacy => Lookup::WithinBudget,
            Shape::Invalid => Lookup::Never,
        }
    }

    fn known(&self, hash: &str, now: i64) -> Option<ApiKeyRow> {
        let known = self.known.read().expect("not poisoned");
        known
            .get(hash)
            .filter(|k| k.at.elapsed() < KEY_CACHE_TTL)
            .filter(|k| k.key.expires_at.is_none_or(|e| e > now))
            .map(|k| k.key.clone())
    }

    fn remember(&self, hash: String, key: ApiKeyRow) {
        let mut known = self.known.write().expect("not poisoned");
        bounded(&mut known, |k| k.at.elapsed() < KEY_CACHE_TTL);
        known.insert(
            hash,
            Known {
                key,
                at: Instant::now(),
            },
        );
    }

    fn recently_unknown(&self, hash: &str) -> bool {
        let unknown = self.unknown.read().expect("not poisoned");
        unknown.get(hash).is_some_and(|at| at.elapsed() < NEGATIVE_TTL)
    }

    fn forget_unknown(&self, hash: String) {
        let mut unknown = self.unknown.write().expect("not poisoned");
        bounded(&mut unknown, |at| at.elapsed() < NEGATIVE_TTL);
        unknown.insert(hash, Instant::now());
    }

    /// Should this use of `key_id` be written (first in a minute)?
    fn should_touch(&self, key_id: &str, now: i64) -> bool {
        let mut touched = self.touched.lock().expect("not poisoned");
        if touched.get(key_id).is_some_and(|t| now - t < TOUCH_EVERY_SECS) {
            return false;
        }
        bounded(&mut touched, |t| now - t < TOUCH_EVERY_SECS);
        touched.insert(key_id.to_owned(), now);
        true
    }
}

/// The client's address: the peer, or — when the peer is a trusted proxy —
/// the nearest address in `X-Forwarded-For` that is not one.
pub fn client_ip(parts: &Parts, trusted: &[IpNet]) -> IpAddr {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let forwarded: Vec<IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    forwarded.into_iter().rev().find(|ip| !is_trusted(ip)).unwrap_or(peer)
}

/// The authenticated caller: an API key of one organization (derefs to
/// the domain's [`Principal`]).
#[derive(Debug, Clone)]
pub struct Caller(pub Principal);

impl std::ops::Deref for Caller {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.0
    }
}

impl Caller {
    /// Refuses (403) unless the caller has one of `roles`; denials are
    /// audited by the domain's access log (503 when it cannot record one).
    pub async fn require(&self, state: &AppState, roles: &[Role], credential_id: Option<&str>) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        crate::credentials::access::deny(state, self, credential_id, "role").await?;
        Err(ApiError::Forbidden)
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let ip = client_ip(parts, &state.trusted_proxies);
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 256);
        let Some(token) = token else {
            state.limits.check_auth_failure(ip)?;
            return Err(ApiError::Unauthorized);
        };
        let hash = token_hash(token);
        let now = state.now();
        // Caches first, then the token's checksum: a token never issued here
        // costs no query, however many an address makes up, and one that
        // may have been is looked up even from an address over its budget.
        let key = match state.keys.known(&hash, now) {
            Some(key) => key,
            None => {
                let lookup = state.keys.lookup(token, &hash);
                if lookup == Lookup::Never || state.keys.recently_unknown(&hash) {
                    state.limits.check_auth_failure(ip)?;
                    return Err(ApiError::Unauthorized);
                }
                if lookup == Lookup::WithinBudget {
                    state.limits.check_auth_blocked(ip)?;
                }
                state.metrics.api_key_lookups.inc();
                match state.store.api_key_by_hash(&hash).await? {
                    Some(key) => {
                        state.keys.remember(hash, key.clone());
                        key
                    }
                    None => {
                        state.keys.forget_unknown(hash);
                        state.limits.check_auth_failure(ip)?;
                        return Err(ApiError::Unauthorized);
                    }
                }
            }
        };
        state.limits.check_api(&key.org_id)?;
        if state.keys.should_touch(&key.id, now) {
            let (store, id) = (state.store.clone(), key.id.clone());
            tokio::spawn(async move {
                if let Err(e) = store.touch_api_key(&id, now).await {
                    tracing::debug!(error = %e, "could not record an API key's last use");
                }
            });
        }
        let span = tracing::Span::current();
        span.record("org", tracing::field::display(&key.org_id));
        span.record("key_id", tracing::field::display(&key.id));
        Ok(Caller(Principal {
            key_id: key.id,
            org_id: key.org_id,
            role: key.role,
            user_id: key.user_id,
        }))
    }
}

/// The client's address as [`client_ip`] decides it.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self(client_ip(parts, &state.trusted_proxies)))
    }
}
