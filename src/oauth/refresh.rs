//! The refresh driver: takes the single flight and the lease, asks the
//! provider, lets [`super::outcome::decide`] judge the answer, and has the
//! credential service record it — conditionally, so a write that lost to a
//! re-authorization or another replica is dropped, never forced.

use std::time::{Duration, Instant};

use super::outcome::{decide, Before, Verdict};
use super::LEASE_SECS;
use crate::context::Context;
use crate::credentials::{self, CredentialSecrets};
use crate::error::Error;
use crate::ids::{CredentialId, OrgId};
use crate::metrics::{ProviderLabels, RefreshLabels};
use crate::model::CredentialStatus;
use crate::oauth::flow::with_resource;
use crate::oauth_apps as apps;
use crate::oauth_client::OAuthError;
use crate::store::CredentialRow;

/// What the caller wants.
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// A token valid for this many more seconds (nothing to do if it is).
    Margin(i64),
    /// A refresh now; callers that meet share one provider call.
    Now,
    /// The worker claimed the lease already ([`refresh_claimed`]).
    Claimed,
}

/// For `resolve` and other uses: the row with an access token valid for at
/// least `margin` seconds, refreshing first when needed.
pub async fn ensure_fresh(ctx: &Context, row: CredentialRow, margin: i64) -> Result<CredentialRow, Error> {
    if row.status == CredentialStatus::NeedsReauth {
        return Err(Error::NeedsReauth(reauth_message(&row)));
    }
    if !row.expires_within(ctx.now(), margin) {
        return Ok(row);
    }
    let fallback = row.clone();
    match refresh_credential(ctx, &row.org_id, &row.id, Mode::Margin(margin)).await {
        Ok(row) => Ok(row),
        // A failed refresh is no reason to withhold a token that still works.
        Err(Error::ProviderUnavailable { .. }) if !fallback.expires_within(ctx.now(), 0) => Ok(fallback),
        Err(e) => Err(e),
    }
}

fn reauth_message(row: &CredentialRow) -> String {
    let detail = row
        .last_error
        .as_ref()
        .map_or("the grant was revoked or expired", |e| e.message.as_str());
    format!(
        "{detail}; re-authorize with GET /integrations/{}/authorize?credential_id={}",
        row.provider, row.id
    )
}

fn backing_off(ctx: &Context, row: &CredentialRow) -> Option<i64> {
    (row.refresh_failures > 0)
        .then_some(row.refresh_after)
        .flatten()
        .filter(|t| *t > ctx.now())
}

/// Nothing to do for this caller: the row as it is.
fn satisfied(ctx: &Context, row: &CredentialRow, mode: Mode, seen_version: i64) -> bool {
    match mode {
        Mode::Margin(m) => !row.expires_within(ctx.now(), m),
        // Someone refreshed (or re-authorized) while this caller waited.
        Mode::Now => row.secret_version != seen_version,
        // Refreshed meanwhile (by a resolve): its next turn is scheduled.
        Mode::Claimed => match row.refresh_after {
            Some(t) => t > ctx.now(),
            None => !row.expires_within(ctx.now(), ctx.config.refresh_lead_secs as i64),
        },
    }
}

async fn read(ctx: &Context, org_id: &OrgId, id: &CredentialId) -> Result<CredentialRow, Error> {
    match ctx.store.credential(org_id, id).await? {
        Some(row) if row.auth_type.has_tokens() => Ok(row),
        _ => Err(Error::NotFound),
    }
}

/// Runs `work`, which holds the credential's lease. On an error (the
/// store's, the provider settings', a refresh that failed) the lease is
/// given back, so the worker's next step retries instead of waiting for the
/// lease to run out. Where `work` recorded an outcome, the record released
/// the lease already and this is a no-op (it matches this owner only).
async fn giving_back_on_error<T>(
    ctx: &Context,
    org_id: &OrgId,
    id: &CredentialId,
    work: impl std::future::Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let result = work.await;
    if result.is_err() {
        if let Err(e) = ctx.store.release_lease(org_id, id, &ctx.refresher.owner).await {
            tracing::warn!(credential = %id, error = %e, "a refresh lease could not be given back; it runs out by itself");
        }
    }
    result
}

/// The worker's refresh of a credential whose lease it claimed already:
/// one read, under the single flight, and nothing read after the outcome is
/// recorded (the worker needs only whether it failed).
pub async fn refresh_claimed(ctx: &Context, org_id: &OrgId, id: &CredentialId) -> Result<(), Error> {
    let owner = ctx.refresher.owner.as_str();
    let lock = ctx.refresher.lock_for(id);
    let _single_flight = lock.lock().await;
    giving_back_on_error(ctx, org_id, id, async {
        let row = read(ctx, org_id, id).await?;
        if row.status == CredentialStatus::NeedsReauth || satisfied(ctx, &row, Mode::Claimed, row.secret_version) {
            return Ok(ctx.store.release_lease(org_id, id, owner).await?);
        }
        if let Some(until) = backing_off(ctx, &row) {
            ctx.store.release_lease(org_id, id, owner).await?;
            return Err(unavailable_until(ctx, until));
        }
        do_refresh(ctx, row).await
    })
    .await
}

/// Refreshes one credential (see [`Mode`]; the worker's claimed credentials
/// go through [`refresh_claimed`]), returning its row afterwards.
///
/// The refresh runs on a task of its own, which its caller only waits for:
/// a request whose client hangs up is dropped, and a refresh dropped with
/// it after the provider rotated the refresh token would lose the new one
/// (the next refresh would send the old one: reuse, and the grant revoked).
/// A stopping server waits for such refreshes (`Refresher::finished`).
pub async fn refresh_credential(
    ctx: &Context,
    org_id: &OrgId,
    id: &CredentialId,
    mode: Mode,
) -> Result<CredentialRow, Error> {
    let (ctx, org_id, id) = (ctx.clone(), org_id.clone(), id.clone());
    let counted = ctx.refresher.detach();
    tokio::spawn(async move {
        let _counted = counted;
        refresh_to_the_end(&ctx, &org_id, &id, mode).await
    })
    .await
    .unwrap_or_else(|e| Err(Error::Internal(anyhow::anyhow!("a refresh did not finish: {e}"))))
}

async fn refresh_to_the_end(
    ctx: &Context,
    org_id: &OrgId,
    id: &CredentialId,
    mode: Mode,
) -> Result<CredentialRow, Error> {
    let owner = ctx.refresher.owner.as_str();
    let lock = ctx.refresher.lock_for(id);
    let release = || ctx.store.release_lease(org_id, id, owner);
    let seen_version = read(ctx, org_id, id).await?.secret_version;
    let _single_flight = lock.lock().await;
    let deadline = Instant::now() + Duration::from_secs(ctx.config.provider_timeout_secs + 5);
    loop {
        let row = read(ctx, org_id, id).await?;
        if row.status == CredentialStatus::NeedsReauth {
            return Err(Error::NeedsReauth(reauth_message(&row)));
        }
        if satisfied(ctx, &row, mode, seen_version) {
            return Ok(row);
        }
        if let (Some(until), Mode::Margin(_)) = (backing_off(ctx, &row), mode) {
            return Err(unavailable_until(ctx, until));
        }
        if ctx
            .store
            .claim_refresh(org_id, id, owner, ctx.now() + LEASE_SECS)
            .await?
        {
            return giving_back_on_error(ctx, org_id, id, async {
                // Re-read under the lease: another replica may have just written.
                let row = read(ctx, org_id, id).await?;
                if row.status == CredentialStatus::NeedsReauth || satisfied(ctx, &row, mode, seen_version) {
                    release().await?;
                    return Ok(row);
                }
                do_refresh(ctx, row).await?;
                let row = read(ctx, org_id, id).await?;
                if row.status == CredentialStatus::NeedsReauth {
                    return Err(Error::NeedsReauth(reauth_message(&row)));
                }
                Ok(row)
            })
            .await;
        }
        // Another replica is refreshing: its token is as good as ours.
        if matches!(mode, Mode::Margin(_)) && !row.expires_within(ctx.now(), 5) {
            return Ok(row);
        }
        if Instant::now() > deadline {
            return Err(Error::ProviderUnavailable {
                message: "another replica is still refreshing this credential".into(),
                retry_after_secs: 1,
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn unavailable_until(ctx: &Context, until: i64) -> Error {
    Error::ProviderUnavailable {
        message: "the provider failed recently; credgate is backing off".into(),
        retry_after_secs: (until - ctx.now()).max(1) as u64,
    }
}

/// The refresh itself, holding the lease: asks the provider and records the
/// outcome (or, where it lost to a newer write, gives the lease back). A
/// failed refresh is its error, after it was recorded.
async fn do_refresh(ctx: &Context, row: CredentialRow) -> Result<(), Error> {
    if row.auth_type.is_minted() {
        return mint_again(ctx, row).await;
    }
    // The app that connected it; one deleted or given another client id
    // meanwhile never issued this grant: a person must reconnect.
    let client = match apps::for_credential(ctx, &row).await {
        Ok(client) => Ok(with_resource(client, resource_of(&row))),
        Err(Error::NeedsReauth(message)) => Err(OAuthError::new("needs_reauth", message)),
        Err(e) => return Err(e),
    };
    let old = CredentialSecrets::open(&ctx.vault, &row).await?.tokens;
    let refresh_token = old.and_then(|t| t.refresh_token);
    let tenant = row.fields.get("tenant").and_then(|t| t.as_str());
    let answer = match (&refresh_token, &client) {
        (_, Err(e)) => Err(e.clone()),
        (None, _) => Err(OAuthError::new("needs_reauth", "the provider gave no refresh token")),
        (Some(rt), Ok(client)) => {
            let settings = client.settings.as_ref();
            ctx.refresher.limiter(&row.provider).until_ready().await;
            let started = Instant::now();
            let answer = crate::oauth_client::refresh(ctx.http_for(settings), settings, tenant, rt).await;
            let labels = ProviderLabels {
                provider: row.provider.clone(),
            };
            ctx.metrics
                .refresh_latency
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            answer
        }
    };
    record(ctx, row, answer, refresh_token, client.ok().map(|c| c.settings)).await
}

/// A minted credential's "refresh": a new token minted from its own fields.
async fn mint_again(ctx: &Context, row: CredentialRow) -> Result<(), Error> {
    let provider = ctx
        .registry
        .get(&row.provider)
        .ok_or_else(|| Error::internal(anyhow::anyhow!("provider {} is gone", row.provider)))?;
    let fields = CredentialSecrets::open(&ctx.vault, &row).await?.merged_fields(&row);
    ctx.refresher.limiter(&row.provider).until_ready().await;
    let started = Instant::now();
    let answer = credentials::minted::mint(ctx, provider, row.auth_type, &fields)
        .await
        .map(|(set, _)| set);
    ctx.metrics
        .refresh_latency
        .get_or_create(&ProviderLabels {
            provider: row.provider.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    record(ctx, row, answer, None, None).await
}

/// Judges a refresh's (or a mint's) answer and records it, holding the lease.
async fn record(
    ctx: &Context,
    row: CredentialRow,
    answer: Result<crate::oauth_client::TokenSet, OAuthError>,
    refresh_token: Option<secrecy::SecretString>,
    revoke_with: Option<std::sync::Arc<crate::providers::OAuthSettings>>,
) -> Result<(), Error> {
    let owner = ctx.refresher.owner.as_str();
    let outcome = match &answer {
        Ok(_) => "success",
        Err(e) if e.code == "needs_reauth" => "needs_reauth",
        Err(_) => "transient_failure",
    };
    ctx.metrics
        .refresh_attempts
        .get_or_create(&RefreshLabels {
            provider: row.provider.clone(),
            outcome: outcome.into(),
        })
        .inc();
    let before = Before {
        now: ctx.now(),
        expires_at: row.expires_at,
        failures: row.refresh_failures,
        refresh_token,
        lead: ctx.config.refresh_lead_secs as i64,
        refresh_expires_at: row.refresh_expires_at,
        refresh_lifetime: revoke_with.as_ref().and_then(|s| s.refresh_lifetime),
    };
    let verdict = decide(&mut rand::thread_rng(), answer, &before);
    match verdict {
        Verdict::Refreshed(new) => {
            if credentials::record_refreshed(ctx, &row, owner, &new).await? {
                return Ok(());
            }
            // Someone else wrote newer secrets (a re-authorization, or another
            // replica after our lease ran out): theirs stand, ours are dropped.
            tracing::warn!(credential = %row.id, "a refresh lost to a newer write; its tokens are discarded");
            // A rotated refresh token is ours alone: end it. An unrotated one
            // is the grant the stored credential still uses: keep it.
            if let (true, Some(rt)) = (new.rotated, new.tokens.refresh_token) {
                let Some(settings) = revoke_with else {
                    unreachable!("a rotated refresh token came through a client")
                };
                credentials::revoke_tokens_later(
                    ctx,
                    settings,
                    Some(crate::credentials::OAuthTokens {
                        access_token: rt.clone(),
                        refresh_token: Some(rt),
                    }),
                );
            }
            ctx.store.release_lease(&row.org_id, &row.id, owner).await?;
            Ok(())
        }
        Verdict::Failed { failure, notify, error } => {
            tracing::warn!(provider = %row.provider, credential = %row.id, code = %failure.last_error.code,
                error = %failure.last_error.message, "token refresh failed");
            if credentials::record_refresh_failure(ctx, &row, owner, &failure, notify)
                .await?
                .is_some()
            {
                return Err(error);
            }
            // The verdict is about secrets that were replaced meanwhile.
            tracing::info!(credential = %row.id, "a refresh failure lost to a newer write and was dropped");
            ctx.store.release_lease(&row.org_id, &row.id, owner).await?;
            Ok(())
        }
    }
}

/// An MCP credential's resource (RFC 8707), asked for again on refresh.
pub(crate) fn resource_of(row: &CredentialRow) -> Option<String> {
    row.fields.get("resource").and_then(|r| r.as_str()).map(str::to_owned)
}

/// `who` asks for a refresh now (`manage`): always asks the provider;
/// `Conflict(not_oauth)` for a credential without tokens.
pub async fn refresh_now(
    ctx: &Context,
    who: &crate::model::Principal,
    id: &CredentialId,
) -> Result<CredentialRow, Error> {
    let (row, _) = crate::credentials::access::authorize(ctx, who, id, crate::model::Access::Manage).await?;
    if !row.auth_type.has_tokens() {
        return Err(Error::Conflict(
            "not_oauth",
            "only OAuth and minted credentials have tokens to refresh".into(),
        ));
    }
    refresh_credential(ctx, &row.org_id, &row.id, Mode::Now).await
}
