//! The connect flow: `authorize` keeps a sealed, single-use `state` with the
//! PKCE verifier in the store; the callback takes it back (on any replica),
//! exchanges the code, asks who the account is, and stores the credential.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use oauth2::{AuthUrl, ClientId, CsrfToken, PkceCodeChallenge, Scope};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::STATE_TTL_SECS;
use crate::context::Context;
use crate::credentials::{self, Grant};
use crate::crypto::SecretMap;
use crate::error::Error;
use crate::model::{Access, AuthKind, Principal};
use crate::oauth_client::{exchange_code, fetch_identity, OAuthError};
use crate::providers::{validate_fields, FieldError, Provider};

use super::return_to::return_to_allowed;
use crate::store::{OAuthStateRow, StoreError};

/// What the caller asked `authorize` for, already checked.
#[derive(Debug, Clone)]
pub struct StartRequest {
    pub org_id: String,
    /// `user:{id}` or `api_key:{id}`: becomes `created_by`.
    pub actor: String,
    /// The user who connects: owns a new credential (`None`: the organization).
    pub owner: Option<String>,
    pub name: Option<String>,
    pub return_to: Option<String>,
    pub credential_id: Option<String>,
    pub tenant: Option<String>,
}

/// Where to send the browser, and until when that link works.
#[derive(Debug, Clone)]
pub struct Started {
    pub authorize_url: String,
    pub expires_at: i64,
}

/// How a callback ended.
#[derive(Debug, Clone)]
pub struct Finished {
    /// `return_to` of the authorization, when it was known.
    pub return_to: Option<String>,
    pub result: Result<String, OAuthError>,
}

fn hash_state(state: &str) -> String {
    hex::encode(Sha256::digest(state.as_bytes()))
}

/// `{public_url}/integrations/{provider}/callback`: one path per provider,
/// so a response can only land where its provider was asked (mix-up defence).
pub fn redirect_uri(ctx: &Context, provider: &str) -> String {
    format!("{}/integrations/{provider}/callback", ctx.config.public_url)
}

/// What a person (through an API key or a hosted page) asks to connect.
#[derive(Debug, Clone, Default)]
pub struct AuthorizeInput {
    pub name: Option<String>,
    pub return_to: Option<String>,
    /// Re-authorize this credential in place (needs `manage`).
    pub credential_id: Option<String>,
    pub tenant: Option<String>,
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
    let settings = provider.oauth.as_ref().expect("filtered");
    if settings.client_id.is_empty() {
        return Err(Error::Conflict(
            "provider_not_configured",
            format!(
                "set CREDGATE_PROVIDER_{}_CLIENT_ID and _CLIENT_SECRET to connect {}",
                provider_id.to_uppercase(),
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
    if let Some(name) = &input.name {
        if name.trim().is_empty() || name.chars().count() > credentials::MAX_NAME_LEN {
            errors.push(FieldError::new("name", "must be 1 to 200 characters"));
        }
    }
    let mut tenant = input.tenant.clone();
    if let Some(id) = &input.credential_id {
        let (existing, _) = credentials::access::authorize(ctx, who, id, Access::Manage).await?;
        if existing.provider != provider.id {
            return Err(Error::NotFound);
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
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    start(
        ctx,
        provider,
        StartRequest {
            org_id: who.org_id.clone(),
            actor: who.actor(),
            owner: who.user_id.clone(),
            name: input.name.map(|n| n.trim().to_owned()),
            return_to: input.return_to,
            credential_id: input.credential_id.map(|id| id.to_lowercase()),
            tenant,
        },
    )
    .await
}

/// Creates the pending authorization and the provider's authorize URL.
pub async fn start(ctx: &Context, provider: &Provider, req: StartRequest) -> Result<Started, Error> {
    let settings = provider.oauth.as_ref().ok_or(Error::NotFound)?;
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
    let mut request = client
        .authorize_url(move || CsrfToken::new(token))
        .add_scopes(settings.scopes.iter().map(|s| Scope::new(s.clone())))
        .set_pkce_challenge(challenge);
    for (k, v) in &settings.authorize_params {
        request = request.add_extra_param(k.clone(), v.clone());
    }
    let (url, _) = request.url();

    let mut payload = SecretMap::default();
    payload.insert("verifier", SecretString::from(verifier.secret().clone()));
    payload.insert("actor", SecretString::from(req.actor));
    for (k, v) in [
        ("owner", req.owner),
        ("name", req.name),
        ("return_to", req.return_to),
        ("credential_id", req.credential_id),
        ("tenant", req.tenant),
    ] {
        if let Some(v) = v {
            payload.insert(k, SecretString::from(v));
        }
    }
    let subject = format!("state:{state_hash}");
    let (payload_ct, key_version) = ctx.vault.seal(&req.org_id, &subject, &[("state", &payload)]).await?;
    let expires_at = ctx.now() + STATE_TTL_SECS;
    let pending = ctx
        .store
        .insert_oauth_state(
            &state_hash,
            &OAuthStateRow {
                org_id: req.org_id,
                provider: provider.id.clone(),
                payload_ct,
                key_version,
                expires_at,
            },
            ctx.config.max_pending_oauth,
        )
        .await;
    match pending {
        Ok(()) => {}
        Err(StoreError::QuotaExceeded { limit }) => {
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
pub async fn finish(ctx: &Context, provider: &Provider, query: CallbackQuery) -> Finished {
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
    let result = complete(ctx, provider, &row, &payload, &query).await;
    if let Err(e) = &result {
        tracing::info!(provider = %provider.id, code = e.code, error = %e.message, "OAuth connection failed");
    }
    Finished { return_to, result }
}

async fn complete(
    ctx: &Context,
    provider: &Provider,
    row: &OAuthStateRow,
    payload: &SecretMap,
    query: &CallbackQuery,
) -> Result<String, OAuthError> {
    let settings = provider
        .oauth
        .as_ref()
        .ok_or_else(|| OAuthError::new("oauth_state_invalid", "unknown provider"))?;
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
    let tenant = get(payload, "tenant");
    let redirect = redirect_uri(ctx, &provider.id);
    let tokens = exchange_code(&ctx.http, settings, tenant.as_deref(), &redirect, code, &verifier).await?;
    let identity = fetch_identity(&ctx.http, settings, &tokens.access_token).await?;
    let actor = get(payload, "actor").unwrap_or_default();
    let grant = Grant {
        org_id: &row.org_id,
        provider,
        actor: &actor,
        name: get(payload, "name"),
        credential_id: get(payload, "credential_id"),
        owner: get(payload, "owner"),
        tenant,
        tokens,
        identity,
    };
    credentials::connect(ctx, grant).await.map_err(|e| match e {
        Error::QuotaExceeded { limit, .. } => OAuthError::new(
            "quota_exceeded",
            format!("the organization already has {limit} {} credentials", provider.id),
        ),
        Error::Conflict(code, message) => OAuthError::new(code, message),
        Error::NotFound => OAuthError::new("not_found", "the credential to re-authorize no longer exists"),
        other => {
            tracing::error!(error = %other, source = ?std::error::Error::source(&other), "storing an OAuth connection failed");
            OAuthError::new("internal", "credgate could not store the connection")
        }
    })
}
