//! The callback: the `state` taken back (on any replica), the code
//! exchanged, the account identified, the credential stored.

use secrecy::ExposeSecret;

use crate::context::Context;
use crate::credentials::{self, Grant};
use crate::crypto::SecretMap;
use crate::error::Error;
use crate::ids::{CredentialId, CredentialName, UserId};
use crate::model::{Access, Principal, Role};
use crate::oauth_apps as apps;
use crate::oauth_client::{exchange_code, fetch_identity, OAuthError};
use crate::providers::Provider;
use crate::store::OAuthStateRow;

use super::{hash_state, redirect_uri};

/// How a callback ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// `return_to` of the authorization, when it was known.
    pub return_to: Option<String>,
    pub result: Result<CredentialId, OAuthError>,
}

/// The callback's query parameters. `Debug` hides `state` and `code`.
#[derive(Default, Clone, serde::Deserialize)]
pub struct CallbackQuery {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
    pub iss: Option<String>,
}

impl std::fmt::Debug for CallbackQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackQuery")
            .field("state_set", &self.state.is_some())
            .field("code_set", &self.code.is_some())
            .field("error", &self.error)
            .field("iss", &self.iss)
            .finish_non_exhaustive()
    }
}

const PROVIDER_ERRORS: &[&str] = &[
    "access_denied",
    "consent_required",
    "interaction_required",
    "login_required",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "unauthorized_client",
];

fn get(map: &SecretMap, key: &str) -> Option<String> {
    map.get(key).map(|v| v.expose_secret().to_owned())
}

/// Completes an authorization. Every failure is an outcome; none stores anything.
///
/// It runs on a task of its own, which the callback's request only waits
/// for: a browser that leaves drops its request, and an exchange dropped
/// with it would lose the tokens the provider issued for a code that can
/// never be used again. A stopping server waits for it
/// (`Refresher::finished`).
pub async fn finish(ctx: &Context, provider: &Provider, query: CallbackQuery) -> Finished {
    let (ctx, provider_id) = (ctx.clone(), provider.id.clone());
    let counted = ctx.refresher.detach();
    let finished = tokio::spawn(async move {
        let _counted = counted;
        let registry = ctx.registry.clone();
        match registry.get(&provider_id) {
            Some(provider) => Some(finish_to_the_end(&ctx, provider, query).await),
            None => None,
        }
    })
    .await;
    finished.ok().flatten().unwrap_or_else(|| {
        tracing::error!(provider = %provider.id, "an OAuth callback did not finish");
        Finished {
            return_to: None,
            result: Err(OAuthError::new("internal", "credgate could not finish the connection")),
        }
    })
}

async fn finish_to_the_end(ctx: &Context, provider: &Provider, query: CallbackQuery) -> Finished {
    let invalid = |m: &str| OAuthError::new("oauth_state_invalid", m);
    let Some(csrf) = query.state.as_deref().filter(|s| !s.is_empty() && s.len() <= 256) else {
        return Finished {
            return_to: None,
            result: Err(invalid("the callback carries no state; start the connection again")),
        };
    };
    let state_hash = hash_state(csrf);
    let row = match ctx.store.take_oauth_state(&state_hash).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return Finished {
                return_to: None,
                result: Err(invalid(
                    "this connection link is unknown or was already used; start again",
                )),
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "could not read an OAuth state");
            return Finished {
                return_to: None,
                result: Err(OAuthError::new("internal", "credgate could not finish the connection")),
            };
        }
    };
    let payload = match ctx
        .vault
        .open(
            &row.org_id,
            &format!("state:{state_hash}"),
            &row.payload_ct,
            row.key_version,
        )
        .await
    {
        Ok(mut groups) => groups.remove("state").unwrap_or_default(),
        Err(e) => {
            tracing::error!(error = %e, "an OAuth state does not decrypt");
            return Finished {
                return_to: None,
                result: Err(invalid("this connection link is not valid")),
            };
        }
    };
    let return_to = get(&payload, "return_to");
    let result = match row.ended.as_deref() {
        Some(why) => Err(ended(why)),
        None => complete(ctx, provider, (&state_hash, &row), &payload, &query).await,
    };
    if let Err(e) = &result {
        tracing::info!(provider = %provider.id, code = e.code, error = %e.message, "OAuth connection failed");
    }
    Finished { return_to, result }
}

/// The outcome of a flow that was ended before its callback came.
fn ended(why: &str) -> OAuthError {
    match why {
        "user_removed" => OAuthError::new(
            "user_removed",
            "the person who started this connection was removed from the organization; nothing was stored",
        ),
        _ => OAuthError::new("oauth_state_invalid", "this connection was ended; start again"),
    }
}

/// What a flow keeps that its credential's `fields` show (an MCP server's
/// URL and its resource).
const FLOW_FIELDS: [&str; 2] = ["server_url", "resource"];

/// The client with the resource (RFC 8707) its tokens are asked for.
pub fn with_resource(mut client: apps::Client, resource: Option<String>) -> apps::Client {
    if resource.is_some() {
        std::sync::Arc::make_mut(&mut client.settings).resource = resource;
    }
    client
}

/// Whoever started the flow, as they were then. Re-authorizing in place
/// is checked again here: `manage` may have been taken away meanwhile.
fn starter(row: &OAuthStateRow, payload: &SecretMap) -> Option<Principal> {
    Some(Principal {
        org_id: row.org_id.clone(),
        key_id: get(payload, "key_id")?,
        role: Role::parse(&get(payload, "role")?)?,
        user_id: get(payload, "owner").map(UserId::from_store),
    })
}

async fn complete(
    ctx: &Context,
    provider: &Provider,
    (state_hash, row): (&str, &OAuthStateRow),
    payload: &SecretMap,
    query: &CallbackQuery,
) -> Result<CredentialId, OAuthError> {
    if row.provider != provider.id {
        return Err(OAuthError::new(
            "oauth_state_invalid",
            "this answer belongs to another provider's connection",
        ));
    }
    if row.expires_at < ctx.now() {
        return Err(OAuthError::new(
            "oauth_state_invalid",
            "the connection link expired (10 minutes); start again",
        ));
    }
    let app = get(payload, "app").zip(get(payload, "app_client_id"));
    let client = match apps::for_app(ctx, &row.org_id, provider, app.as_ref()).await {
        Ok(client) => client,
        Err(Error::NeedsReauth(message)) => return Err(OAuthError::new("app_changed", message)),
        Err(e) => {
            tracing::error!(error = %e, "the OAuth app of a connection could not be read");
            return Err(OAuthError::new("internal", "credgate could not finish the connection"));
        }
    };
    let client = with_resource(client, get(payload, "resource"));
    let settings = client.settings.as_ref();
    if let (Some(iss), Some(expected)) = (&query.iss, &settings.issuer) {
        if iss != expected {
            return Err(OAuthError::new(
                "issuer_mismatch",
                "the answer did not come from the expected issuer",
            ));
        }
    }
    if let Some(error) = &query.error {
        let code = PROVIDER_ERRORS
            .iter()
            .find(|c| **c == error)
            .copied()
            .unwrap_or("provider_error");
        let message = match code {
            "access_denied" => "access was not granted at the provider".to_owned(),
            _ => format!("the provider reported {code}"),
        };
        return Err(OAuthError::new(code, message));
    }
    let code = query
        .code
        .as_deref()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| OAuthError::new("provider_error", "the provider sent no authorization code"))?;
    let verifier = payload
        .get("verifier")
        .cloned()
        .ok_or_else(|| OAuthError::new("oauth_state_invalid", "the connection link is incomplete"))?;
    let credential_id = get(payload, "credential_id").map(CredentialId::from_store);
    if let Some(id) = &credential_id {
        let who = starter(row, payload)
            .ok_or_else(|| OAuthError::new("oauth_state_invalid", "the connection link is incomplete"))?;
        if let Err(e) = credentials::access::authorize(ctx, &who, id, Access::Manage).await {
            return Err(match e {
                Error::Forbidden | Error::NotFound => OAuthError::new(
                    "not_found",
                    "the credential to re-authorize no longer exists, or you may no longer manage it",
                ),
                other => {
                    tracing::error!(error = %other, "checking a re-authorization failed");
                    OAuthError::new("internal", "credgate could not finish the connection")
                }
            });
        }
    }
    let tenant = get(payload, "tenant");
    let redirect = redirect_uri(ctx, &provider.id);
    let tokens = exchange_code(
        ctx.http_for(settings),
        settings,
        tenant.as_deref(),
        &redirect,
        code,
        &verifier,
    )
    .await?;
    let identity = fetch_identity(ctx.http_for(settings), settings, &tokens).await?;
    let actor = get(payload, "actor").unwrap_or_default();
    let extra_fields = FLOW_FIELDS
        .iter()
        .filter_map(|k| get(payload, k).map(|v| (*k, v)))
        .collect();
    let grant = Grant {
        client: &client,
        extra_fields,
        org_id: &row.org_id,
        state_hash: Some(state_hash),
        provider,
        actor: &actor,
        name: get(payload, "name").map(CredentialName::from_store),
        credential_id,
        owner: get(payload, "owner").map(UserId::from_store),
        tenant,
        tokens,
        identity,
    };
    credentials::connect(ctx, grant).await.map_err(|e| match e {
        Error::QuotaExceeded { limit, count, .. } => OAuthError::new(
            "quota_exceeded",
            format!(
                "the organization has {count} {} credentials, and its limit is {limit}",
                provider.id
            ),
        ),
        Error::Conflict(code, message) => OAuthError::new(code, message),
        Error::NotFound => OAuthError::new("not_found", "the credential to re-authorize no longer exists"),
        Error::StoreUnavailable(e) => {
            tracing::error!(error = %e, "storing an OAuth connection met a store outage; its tokens are revoked unless a write of them landed");
            OAuthError::new(
                "store_unavailable",
                "credgate's database is unavailable; nothing was stored: connect again shortly",
            )
        }
        other => {
            tracing::error!(error = %other, source = ?std::error::Error::source(&other), "storing an OAuth connection failed");
            OAuthError::new("internal", "credgate could not store the connection")
        }
    })
}
