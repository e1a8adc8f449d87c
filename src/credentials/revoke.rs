//! Revoking a credential's tokens at its provider (best effort), when the
//! credential is deleted or a grant obtained will not be stored.

use crate::context::Context;
use crate::oauth_client::{revoke, TokenSet};

use super::OAuthTokens;

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
