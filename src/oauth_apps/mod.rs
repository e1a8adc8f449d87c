//! An organization's own OAuth apps (bring your own client), managed here
//! (admin only): its client secret is sealed under the organization's data
//! key and never leaves but to the provider. Which client a flow or a
//! credential uses is `client`'s.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::context::Context;
use crate::crypto::SecretMap;
use crate::error::Error;
use crate::model::{AuthKind, Principal, Role};
use crate::providers::{validate_fields, FieldError, Provider};
use crate::store::{AppDeletion, AppPut, OAuthAppRow, StoreError};
use crate::vault::app_subject as subject;

mod client;
pub use client::{for_app, for_credential, for_new, own_providers, Client};

/// Most apps and MCP registrations one organization may hold.
pub const MAX_APPS: i64 = 200;

const GROUP: &str = "app";
const SECRET: &str = "client_secret";

/// The non-secret part of an app, as stored (`settings`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AppSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<i64>,
    /// An MCP registration's authorization server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerEndpoints>,
}

/// An authorization server's endpoints (from its metadata, RFC 8414).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerEndpoints {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub token_endpoint_auth_method: String,
}

/// What an admin sets. `Debug` prints no secret.
pub struct AppInput {
    pub client_id: String,
    pub client_secret: SecretString,
    pub scopes: Option<Vec<String>>,
    pub tenant: Option<String>,
    pub client_secret_expires_at: Option<i64>,
}

impl std::fmt::Debug for AppInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppInput")
            .field("client_id", &self.client_id)
            .field("scopes", &self.scopes)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

/// An app as admins see it: never its secret.
#[derive(Debug, Clone)]
pub struct AppView {
    pub provider: String,
    pub client_id: String,
    /// The scopes connections ask for (the app's own, or the provider's).
    pub scopes: Vec<String>,
    pub tenant: Option<String>,
    pub client_secret_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Credentials connected through it (with its current client id).
    pub credentials: i64,
}

pub(crate) fn settings_of(row: &OAuthAppRow) -> Result<AppSettings, Error> {
    serde_json::from_str(&row.settings)
        .map_err(|_| Error::internal(anyhow::anyhow!("oauth app {}: column settings is malformed", row.app)))
}

fn view(row: OAuthAppRow, provider: &Provider) -> Result<AppView, Error> {
    let s = settings_of(&row)?;
    let default_scopes = provider.oauth.as_ref().map(|o| o.scopes.clone()).unwrap_or_default();
    Ok(AppView {
        provider: row.provider,
        client_id: row.client_id,
        scopes: s.scopes.unwrap_or(default_scopes),
        tenant: s.tenant,
        client_secret_expires_at: s.client_secret_expires_at,
        created_at: row.created_at,
        updated_at: row.updated_at,
        credentials: row.credentials,
    })
}

fn admin(who: &Principal) -> Result<(), Error> {
    if who.role == Role::Admin {
        Ok(())
    } else {
        Err(Error::Forbidden)
    }
}

/// A provider whose connections an organization's own app can make: one
/// with fixed OAuth endpoints (not MCP, whose clients are registered).
fn app_provider<'a>(ctx: &'a Context, provider_id: &str) -> Result<&'a Provider, Error> {
    ctx.registry
        .get(provider_id)
        .filter(|p| p.oauth.as_ref().is_some_and(|o| !o.dynamic_registration))
        .ok_or(Error::NotFound)
}

/// RFC 6749 Appendix A: a client id without spaces, a scope token.
fn visible(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_graphic())
}

fn check(provider: &Provider, input: &AppInput) -> Result<(), Error> {
    let mut errors = Vec::new();
    if !visible(&input.client_id, 512) {
        errors.push(FieldError::new(
            "client_id",
            "must be 1 to 512 visible ASCII characters (no spaces)",
        ));
    }
    let secret = input.client_secret.expose_secret();
    if secret.is_empty() || secret.len() > 4096 || !secret.bytes().all(|b| b == b' ' || b.is_ascii_graphic()) {
        errors.push(FieldError::new(
            "client_secret",
            "must be 1 to 4096 printable ASCII characters",
        ));
    }
    if let Some(scopes) = &input.scopes {
        let token = |s: &String| visible(s, 512) && !s.contains(['"', '\\']);
        if scopes.len() > 100 || !scopes.iter().all(token) {
            errors.push(FieldError::new(
                "scopes",
                "must be at most 100 scopes, each visible ASCII characters without spaces, quotes or backslashes",
            ));
        }
    }
    if let Some(t) = &input.tenant {
        match provider.auth_type(AuthKind::Oauth2).map(|a| a.fields.clone()) {
            Some(defs) if defs.iter().any(|d| d.name == "tenant") => {
                let mut submitted = serde_json::Map::new();
                submitted.insert("tenant".into(), t.clone().into());
                if let Err(e) = validate_fields(&defs, &submitted) {
                    errors.extend(e.into_iter().map(|e| FieldError::new("tenant", e.message)));
                }
            }
            _ => errors.push(FieldError::new("tenant", "this provider has no tenant")),
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Validation(errors))
    }
}

/// Creates or replaces the organization's app for `provider_id` (admin);
/// `true` when it was created. Connections made before with another client
/// id keep their grants until they are reconnected (refreshing them is
/// `needs_reauth`: the new app never issued them).
pub async fn put(ctx: &Context, who: &Principal, provider_id: &str, input: AppInput) -> Result<(bool, AppView), Error> {
    admin(who)?;
    let provider = app_provider(ctx, provider_id)?;
    check(provider, &input)?;
    let settings = AppSettings {
        scopes: input.scopes.clone(),
        tenant: input.tenant.clone(),
        client_secret_expires_at: input.client_secret_expires_at,
        server: None,
    };
    let secret = secret_map(Some(input.client_secret.clone()));
    let (created, row) = store_app(
        ctx,
        who,
        (&provider.id, &provider.id),
        (&input.client_id, &secret),
        &settings,
        false,
    )
    .await?;
    Ok((created, view(row, provider)?))
}

/// Seals and stores an app (`app` is its key, the provider id or
/// `mcp:{issuer}`), sealing again when the data key rotates meanwhile.
pub(crate) async fn store_app(
    ctx: &Context,
    who: &Principal,
    (app, provider): (&str, &str),
    (client_id, secret): (&str, &SecretMap),
    settings: &AppSettings,
    keep_existing: bool,
) -> Result<(bool, OAuthAppRow), Error> {
    let org_id = &who.org_id;
    let subject = subject(org_id, app);
    let settings_end = settings.client_secret_expires_at;
    let settings = serde_json::to_string(settings).expect("settings serialize");
    let actor = who.actor();
    // A rotation between sealing and writing: seal again under the new key.
    for attempt in 0..3 {
        let (secret_ct, key_version) = ctx.vault.seal(org_id, &subject, &[(GROUP, secret)]).await?;
        let put = AppPut {
            app,
            provider,
            client_id,
            secret_ct: &secret_ct,
            key_version,
            settings: &settings,
            // An MCP registration's secret is renewed by registering again.
            secret_expires_at: (!app.starts_with("mcp:")).then_some(settings_end).flatten(),
            actor: &actor,
            limit: MAX_APPS,
            keep_existing,
        };
        match ctx.store.put_oauth_app(org_id, &put).await {
            Ok(done) => return Ok(done),
            Err(StoreError::KeyRotated) if attempt < 2 => continue,
            Err(StoreError::QuotaExceeded { limit, .. }) => {
                return Err(Error::Conflict(
                    "quota_exceeded",
                    format!("the organization already has {limit} OAuth apps and registrations, the most allowed"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::KeyRotated.into())
}

/// The organization's own apps (admin).
pub async fn list(ctx: &Context, who: &Principal) -> Result<Vec<AppView>, Error> {
    admin(who)?;
    let mut items = Vec::new();
    for row in ctx.store.oauth_apps(&who.org_id).await? {
        // An app of a provider whose file was removed is listed as it is.
        match ctx.registry.get(&row.provider) {
            Some(p) => items.push(view(row, p)?),
            None => {
                let s = settings_of(&row)?;
                items.push(AppView {
                    provider: row.provider,
                    client_id: row.client_id,
                    scopes: s.scopes.unwrap_or_default(),
                    tenant: s.tenant,
                    client_secret_expires_at: s.client_secret_expires_at,
                    created_at: row.created_at,
                    updated_at: row.updated_at,
                    credentials: row.credentials,
                })
            }
        }
    }
    Ok(items)
}

/// Deletes the organization's app for `provider_id` (admin): `Conflict(in_use)`
/// while credentials connected through it exist, unless `force` (they then
/// need reconnecting when their access token runs out).
pub async fn delete(ctx: &Context, who: &Principal, provider_id: &str, force: bool) -> Result<(), Error> {
    admin(who)?;
    if provider_id.starts_with("mcp:") {
        return Err(Error::NotFound);
    }
    match ctx
        .store
        .delete_oauth_app(&who.org_id, provider_id, force, &who.actor())
        .await?
    {
        AppDeletion::Deleted => Ok(()),
        AppDeletion::NotFound => Err(Error::NotFound),
        AppDeletion::InUse(n) => Err(Error::Conflict(
            "in_use",
            format!("{n} credentials were connected through this app; delete or reconnect them, or pass force=true"),
        )),
    }
}

/// The secret map an app's client secret is sealed in.
pub(crate) fn secret_map(secret: Option<SecretString>) -> SecretMap {
    let mut map = SecretMap::default();
    if let Some(secret) = secret {
        map.insert(SECRET, secret);
    }
    map
}
