//! Revoking a credential's tokens at its provider (best effort), when the
//! credential is deleted or a grant obtained will not be stored.

use std::sync::Arc;

use crate::context::Context;
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
