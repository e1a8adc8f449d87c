//! Revoking a credential's tokens at its provider (best effort), when the
//! credential is deleted or a grant obtained will not be stored.

use std::sync::Arc;

use crate::context::Context;
use crate::ids::{CredentialId, OrgId};
use crate::oauth_client::{revoke, TokenSet};
use crate::providers::OAuthSettings;
use crate::store::CredentialRow;

use super::OAuthTokens;

/// Revokes tokens at the client's provider when it has a revocation
/// endpoint (the refresh token if there is one, which ends the grant).
/// Best effort.
pub async fn revoke_tokens(ctx: &Context, settings: &OAuthSettings, tokens: Option<&OAuthTokens>) {
    let (Some(url), Some(tokens)) = (settings.revocation_url.as_deref(), tokens) else {
        return;
    };
    let (token, hint) = match &tokens.refresh_token {
        Some(rt) => (rt, "refresh_token"),
        None => (&tokens.access_token, "access_token"),
    };
    revoke(ctx.http_for(settings), settings, url, token, hint).await;
}

/// Revokes a stored credential's tokens through the app that connected it
/// (nothing when that app is gone: no client could).
pub async fn revoke_credential_tokens(ctx: &Context, row: &CredentialRow, tokens: Option<&OAuthTokens>) {
    match crate::oauth_apps::for_credential(ctx, row).await {
        Ok(client) => revoke_tokens(ctx, &client.settings, tokens).await,
        Err(e) => tracing::info!(credential = %row.id, error = %e, "tokens not revoked: their OAuth app is gone"),
    }
}

/// [`revoke_tokens`] in the background: a slow provider holds nothing up.
pub fn revoke_tokens_later(ctx: &Context, settings: Arc<OAuthSettings>, tokens: Option<OAuthTokens>) {
    let ctx = ctx.clone();
    tokio::spawn(async move { revoke_tokens(&ctx, &settings, tokens.as_ref()).await });
}

/// Revokes a token set that will not be stored (in the background).
pub fn revoke_token_set(ctx: &Context, settings: Arc<OAuthSettings>, set: &TokenSet) {
    let tokens = OAuthTokens {
        access_token: set.access_token.clone(),
        refresh_token: set.refresh_token.clone(),
    };
    revoke_tokens_later(ctx, settings, Some(tokens));
}

/// How long a grant given up for a store outage waits for the store to
/// tell whether a write of it landed after all.
const UNSURE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(600);
const UNSURE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Revokes a token set given up for a store outage, in the background,
/// once the store can tell that none of the writes whose answer the outage
/// lost (`unsure`: each credential id with the ciphertext sent) landed:
/// a landed one holds the grant, which must then not be revoked. The store
/// is asked every 5 s for up to 10 minutes; still unanswered, the tokens
/// are left as they are (logged).
pub fn revoke_unless_landed(
    ctx: &Context,
    settings: Arc<OAuthSettings>,
    set: &TokenSet,
    org_id: &OrgId,
    unsure: Vec<(CredentialId, String)>,
) {
    if unsure.is_empty() {
        return revoke_token_set(ctx, settings, set);
    }
    let tokens = OAuthTokens {
        access_token: set.access_token.clone(),
        refresh_token: set.refresh_token.clone(),
    };
    let (ctx, org_id) = (ctx.clone(), org_id.clone());
    tokio::spawn(async move {
        let give_up = std::time::Instant::now() + UNSURE_PATIENCE;
        loop {
            match landed(&ctx, &org_id, &unsure).await {
                Ok(true) => return,
                Ok(false) => return revoke_tokens(&ctx, &settings, Some(&tokens)).await,
                Err(e) if std::time::Instant::now() < give_up => {
                    tracing::debug!(error = %e, "whether a grant's write landed is not known yet");
                    tokio::time::sleep(UNSURE_EVERY).await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a grant given up for a store outage was neither found nor revoked");
                    return;
                }
            }
        }
    });
}

/// Whether one of the credentials in `sent` holds the ciphertext sent for
/// it (a write whose answer was lost had landed).
pub(super) async fn landed(
    ctx: &Context,
    org_id: &OrgId,
    sent: &[(CredentialId, String)],
) -> Result<bool, crate::store::StoreError> {
    for (id, secret_ct) in sent {
        if ctx
            .store
            .credential(org_id, id)
            .await?
            .is_some_and(|row| row.secret_ct == *secret_ct)
        {
            return Ok(true);
        }
    }
    Ok(false)
}
