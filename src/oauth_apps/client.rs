//! Which OAuth client a flow or a credential uses: an organization's own app
//! for the provider (bring your own client), or the operator's (the provider
//! file and `CREDGATE_PROVIDER_*`), or for an MCP server credgate's own
//! registration at its authorization server.

use std::sync::Arc;

use secrecy::SecretString;

use super::{settings_of, subject, GROUP, SECRET};
use crate::context::Context;
use crate::error::Error;
use crate::ids::OrgId;
use crate::providers::{ClientAuth, OAuthSettings, Provider};
use crate::store::{CredentialRow, OAuthAppRow};

/// The OAuth client a flow or a credential uses.
#[derive(Debug, Clone)]
pub struct Client {
    pub settings: Arc<OAuthSettings>,
    /// The organization's app (or registration) and its client id; `None`:
    /// the operator's.
    pub app: Option<(String, String)>,
}

/// Opens an app's client secret.
async fn secret_of(ctx: &Context, org_id: &OrgId, row: &OAuthAppRow) -> Result<SecretString, Error> {
    let mut groups = ctx
        .vault
        .open(org_id, &subject(org_id, &row.app), &row.secret_ct, row.key_version)
        .await?;
    Ok(groups
        .remove(GROUP)
        .and_then(|mut g| g.0.remove(SECRET))
        .unwrap_or_else(|| SecretString::from("")))
}

/// The provider's settings with the app's client, scopes and tenant.
async fn with_app(ctx: &Context, org_id: &OrgId, base: &OAuthSettings, row: &OAuthAppRow) -> Result<Client, Error> {
    let s = settings_of(row)?;
    let mut settings = base.clone();
    settings.client_id = row.client_id.clone();
    settings.client_secret = secret_of(ctx, org_id, row).await?;
    if let Some(scopes) = s.scopes {
        settings.scopes = scopes;
    }
    if s.tenant.is_some() {
        settings.tenant = s.tenant;
    }
    if let Some(server) = s.server {
        // The endpoints a server named: the egress guard holds for every use.
        let allowed = url::Url::parse(&server.token_endpoint)
            .ok()
            .is_some_and(|u| ctx.probes.egress.check_url(&u).is_ok());
        if !allowed {
            return Err(Error::Conflict(
                "egress_denied",
                "credgate is not allowed to reach this MCP server's token endpoint".into(),
            ));
        }
        settings.authorization_url = server.authorization_endpoint;
        settings.token_url = server.token_endpoint;
        settings.revocation_url = server.revocation_endpoint;
        settings.issuer = Some(server.issuer);
        settings.client_auth = match server.token_endpoint_auth_method.as_str() {
            "client_secret_basic" => ClientAuth::Basic,
            "none" => ClientAuth::None,
            _ => ClientAuth::Body,
        };
    }
    Ok(Client {
        settings: Arc::new(settings),
        app: Some((row.app.clone(), row.client_id.clone())),
    })
}

fn operator(provider: &Provider) -> Result<Client, Error> {
    let settings = provider.oauth.as_ref().ok_or(Error::NotFound)?;
    Ok(Client {
        settings: Arc::new(settings.clone()),
        app: None,
    })
}

/// The client a new connection of `provider` in `org_id` uses: the
/// organization's app when it has one, else the operator's.
pub async fn for_new(ctx: &Context, org_id: &OrgId, provider: &Provider) -> Result<Client, Error> {
    let base = provider.oauth.as_ref().ok_or(Error::NotFound)?;
    match ctx.store.oauth_app(org_id, &provider.id).await? {
        Some(row) => with_app(ctx, org_id, base, &row).await,
        None => operator(provider),
    }
}

/// The client of app `app` (with the client id it had when a flow started
/// or a credential was connected): `NeedsReauth` when the app was deleted
/// or now has another client id, which never issued that grant.
pub async fn for_app(
    ctx: &Context,
    org_id: &OrgId,
    provider: &Provider,
    app: Option<&(String, String)>,
) -> Result<Client, Error> {
    let Some((app, client_id)) = app else {
        return operator(provider);
    };
    let base = provider.oauth.as_ref().ok_or(Error::NotFound)?;
    match ctx.store.oauth_app(org_id, app).await? {
        Some(row) if row.client_id == *client_id => with_app(ctx, org_id, base, &row).await,
        Some(_) => Err(Error::NeedsReauth(format!(
            "the organization's OAuth app for {} now has another client id; reconnect",
            provider.display_name
        ))),
        None => Err(Error::NeedsReauth(format!(
            "the organization's OAuth app for {} was deleted; reconnect",
            provider.display_name
        ))),
    }
}

/// The client that connected `row`.
pub async fn for_credential(ctx: &Context, row: &CredentialRow) -> Result<Client, Error> {
    let provider = ctx.registry.get(&row.provider).ok_or(Error::NotFound)?;
    for_app(ctx, &row.org_id, provider, row.oauth_app.as_ref()).await
}

/// The providers the organization has its own app for.
pub async fn own_providers(ctx: &Context, org_id: &OrgId) -> Result<Vec<String>, Error> {
    Ok(ctx
        .store
        .oauth_apps(org_id)
        .await?
        .into_iter()
        .map(|a| a.provider)
        .collect())
}
