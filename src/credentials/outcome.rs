//! Outcomes recorded on a credential: a refresh (new tokens, or a failure
//! verdict) and a connection test. Refresh outcomes are written only by the
//! lease holder and only over the secrets it read.

use serde_json::json;

use super::{retry_after_rotation, CredentialSecrets, OAuthTokens, KEY_RETRIES};
use crate::context::Context;
use crate::error::Error;
use crate::model::CredentialStatus;
use crate::store::{
    AuditEvent, CredentialRow, LastError, Notification, PendingRefresh, RefreshFailure, RefreshedTokens, StoreError,
};
use crate::vault::VaultError;

/// New tokens from a successful refresh.
#[derive(Debug, Clone)]
pub struct Refreshed {
    pub tokens: OAuthTokens,
    pub expires_at: Option<i64>,
    pub refresh_after: Option<i64>,
    /// When the refresh token ends, where known.
    pub refresh_expires_at: Option<i64>,
    pub scopes: Option<Vec<String>>,
    /// Did the provider send a new refresh token?
    pub rotated: bool,
}

fn refresh_event(row: &CredentialRow, outcome: &'static str, detail: serde_json::Value) -> AuditEvent {
    AuditEvent {
        org_id: row.org_id.clone(),
        credential_id: Some(row.id.clone()),
        action: "credential.refresh",
        outcome,
        actor: "credgate".into(),
        detail: Some(detail),
    }
}

/// How long a refresh keeps retrying its write through a store outage: well
/// within its 60 s lease, so no other replica starts meanwhile.
const STORE_OUTAGE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(40);

/// Stores refreshed tokens over `row` (as read under `owner`'s lease).
/// `false`: another writer changed the secrets or took the lease meanwhile,
/// and nothing was written.
///
/// A write whose outcome is unknown (the database committed, or not, and
/// its answer was lost) is written again; when that finds the row moved,
/// the store is read before anything is concluded: a row that holds one of
/// the ciphertexts this call sealed is this call's write, and a success.
pub async fn record_refreshed(ctx: &Context, row: &CredentialRow, owner: &str, new: &Refreshed) -> Result<bool, Error> {
    let secrets = CredentialSecrets {
        fields: CredentialSecrets::open(&ctx.vault, row).await?.fields,
        tokens: Some(new.tokens.clone()),
    };
    let event = refresh_event(row, "success", json!({"rotated": new.rotated}));
    let recovered = (row.refresh_failures > 0 || row.status != CredentialStatus::Active)
        .then(|| Notification::new("credential.recovered", &row.org_id, &row.id, &row.provider, json!({})));
    // The provider has rotated already: while we hold the lease, keep trying
    // to store the only valid refresh token through a database outage (or
    // a transaction the database gave up).
    let give_up = std::time::Instant::now() + STORE_OUTAGE_PATIENCE;
    let mut pause = std::time::Duration::from_millis(250);
    let mut attempt = 0;
    // What was sent in writes whose outcome is unknown.
    let mut unsure: Vec<String> = Vec::new();
    while attempt < KEY_RETRIES {
        let sealed = secrets.seal(&ctx.vault, &row.org_id, &row.id).await;
        let (secret_ct, key_version) = match sealed {
            Ok(sealed) => sealed,
            Err(VaultError::Store(StoreError::Unavailable(e) | StoreError::GaveWay(e)))
                if std::time::Instant::now() < give_up =>
            {
                tracing::warn!(error = %e, credential = %row.id, "the store is unavailable; retrying the refreshed tokens' write");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(4));
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let pending = PendingRefresh {
            org_id: row.org_id.clone(),
            id: row.id.clone(),
            expected: row.secret_version,
            owner: owner.to_owned(),
            tokens: RefreshedTokens {
                secret_ct: secret_ct.clone(),
                key_version,
                expires_at: new.expires_at,
                refresh_after: new.refresh_after,
                refresh_expires_at: new.refresh_expires_at,
                scopes: new.scopes.clone(),
            },
            event: event.clone(),
            notify: recovered.clone(),
        };
        match ctx.refreshes.submit(pending).await {
            Ok(true) => {
                ctx.webhooks.wake();
                return Ok(true);
            }
            Ok(false) if unsure.is_empty() => return Ok(false),
            Ok(false) => match ctx.store.credential(&row.org_id, &row.id).await {
                Ok(stored) => {
                    let ours = stored.is_some_and(|s| unsure.contains(&s.secret_ct));
                    if ours {
                        tracing::info!(credential = %row.id, "a refreshed tokens' write whose answer was lost had landed");
                        ctx.webhooks.wake();
                    }
                    return Ok(ours);
                }
                Err(StoreError::Unavailable(e) | StoreError::GaveWay(e)) if std::time::Instant::now() < give_up => {
                    tracing::warn!(error = %e, credential = %row.id, "the store is unavailable; reading what it holds again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(std::time::Duration::from_secs(4));
                }
                Err(e) => return Err(e.into()),
            },
            Err(e) if retry_after_rotation(&e, attempt) => attempt += 1,
            Err(StoreError::Unavailable(e) | StoreError::GaveWay(e)) if std::time::Instant::now() < give_up => {
                tracing::warn!(error = %e, credential = %row.id, "the store is unavailable; retrying the refreshed tokens' write");
                unsure.push(secret_ct);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(4));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::internal(anyhow::anyhow!("the data key kept rotating")))
}

/// Records a failed refresh over `row`; `None` when the verdict lost (newer
/// secrets were written, or the lease passed on) and was dropped.
pub async fn record_refresh_failure(
    ctx: &Context,
    row: &CredentialRow,
    owner: &str,
    failure: &RefreshFailure,
    notify: bool,
) -> Result<Option<i64>, Error> {
    let detail = serde_json::to_value(&failure.last_error).expect("serializes");
    let event = refresh_event(row, "failure", detail.clone());
    let mut notes = Vec::new();
    if notify {
        notes.push(Notification::new(
            "credential.refresh_failed",
            &row.org_id,
            &row.id,
            &row.provider,
            detail.clone(),
        ));
    }
    // The grant is gone: a person must connect it again.
    if failure.status == CredentialStatus::NeedsReauth && row.status != CredentialStatus::NeedsReauth {
        notes.push(Notification::new(
            "credential.needs_reauth",
            &row.org_id,
            &row.id,
            &row.provider,
            json!({"reason": "refresh_refused", "error": detail}),
        ));
    }
    let written = ctx
        .store
        .store_refresh_failure(
            &row.org_id,
            &row.id,
            (row.secret_version, owner),
            failure,
            (&event, &notes),
        )
        .await?;
    if written.is_some() && !notes.is_empty() {
        ctx.webhooks.wake();
    }
    Ok(written)
}

/// Records a connection test's outcome; returns the new status.
pub async fn record_test(
    ctx: &Context,
    row: &CredentialRow,
    failure: Option<(&str, &str)>,
    secret_expires_at: Option<i64>,
) -> Result<CredentialStatus, Error> {
    let last_error = failure.map(|(code, message)| LastError {
        code: code.to_owned(),
        message: message.to_owned(),
        at: chrono::DateTime::from_timestamp(ctx.now(), 0).unwrap_or_default(),
    });
    Ok(ctx
        .store
        .record_test(
            &row.org_id,
            &row.id,
            failure.is_none(),
            last_error.as_ref(),
            secret_expires_at,
        )
        .await?)
}
