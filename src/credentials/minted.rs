//! Credentials without a person (`oauth2_client_credentials`,
//! `service_account`): credgate mints their access tokens from their own
//! sealed fields — on create, on test, and again before expiry through the
//! same lease and single flight as an OAuth refresh — so the engine gets a
//! token and never the secret that mints it.

use std::sync::Arc;

use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::context::Context;
use crate::error::Error;
use crate::model::AuthKind;
use crate::oauth_client::{client_credentials, jwt_bearer, OAuthError, ServiceAccountKey, TokenSet};
use crate::providers::{ClientAuth, FieldError, IdentityMap, IdentitySource, OAuthSettings, Provider, TokenBody};

/// Who the minting credential is: the client id, or the service account.
#[derive(Debug, Clone)]
pub struct Minter {
    pub account_id: String,
    pub account_email: Option<String>,
}

fn text<'a>(fields: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    fields
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
}

fn scopes(fields: &Map<String, Value>, default: &[String]) -> Vec<String> {
    match text(fields, "scopes") {
        Some(s) => s
            .split([' ', ','])
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        None => default.to_vec(),
    }
}

/// The settings a client credentials grant goes with: the provider file's
/// OAuth settings (Microsoft), else a plain RFC 6749 client for the
/// credential's own `token_url`.
fn settings(provider: &Provider, fields: &Map<String, Value>) -> OAuthSettings {
    let mut settings = match &provider.oauth {
        Some(o) => o.clone(),
        None => OAuthSettings {
            authorization_url: String::new(),
            token_url: String::new(),
            userinfo_url: String::new(),
            revocation_url: None,
            issuer: None,
            client_id: String::new(),
            client_secret: SecretString::from(""),
            scopes: Vec::new(),
            client_auth: ClientAuth::Body,
            authorize_params: Default::default(),
            identity: IdentityMap {
                id: Vec::new(),
                email: Vec::new(),
                display_name: Vec::new(),
                source: IdentitySource::Userinfo,
                headers: Default::default(),
            },
            tenant: None,
            scope_separator: " ".into(),
            token_body: TokenBody::Form,
            pkce: false,
            reauth_errors: Vec::new(),
            token_error_pointer: None,
            dynamic_registration: false,
            resource: None,
            refresh_lifetime: None,
        },
    };
    if let Some(url) = text(fields, "token_url") {
        settings.token_url = url.to_owned();
    }
    settings.client_id = text(fields, "client_id").unwrap_or_default().to_owned();
    settings.client_secret = SecretString::from(text(fields, "client_secret").unwrap_or_default().to_owned());
    settings.scopes = scopes(fields, &[]);
    if let Some(audience) = text(fields, "audience") {
        settings.resource = Some(audience.to_owned());
    }
    settings
}

/// Checks what only minting can tell before anything is stored: the key
/// file's shape (never echoed), the token URL's reach.
pub fn check(ctx: &Context, provider: &Provider, kind: AuthKind, fields: &Map<String, Value>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    match kind {
        AuthKind::ServiceAccount => match text(fields, "service_account_json").map(ServiceAccountKey::parse) {
            Some(Ok(key)) => {
                if let Ok(url) = url::Url::parse(&key.token_uri) {
                    if ctx.probes.egress.check_url(&url).is_err() {
                        errors.push(FieldError::new(
                            "fields.service_account_json",
                            "its `token_uri` is an address credgate is not allowed to reach",
                        ));
                    }
                }
            }
            Some(Err(message)) => errors.push(FieldError::new("fields.service_account_json", message)),
            None => errors.push(FieldError::new("fields.service_account_json", "is required")),
        },
        AuthKind::Oauth2ClientCredentials => {
            let s = settings(provider, fields);
            let url = s.with_tenant(&s.token_url, text(fields, "tenant"));
            match url::Url::parse(&url) {
                Ok(u) if ctx.probes.egress.check_url(&u).is_ok() => {}
                Ok(_) => errors.push(FieldError::new(
                    "fields.token_url",
                    "is an address credgate is not allowed to reach",
                )),
                Err(_) => errors.push(FieldError::new(
                    "fields.token_url",
                    "must be an absolute http or https URL",
                )),
            }
        }
        _ => {}
    }
    errors
}

/// Mints an access token for a credential of `kind` with `fields` (public
/// and secret, opened).
pub async fn mint(
    ctx: &Context,
    provider: &Provider,
    kind: AuthKind,
    fields: &Map<String, Value>,
) -> Result<(TokenSet, Minter), OAuthError> {
    match kind {
        AuthKind::Oauth2ClientCredentials => {
            let settings = Arc::new(settings(provider, fields));
            let tenant = text(fields, "tenant");
            let tokens = client_credentials(&ctx.guarded_http, &settings, tenant).await?;
            Ok((
                tokens,
                Minter {
                    account_id: settings.client_id.clone(),
                    account_email: None,
                },
            ))
        }
        AuthKind::ServiceAccount => {
            let key = text(fields, "service_account_json")
                .map(ServiceAccountKey::parse)
                .and_then(Result::ok)
                .ok_or_else(|| OAuthError::new("needs_reauth", "the key file is not valid; replace it"))?;
            let scopes = scopes(fields, &[]);
            let tokens = jwt_bearer(&ctx.guarded_http, &key, &scopes, text(fields, "subject"), ctx.now()).await?;
            Ok((
                tokens,
                Minter {
                    account_id: key.client_email.clone(),
                    account_email: Some(key.client_email),
                },
            ))
        }
        _ => Err(OAuthError::new(
            "provider_error",
            "this credential does not mint tokens",
        )),
    }
}

/// The field a credential's minting failure is about, for a create's 422.
pub fn failing_field(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::ServiceAccount => "fields.service_account_json",
        _ => "fields.client_secret",
    }
}

/// A minted credential's first token, from the fields about to be stored.
pub(super) struct FirstToken {
    pub tokens: super::OAuthTokens,
    pub expires_at: Option<i64>,
    pub refresh_after: Option<i64>,
    pub scopes: Option<Vec<String>>,
    pub minter: Minter,
}

/// Mints before anything is stored: fields the token endpoint refuses are
/// a 422 on the field at fault, an endpoint that cannot answer a 503.
pub(super) async fn mint_first(
    ctx: &Context,
    provider_id: &str,
    kind: AuthKind,
    validated: &crate::providers::ValidatedFields,
) -> Result<FirstToken, Error> {
    let provider = ctx.registry.get(provider_id).ok_or(Error::NotFound)?;
    let mut fields = validated.public.clone();
    for (name, value) in &validated.secret.0 {
        fields.insert(
            name.clone(),
            Value::String(secrecy::ExposeSecret::expose_secret(value).to_owned()),
        );
    }
    let errors = check(ctx, provider, kind, &fields);
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    match mint(ctx, provider, kind, &fields).await {
        Ok((set, minter)) => {
            let lifetime = set.expires_in.map(|d| d.as_secs());
            let expires_at = lifetime.map(|l| ctx.now() + l as i64);
            Ok(FirstToken {
                tokens: super::OAuthTokens {
                    access_token: set.access_token,
                    refresh_token: None,
                },
                expires_at,
                refresh_after: crate::oauth_client::schedule(expires_at, lifetime, ctx.config.refresh_lead_secs as i64),
                scopes: set.scopes,
                minter,
            })
        }
        Err(e) if e.code == "needs_reauth" => Err(Error::Validation(vec![FieldError::new(
            failing_field(kind),
            format!("the token endpoint refused these credentials ({})", e.message),
        )])),
        Err(e) => Err(Error::ProviderUnavailable {
            message: e.message,
            retry_after_secs: e.retry_after.unwrap_or(5),
        }),
    }
}
