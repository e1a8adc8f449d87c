//! Connect: store an OAuth grant as a credential — a new one (within the
//! quota), the one the same owner already connected for the same external
//! account (another owner's never), or the one being re-authorized in place
//! (only with the same account; the caller checked `manage`).

use serde_json::{json, Map, Value};

use super::{retry_after_rotation, CredentialSecrets, OAuthTokens, KEY_RETRIES};
use crate::context::Context;
use crate::error::Error;
use crate::ids::{CredentialId, CredentialName, OrgId, UserId};
use crate::model::AuthKind;
use crate::oauth_apps::Client;
use crate::oauth_client::{Identity, TokenSet};
use crate::providers::Provider;
use crate::store::{AuditEvent, GrantTarget, Notification, OAuthGrant, StoreError};

/// A completed authorization.
#[derive(Debug)]
pub struct Grant<'a> {
    pub org_id: &'a OrgId,
    /// The authorization it completes: deleted as the grant is stored, and
    /// nothing is stored when it was ended meanwhile (its user removed).
    /// `None` only for grants that come from no flow (seeding a benchmark).
    pub state_hash: Option<&'a str>,
    pub provider: &'a Provider,
    /// Becomes `created_by` of a new credential.
    pub actor: &'a str,
    /// Name of a new credential (default: provider and account).
    pub name: Option<CredentialName>,
    /// Re-authorize this credential in place.
    pub credential_id: Option<CredentialId>,
    /// Owner of a new credential (the user who connected); `None`: the organization.
    pub owner: Option<UserId>,
    pub tenant: Option<String>,
    pub tokens: TokenSet,
    pub identity: Identity,
    /// The client that obtained it (the credential keeps using its app).
    pub client: &'a Client,
    /// More non-secret fields the flow gathered (an MCP server's URL).
    pub extra_fields: Vec<(&'static str, String)>,
}

/// How long storing a grant keeps trying through a store outage.
const STORE_OUTAGE_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// What one attempt at storing a grant came to.
enum Step {
    Stored(CredentialId),
    /// Read again and retry (a concurrent writer, a rotated key).
    Again,
}

/// Stores a grant; returns the credential id. A concurrent writer of the
/// same credential or account makes it read again and retry; a store
/// outage, for up to 20 s.
pub async fn connect(ctx: &Context, grant: Grant<'_>) -> Result<CredentialId, Error> {
    let Grant {
        org_id,
        state_hash,
        provider,
        actor,
        name,
        credential_id,
        owner,
        tenant,
        tokens,
        identity,
        client,
        extra_fields,
    } = grant;
    let settings_scopes = client.settings.scopes.clone();
    let mut fields = Map::new();
    for (k, v) in extra_fields {
        fields.insert(k.into(), Value::String(v));
    }
    if let Some(t) = &tenant {
        fields.insert("tenant".into(), Value::String(t.clone()));
    }
    if let Some(tid) = &identity.tenant_id {
        fields.insert("tenant_id".into(), Value::String(tid.clone()));
    }
    let now = ctx.now();
    let lifetime = tokens.expires_in.map(|d| d.as_secs());
    let expires_at = lifetime.map(|l| now + l as i64);
    let refresh_after = crate::oauth_client::schedule(expires_at, lifetime, ctx.config.refresh_lead_secs as i64);
    // A new grant: an absolute lifetime starts again.
    let refresh_expires_at = client.settings.refresh_end(tokens.refresh_expires_in, now, None, true);
    let renewable = tokens.refresh_expires_in.is_some() || client.settings.refresh_lifetime.is_some_and(|l| l.renewed);
    let refresh_after = crate::oauth_client::keep_alive(refresh_after, refresh_expires_at, renewable, now);
    let account = identity.email.as_deref().unwrap_or(&identity.id).to_owned();
    // The provider has issued the tokens (and used up the code): through a
    // store outage the grant is written again, for a while, before it is
    // given up (and its tokens revoked).
    let give_up = std::time::Instant::now() + STORE_OUTAGE_PATIENCE;
    let mut pause = std::time::Duration::from_millis(250);
    // What was sent in writes whose outcome is unknown (an outage's answer):
    // each credential id with its ciphertext.
    let mut unsure: Vec<(CredentialId, String)> = Vec::new();
    let mut attempt = 0;
    while attempt < KEY_RETRIES * 2 {
        let step: Result<Step, Error> = async {
            let existing_id = match &credential_id {
                Some(id) => Some(id.clone()),
                None => {
                    ctx.store
                        .credential_for_account(org_id, &provider.id, owner.as_ref(), &identity.id)
                        .await?
                }
            };
            let existing = match &existing_id {
                Some(id) => match ctx.store.credential(org_id, id).await? {
                    Some(c) if c.provider == provider.id && c.auth_type == AuthKind::Oauth2 => Some(c),
                    _ => {
                        return Err(Error::Conflict(
                            "not_found",
                            "the credential to re-authorize no longer exists".into(),
                        ))
                    }
                },
                None => None,
            };
            if let Some(c) = &existing {
                // A token is never carried across accounts.
                if c.account_id.as_ref().is_some_and(|a| *a != identity.id) {
                    super::revoke_token_set(ctx, client.settings.clone(), &tokens);
                    return Err(Error::Conflict(
                        "account_mismatch",
                        format!(
                            "this credential belongs to another {} account; sign in with that account, or connect a new credential",
                            provider.display_name
                        ),
                    ));
                }
            }
            let id = existing.as_ref().map_or_else(CredentialId::generate, |c| c.id.clone());
            // Google sends a refresh token on first consent only: keep the old one.
            let kept = match (&tokens.refresh_token, &existing) {
                (Some(rt), _) => Some(rt.clone()),
                (None, Some(c)) => CredentialSecrets::open(&ctx.vault, c)
                    .await?
                    .tokens
                    .and_then(|t| t.refresh_token),
                (None, None) => None,
            };
            let secrets = CredentialSecrets {
                fields: Default::default(),
                tokens: Some(OAuthTokens {
                    access_token: tokens.access_token.clone(),
                    refresh_token: kept,
                }),
            };
            let (secret_ct, key_version) = secrets.seal(&ctx.vault, org_id, &id).await?;
            let stored = OAuthGrant {
                org_id: org_id.to_owned(),
                provider: provider.id.clone(),
                account_id: identity.id.clone(),
                account_email: identity.email.clone(),
                account_name: identity.display_name.clone(),
                scopes: tokens.scopes.clone().unwrap_or_else(|| settings_scopes.clone()),
                expires_at,
                refresh_after,
                refresh_expires_at,
                fields: Value::Object(fields.clone()).to_string(),
                secret_names: "[]".into(),
                secret_ct,
                key_version,
                oauth_app: client.app.clone(),
            };
            let (target, action) = match &existing {
                Some(c) => (
                    GrantTarget::Existing {
                        id: id.clone(),
                        expected_version: c.secret_version,
                    },
                    "credential.reconnect",
                ),
                None => (
                    GrantTarget::New {
                        id: id.clone(),
                        name: name
                            .clone()
                            .unwrap_or_else(|| CredentialName::lossy(&format!("{} ({account})", provider.display_name))),
                        created_by: actor.to_owned(),
                        owner: owner.clone(),
                    },
                    "credential.connect",
                ),
            };
            let event = AuditEvent::success(org_id, &id, action, actor)
                .with_detail(json!({"provider": provider.id, "account": account}));
            let created = existing.is_none().then(|| {
                Notification::new(
                    "credential.created",
                    org_id,
                    &id,
                    &provider.id,
                    json!({"account": identity.email}),
                )
            });
            match ctx
                .store
                .store_grant(
                    state_hash,
                    &stored,
                    &target,
                    ctx.config.max_per_provider.into(),
                    (&event, created.as_ref()),
                )
                .await
            {
                Ok(()) => {
                    ctx.webhooks.wake();
                    Ok(Step::Stored(id))
                }
                Err(e) if retry_after_rotation(&e, attempt % KEY_RETRIES) => Ok(Step::Again),
                Err(StoreError::Conflict) => Ok(Step::Again),
                Err(StoreError::AccountTaken) if existing_id.is_none() => Ok(Step::Again),
                Err(e @ (StoreError::Unavailable(_) | StoreError::GaveWay(_))) => {
                    unsure.push((id.clone(), stored.secret_ct.clone()));
                    Err(e.into())
                }
                // A write of ours whose answer an outage lost may have landed
                // (and taken the flow's state with it).
                Err(StoreError::FlowEnded(_)) if super::revoke::landed(ctx, org_id, &unsure).await.unwrap_or(false) => {
                    ctx.webhooks.wake();
                    Ok(Step::Stored(id))
                }
                Err(StoreError::FlowEnded(why)) => {
                    super::revoke_token_set(ctx, client.settings.clone(), &tokens);
                    Err(match why.as_str() {
                        "app_changed" => Error::Conflict(
                            "app_changed",
                            "the organization's OAuth app changed while this connection was made; start again".into(),
                        ),
                        "user_removed" => Error::Conflict(
                            "user_removed",
                            "the person who started this connection was removed from the organization; nothing was stored"
                                .into(),
                        ),
                        _ => Error::Conflict(
                            "oauth_state_invalid",
                            "the connection link expired (10 minutes); start again".into(),
                        ),
                    })
                }
                Err(StoreError::QuotaExceeded { limit, count }) => Err(Error::QuotaExceeded {
                    provider: provider.id.clone(),
                    limit,
                    count,
                }),
                Err(e) => Err(e.into()),
            }
        }
        .await;
        match step {
            Ok(Step::Stored(id)) => return Ok(id),
            Ok(Step::Again) => attempt += 1,
            Err(Error::StoreUnavailable(e)) if std::time::Instant::now() < give_up => {
                tracing::warn!(error = %e, "the store is unavailable; storing an OAuth grant again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(4));
            }
            Err(e @ Error::StoreUnavailable(_)) => {
                // Nobody will hold these tokens: the provider is asked to
                // revoke them, unless one of the writes landed after all.
                super::revoke::revoke_unless_landed(ctx, client.settings.clone(), &tokens, org_id, unsure);
                return Err(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict(
        "conflict",
        "the credential kept changing while it was being connected; try again".into(),
    ))
}
