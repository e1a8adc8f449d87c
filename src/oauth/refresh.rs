//! Token refresh, on demand and in the background, without ever burning a
//! refresh token: one refresh per credential at a time (an in-process
//! single-flight lock plus a lease in the store for other replicas), rotated
//! tokens written in one transaction before anyone uses them, permanent
//! failures stop retries (`needs_reauth`), transient ones back off.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use serde_json::json;

use super::OAuthError;
use crate::crypto::SecretMap;
use crate::http::AppState;
use crate::metrics::{ProviderLabels, RefreshLabels};
use crate::store::{now, AuditEvent, CredentialRow, RefreshFailure, RefreshedTokens, StoreError};

/// How long a refresh lease lasts: well past the provider timeout, so a
/// live holder never loses it, short enough that a dead one is replaced.
pub const LEASE_SECS: i64 = 60;
/// POST …/refresh does nothing when the token was refreshed this recently
/// (so concurrent callers cause one token request).
const RECENT_SECS: i64 = 10;
/// Longest backoff after repeated transient failures.
const MAX_BACKOFF_SECS: i64 = 3600;

/// Why a refresh did not produce a fresh token.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    /// The grant is gone; a person must re-authorize.
    #[error("{0}")]
    NeedsReauth(String),
    /// The provider failed for now; try again after `retry_after` seconds.
    #[error("{message}")]
    Unavailable { message: String, retry_after: u64 },
    /// No such credential.
    #[error("not found")]
    NotFound,
    /// The store or vault failed.
    #[error(transparent)]
    Internal(anyhow::Error),
}

impl From<RefreshError> for crate::error::ApiError {
    fn from(e: RefreshError) -> Self {
        match e {
            RefreshError::NeedsReauth(m) => Self::NeedsReauth(m),
            RefreshError::Unavailable { message, retry_after } => Self::ProviderUnavailable {
                message,
                retry_after_secs: retry_after,
            },
            RefreshError::NotFound => Self::NotFound,
            RefreshError::Internal(e) => Self::Internal(e),
        }
    }
}

fn internal(e: impl Into<anyhow::Error>) -> RefreshError {
    RefreshError::Internal(e.into())
}

impl From<StoreError> for RefreshError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            other => internal(other),
        }
    }
}

/// Per-process refresh state: lease owner id, single-flight locks, and a
/// rate limit per provider.
pub struct Refresher {
    pub(super) owner: String,
    inflight: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    per_provider: Mutex<HashMap<String, Arc<DefaultDirectRateLimiter>>>,
    rate: NonZeroU32,
    pub(super) concurrency: usize,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("owner", &self.owner)
            .finish_non_exhaustive()
    }
}

impl Refresher {
    /// `rate` refreshes per second per provider, `concurrency` at once.
    pub fn new(rate: u32, concurrency: usize) -> Self {
        Self {
            owner: format!("credgate-{}", uuid::Uuid::new_v4().simple()),
            inflight: Mutex::new(HashMap::new()),
            per_provider: Mutex::new(HashMap::new()),
            rate: NonZeroU32::new(rate.max(1)).expect("at least 1"),
            concurrency: concurrency.max(1),
        }
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.inflight.lock().expect("not poisoned");
        map.retain(|_, lock| Arc::strong_count(lock) > 1);
        map.entry(id.to_owned()).or_default().clone()
    }

    fn limiter(&self, provider: &str) -> Arc<DefaultDirectRateLimiter> {
        let mut map = self.per_provider.lock().expect("not poisoned");
        map.entry(provider.to_owned())
            .or_insert_with(|| Arc::new(RateLimiter::direct(Quota::per_second(self.rate))))
            .clone()
    }
}

/// When the worker should refresh a token that lives `lifetime` seconds
/// until `expires_at`: `lead` before expiry (at most half the lifetime, so
/// short-lived tokens are not refreshed back to back), plus up to a fifth of
/// that as jitter, so tokens issued together do not all come due together.
pub fn schedule(expires_at: Option<i64>, lifetime: Option<u64>, lead: i64) -> Option<i64> {
    let expires_at = expires_at?;
    let lead = lifetime.map_or(lead, |l| lead.min(l as i64 / 2)).max(1);
    Some(expires_at - lead + rand::thread_rng().gen_range(0..=lead / 5))
}

fn expires_within(row: &CredentialRow, secs: i64) -> bool {
    row.expires_at.is_some_and(|e| e <= now() + secs)
}

fn backing_off(row_failures: i64, refresh_after: Option<i64>) -> Option<i64> {
    (row_failures > 0)
        .then_some(refresh_after)
        .flatten()
        .filter(|t| *t > now())
}

/// For `resolve` and other uses: returns the row with an access token valid
/// for at least `margin` seconds, refreshing first when needed.
pub async fn ensure_fresh(
    state: &AppState,
    row: CredentialRow,
    margin: i64,
) -> Result<CredentialRow, crate::error::ApiError> {
    if row.status == "needs_reauth" {
        return Err(RefreshError::NeedsReauth(reauth_message(&row)).into());
    }
    if !expires_within(&row, margin) {
        return Ok(row);
    }
    let fallback = row.clone();
    match refresh_credential(state, &row.org_id, &row.id, Mode::Margin(margin)).await {
        Ok(row) => Ok(row),
        // A failed refresh is no reason to withhold a token that still works.
        Err(RefreshError::Unavailable { .. }) if !expires_within(&fallback, 0) => Ok(fallback),
        Err(e) => Err(e.into()),
    }
}

fn reauth_message(row: &CredentialRow) -> String {
    let detail = row
        .last_error
        .as_deref()
        .and_then(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .and_then(|e| e["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "the grant was revoked or expired".into());
    format!(
        "{detail}; re-authorize with GET /integrations/{}/authorize?credential_id={}",
        row.provider, row.id
    )
}

/// What the caller wants.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// A token valid for this many more seconds (skip if already so).
    Margin(i64),
    /// Refresh now, unless another caller just did.
    Now,
    /// The worker holds the lease already.
    Claimed,
}

/// Refreshes one credential (see [`Mode`]), returning its new row.
pub async fn refresh_credential(
    state: &AppState,
    org_id: &str,
    id: &str,
    mode: Mode,
) -> Result<CredentialRow, RefreshError> {
    let refresher = &state.refresher;
    let lock = refresher.lock_for(id);
    let _single_flight = lock.lock().await;
    let deadline = Instant::now() + Duration::from_secs(state.config.provider_timeout_secs + 5);
    loop {
        let row = state
            .store
            .credential(org_id, id)
            .await?
            .ok_or(RefreshError::NotFound)?;
        if row.auth_type != "oauth2" {
            return Err(RefreshError::NotFound);
        }
        if row.status == "needs_reauth" {
            if matches!(mode, Mode::Claimed) {
                state.store.release_lease(org_id, id, &refresher.owner).await?;
            }
            return Err(RefreshError::NeedsReauth(reauth_message(&row)));
        }
        let (failures, refresh_after) = (row.refresh_failures, row.refresh_after);
        let done_already = match mode {
            Mode::Margin(m) => !expires_within(&row, m),
            Mode::Now => row.last_refreshed_at.is_some_and(|t| t > now() - RECENT_SECS),
            // Refreshed meanwhile (by a resolve): its next turn is scheduled.
            Mode::Claimed => match refresh_after {
                Some(t) => t > now(),
                None => !expires_within(&row, state.config.refresh_lead_secs as i64),
            },
        };
        if done_already {
            if matches!(mode, Mode::Claimed) {
                state.store.release_lease(org_id, id, &refresher.owner).await?;
            }
            return Ok(row);
        }
        if let (Some(until), false) = (backing_off(failures, refresh_after), matches!(mode, Mode::Now)) {
            if matches!(mode, Mode::Claimed) {
                state.store.release_lease(org_id, id, &refresher.owner).await?;
            }
            return Err(RefreshError::Unavailable {
                message: "the provider failed recently; credgate is backing off".into(),
                retry_after: (until - now()).max(1) as u64,
            });
        }
        if matches!(mode, Mode::Claimed) {
            // The worker's claim is the lease, and this row was read under it.
            return do_refresh(state, row, false).await;
        }
        if state
            .store
            .claim_refresh(org_id, id, &refresher.owner, now() + LEASE_SECS)
            .await?
        {
            // Re-read under the lease: another replica may have just written.
            let row = state
                .store
                .credential(org_id, id)
                .await?
                .ok_or(RefreshError::NotFound)?;
            let fresh = match mode {
                Mode::Margin(m) => !expires_within(&row, m),
                _ => row.last_refreshed_at.is_some_and(|t| t > now() - RECENT_SECS) && !matches!(mode, Mode::Claimed),
            };
            if fresh {
                state.store.release_lease(org_id, id, &refresher.owner).await?;
                return Ok(row);
            }
            return do_refresh(state, row, true).await;
        }
        // Another replica is refreshing: its token is as good as ours.
        if matches!(mode, Mode::Margin(_)) && !expires_within(&row, 5) {
            return Ok(row);
        }
        if Instant::now() > deadline {
            return Err(RefreshError::Unavailable {
                message: "another replica is still refreshing this credential".into(),
                retry_after: 1,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn backoff_secs(failures: i64, retry_after: Option<u64>) -> i64 {
    let exp = 30i64.saturating_mul(1 << failures.clamp(0, 10)).min(MAX_BACKOFF_SECS);
    let jittered = exp + rand::thread_rng().gen_range(0..=exp / 5);
    jittered.max(retry_after.unwrap_or(0) as i64)
}

/// The refresh itself, under the lease; returns the new row when `reread`.
async fn do_refresh(state: &AppState, row: CredentialRow, reread: bool) -> Result<CredentialRow, RefreshError> {
    let failures = row.refresh_failures;
    let settings = state
        .registry
        .get(&row.provider)
        .and_then(|p| p.oauth.as_ref())
        .ok_or_else(|| internal(anyhow::anyhow!("provider {} has no OAuth settings", row.provider)))?;
    let groups = state
        .vault
        .open(&row.org_id, &row.id, &row.secret_ct, row.key_version)
        .await
        .map_err(internal)?;
    let old_tokens = groups.get("tokens").cloned().unwrap_or_default();
    let fields: serde_json::Value = serde_json::from_str(&row.fields).unwrap_or_default();
    let tenant = fields["tenant"].as_str();
    let result = match old_tokens.get("refresh_token") {
        None => Err(OAuthError::new("needs_reauth", "the provider gave no refresh token")),
        Some(rt) => {
            state.refresher.limiter(&row.provider).until_ready().await;
            let started = Instant::now();
            let r = super::refresh(&state.http, settings, tenant, rt).await;
            state
                .metrics
                .refresh_latency
                .get_or_create(&ProviderLabels {
                    provider: row.provider.clone(),
                })
                .observe(started.elapsed().as_secs_f64());
            r
        }
    };
    let outcome = match &result {
        Ok(_) => "success",
        Err(e) if e.code == "needs_reauth" => "needs_reauth",
        Err(_) => "transient_failure",
    };
    state
        .metrics
        .refresh_attempts
        .get_or_create(&RefreshLabels {
            provider: row.provider.clone(),
            outcome: outcome.into(),
        })
        .inc();
    let audit = |outcome: &'static str, detail| AuditEvent {
        org_id: row.org_id.clone(),
        credential_id: Some(row.id.clone()),
        action: "credential.refresh",
        outcome,
        actor: "credgate".into(),
        detail: Some(detail),
    };
    match result {
        Ok(set) => {
            let rotated = set.refresh_token.is_some();
            let mut tokens = SecretMap::default();
            tokens.insert("access_token", set.access_token);
            // Microsoft rotates; Google omits it: then the old one stays.
            if let Some(rt) = set.refresh_token.or_else(|| old_tokens.get("refresh_token").cloned()) {
                tokens.insert("refresh_token", rt);
            }
            let empty = SecretMap::default();
            let field_secrets = groups.get("fields").unwrap_or(&empty);
            let (secret_ct, key_version) = state
                .vault
                .seal(&row.org_id, &row.id, &[("fields", field_secrets), ("tokens", &tokens)])
                .await
                .map_err(internal)?;
            let lifetime = set.expires_in.map(|d| d.as_secs());
            let expires_at = lifetime.map(|l| now() + l as i64);
            let refresh_after = schedule(expires_at, lifetime, state.config.refresh_lead_secs as i64);
            let update = RefreshedTokens {
                secret_ct,
                key_version,
                expires_at,
                refresh_after,
                scopes: set.scopes.map(|s| json!(s).to_string()),
            };
            let event = audit("success", json!({"rotated": rotated}));
            // The provider has already rotated: losing this write would lose
            // the only valid refresh token, so try hard.
            let mut attempt = 0;
            loop {
                match state.store.store_refreshed(&row.org_id, &row.id, &update, &event).await {
                    Ok(()) => break,
                    Err(e) if attempt < 5 => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "writing refreshed tokens failed; retrying");
                        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                    }
                    Err(e) => return Err(internal(e)),
                }
            }
            if failures > 0 || row.status != "active" {
                state
                    .webhooks
                    .emit("credential.recovered", &row.org_id, &row.id, &row.provider, json!({}));
            }
            if !reread {
                return Ok(row.clone());
            }
            state
                .store
                .credential(&row.org_id, &row.id)
                .await?
                .ok_or(RefreshError::NotFound)
        }
        Err(e) => {
            let reauth = e.code == "needs_reauth";
            let last_error = json!({"code": if reauth { "needs_reauth" } else { e.code }, "message": e.message, "at": chrono::Utc::now()});
            let status = if reauth {
                "needs_reauth"
            } else if expires_within(&row, 0) {
                "expired"
            } else {
                "active"
            };
            let backoff = backoff_secs(failures, e.retry_after);
            let failure = RefreshFailure {
                status,
                last_error: last_error.to_string(),
                refresh_after: (!reauth).then_some(now() + backoff),
            };
            state
                .store
                .store_refresh_failure(&row.org_id, &row.id, &failure, &audit("failure", last_error.clone()))
                .await?;
            if reauth || failures == 0 {
                state.webhooks.emit(
                    "credential.refresh_failed",
                    &row.org_id,
                    &row.id,
                    &row.provider,
                    last_error,
                );
            }
            tracing::warn!(provider = %row.provider, credential = %row.id, code = e.code, error = %e.message, "token refresh failed");
            if reauth {
                Err(RefreshError::NeedsReauth(e.message))
            } else {
                Err(RefreshError::Unavailable {
                    message: e.message,
                    retry_after: backoff as u64,
                })
            }
        }
    }
}
