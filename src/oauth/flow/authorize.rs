//! Starting a connection: what the caller asked is checked, and a sealed,
//! single-use `state` with the PKCE verifier is kept in the store.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, Scope};
use rand::RngCore;
use secrecy::SecretString;

use crate::context::Context;
use crate::credentials;
use crate::crypto::SecretMap;
use crate::error::Error;
use crate::ids::{CredentialId, CredentialName};
use crate::model::{Access, AuthKind, Principal};
use crate::oauth::mcp;
use crate::oauth::return_to::return_to_allowed;
use crate::oauth::STATE_TTL_SECS;
use crate::oauth_apps as apps;
use crate::providers::{validate_fields, FieldError, Provider};
use crate::store::{OAuthStateRow, StoreError};

use super::{hash_state, redirect_uri};

/// What the caller asked `authorize` for, already checked.
#[derive(Debug, Clone)]
pub struct StartRequest {
    /// Who connects: their user owns a new credential (`None`: the
    /// organization); their actor becomes `created_by`.
    pub who: Principal,
    pub name: Option<CredentialName>,
    pub return_to: Option<String>,
    pub credential_id: Option<CredentialId>,
    pub tenant: Option<String>,
    /// The OAuth client it goes through (the organization's app, the
    /// operator's, or an MCP registration).
    pub client: apps::Client,
    /// More to keep with the flow and send to the authorization endpoint
    /// (an MCP server's `resource`), as `(name, value)`.
    pub extra: Vec<(&'static str, String)>,
}

/// Where to send the browser, and until when that link works.
#[derive(Debug, Clone)]
pub struct Started {
    pub authorize_url: String,
    pub expires_at: i64,
}

/// What a person (through an API key or a hosted page) asks to connect.
#[derive(Debug, Clone, Default)]
pub struct AuthorizeInput {
    pub name: Option<String>,
    pub return_to: Option<String>,
    /// Re-authorize this credential in place (needs `manage`).
    pub credential_id: Option<CredentialId>,
    pub tenant: Option<String>,
    /// An MCP server's URL (provider `mcp` only).
    pub server_url: Option<String>,
}

/// Checks what `who` asked for and starts connecting `provider_id`:
/// `NotFound` for a provider without OAuth or a credential `who` may not
/// manage, `Conflict(provider_not_configured)` without a client id, field
/// errors for a bad `return_to`, `name` or `tenant`.
pub async fn authorize(
    ctx: &Context,
    who: &Principal,
    provider_id: &str,
    input: AuthorizeInput,
) -> Result<Started, Error> {
    let provider = ctx
        .registry
        .get(provider_id)
        .filter(|p| p.oauth.is_some())
        .ok_or(Error::NotFound)?;
    let dynamic = provider.oauth.as_ref().is_some_and(|o| o.dynamic_registration);
    let client = if dynamic {
        None
    } else {
        Some(apps::for_new(ctx, &who.org_id, provider).await?)
    };
    if client.as_ref().is_some_and(|c| c.settings.client_id.is_empty()) {
        return Err(Error::Conflict(
            "provider_not_configured",
            format!(
                "set CREDGATE_PROVIDER_{}_CLIENT_ID and _CLIENT_SECRET, or the organization's own app \
                 (PUT /integrations/oauth-apps/{}), to connect {}",
                provider_id.to_uppercase(),
                provider.id,
                provider.display_name
            ),
        ));
    }
    let mut errors = Vec::new();
    if let Some(r) = &input.return_to {
        if !return_to_allowed(&ctx.config.allowed_return_urls, r) {
            errors.push(FieldError::new(
                "return_to",
                "must start with one of CREDGATE_ALLOWED_RETURN_URLS",
            ));
        }
    }
    let name = match input.name.as_deref().map(credentials::check_name) {
        Some(Ok(name)) => Some(name),
        Some(Err(e)) => {
            errors.push(e);
            None
        }
        None => None,
    };
    let mut tenant = input.tenant.clone();
    let mut server_url = input.server_url.clone();
    if let Some(id) = &input.credential_id {
        let (existing, _) = credentials::access::authorize(ctx, who, id, Access::Manage).await?;
        if existing.provider != provider.id {
            return Err(Error::NotFound);
        }
        if server_url.is_none() {
            server_url = existing
                .fields
                .get("server_url")
                .and_then(|t| t.as_str())
                .map(str::to_owned);
        }
        if tenant.is_none() {
            tenant = existing
                .fields
                .get("tenant")
                .and_then(|t| t.as_str())
                .map(str::to_owned);
        }
    }
    if let Some(t) = &input.tenant {
        let defs = provider
            .auth_type(AuthKind::Oauth2)
            .map(|a| a.fields.clone())
            .unwrap_or_default();
        let mut submitted = serde_json::Map::new();
        submitted.insert("tenant".into(), t.clone().into());
        if let Err(e) = validate_fields(&defs, &submitted) {
            errors.extend(e.into_iter().map(|e| FieldError::new("tenant", e.message)));
        }
    }
    match (dynamic, &server_url) {
        (true, None) => errors.push(FieldError::new("server_url", "is required: the MCP server's URL")),
        (true, Some(url)) => {
            if let Err(Error::Validation(e)) = mcp::check_server_url(url) {
                errors.extend(e);
            }
        }
        (false, Some(_)) => errors.push(FieldError::new(
            "server_url",
            "only an MCP connection takes a server URL",
        )),
        (false, None) => {}
    }
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    // An MCP server: discovered and registered at now (after every cheap check).
    let (client, extra) = match (client, server_url) {
        (Some(client), _) => (client, Vec::new()),
        (None, Some(url)) => mcp::client_for(ctx, who, provider, &url).await?,
        (None, None) => unreachable!("checked above"),
    };
    start(
        ctx,
        provider,
        StartRequest {
            who: who.clone(),
            name,
            return_to: input.return_to,
            credential_id: input.credential_id,
            tenant,
            client,
            extra,
        },
    )
    .await
}

/// Creates the pending authorization and the provider's authorize URL.
pub async fn start(ctx: &Context, provider: &Provider, req: StartRequest) -> Result<Started, Error> {
    let settings = req.client.settings.as_ref();
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    let csrf = URL_SAFE_NO_PAD.encode(raw);
    let state_hash = hash_state(&csrf);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let tenant = req.tenant.as_deref();
    let auth_url = AuthUrl::new(settings.with_tenant(&settings.authorization_url, tenant))
        .map_err(|_| Error::internal(anyhow::anyhow!("bad authorization_url for {}", provider.id)))?;
    let client = oauth2::basic::BasicClient::new(ClientId::new(settings.client_id.clone()))
        .set_auth_uri(auth_url)
        .set_redirect_uri(
            oauth2::RedirectUrl::new(redirect_uri(ctx, &provider.id))
                .map_err(|_| Error::internal(anyhow::anyhow!("bad CREDGATE_PUBLIC_URL")))?,
        );
    let token = csrf.clone();
    let mut request = client.authorize_url(move || CsrfToken::new(token));
    // One `scope` parameter, joined by the provider's separator (Slack: `,`).
    if !settings.scopes.is_empty() {
        request = request.add_scope(Scope::new(settings.scopes.join(&settings.scope_separator)));
    }
    if settings.pkce {
        request = request.set_pkce_challenge(challenge);
    }
    for (k, v) in &settings.authorize_params {
        request = request.add_extra_param(k.clone(), v.clone());
    }
    for (k, v) in &req.extra {
        request = request.add_extra_param(*k, v.clone());
    }
    let (url, _) = request.url();

    let mut payload = SecretMap::default();
    payload.insert("verifier", SecretString::from(verifier.secret().clone()));
    let who = req.who;
    payload.insert("actor", SecretString::from(who.actor()));
    payload.insert("key_id", SecretString::from(who.key_id.clone()));
    payload.insert("role", SecretString::from(who.role.as_str().to_owned()));
    for (k, v) in &req.extra {
        payload.insert(*k, SecretString::from(v.clone()));
    }
    for (k, v) in [
        ("owner", who.user_id.clone().map(String::from)),
        ("name", req.name.map(String::from)),
        ("return_to", req.return_to),
        ("credential_id", req.credential_id.map(String::from)),
        ("tenant", req.tenant),
        ("app", req.client.app.as_ref().map(|(app, _)| app.clone())),
        ("app_client_id", req.client.app.as_ref().map(|(_, id)| id.clone())),
    ] {
        if let Some(v) = v {
            payload.insert(k, SecretString::from(v));
        }
    }
    let subject = format!("state:{state_hash}");
    let (payload_ct, key_version) = ctx.vault.seal(&who.org_id, &subject, &[("state", &payload)]).await?;
    let expires_at = ctx.now() + STATE_TTL_SECS;
    let pending = ctx
        .store
        .insert_oauth_state(
            &state_hash,
            &OAuthStateRow {
                org_id: who.org_id,
                provider: provider.id.clone(),
                user_id: who.user_id,
                ended: None,
                payload_ct,
                key_version,
                expires_at,
            },
            ctx.config.max_pending_oauth,
        )
        .await;
    match pending {
        Ok(()) => {}
        Err(StoreError::QuotaExceeded { limit, .. }) => {
            return Err(Error::TooManyPending(format!(
                "the organization has {limit} connections waiting for the provider's answer; \
                 finish or abandon some (they expire after 10 minutes)"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    Ok(Started {
        authorize_url: url.to_string(),
        expires_at,
    })
}
