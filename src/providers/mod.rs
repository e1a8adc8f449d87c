//! The provider registry: `providers/*.toml` files → typed, validated
//! definitions. A new OAuth provider is a new file, not new code.

mod fields;
mod generic;
mod load;
mod overrides;
mod probe;
mod proxy;
mod raw;

pub use fields::{hostname_ok, validate as validate_fields, FieldDef, FieldError, FieldKind, ValidatedFields};
pub use generic::{scheme_fields, validate as validate_for, Generic, MAX_KV_BYTES, MAX_KV_FIELDS};
pub use load::{load_catalog, load_dir, ProviderFileError};
pub use probe::{fill, placeholders, AccountPointers, ProbeAuth, ProbeSpec};
pub use proxy::{authority_end, ProxySpec};

use std::collections::BTreeMap;

use secrecy::SecretString;
use url::Url;

pub use crate::model::AuthKind;

/// One auth type of a provider and the fields it takes.
#[derive(Debug, Clone)]
pub struct AuthType {
    /// Which auth type.
    pub kind: AuthKind,
    /// Its fields, in display order.
    pub fields: Vec<FieldDef>,
}

/// How the client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body.
    Body,
    /// HTTP Basic.
    Basic,
    /// A public client: `client_id` in the body, no secret (an MCP
    /// registration that got none).
    None,
}

/// Which userinfo JSON keys carry the account's identity (first present wins).
#[derive(Debug, Clone)]
pub struct IdentityMap {
    /// Stable account id (`sub`, `id`). Each entry is a top-level key, or a
    /// JSON pointer into a nested object (`/team/id`); the first present wins.
    pub id: Vec<String>,
    /// E-mail address.
    pub email: Vec<String>,
    /// Display name.
    pub display_name: Vec<String>,
    /// Which answer names the account.
    pub source: IdentitySource,
    /// Headers of the identity request (`Notion-Version`).
    pub headers: BTreeMap<String, String>,
}

/// Which answer names the connected account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IdentitySource {
    /// A GET of the provider's `userinfo_url` with the new access token.
    #[default]
    Userinfo,
    /// The token endpoint's own answer (Slack's `team`, Notion's workspace).
    TokenResponse,
}

/// How the token request's parameters are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenBody {
    /// `application/x-www-form-urlencoded` (RFC 6749).
    #[default]
    Form,
    /// A JSON object (Notion).
    Json,
}

/// OAuth settings of a provider whose file declares `oauth2`.
#[derive(Clone)]
pub struct OAuthSettings {
    /// Authorization endpoint, `{tenant}` already substituted with the default.
    pub authorization_url: String,
    /// Token endpoint (may contain `{tenant}`).
    pub token_url: String,
    /// Userinfo / identity endpoint.
    pub userinfo_url: String,
    /// Token revocation endpoint (RFC 7009), when the provider has one.
    pub revocation_url: Option<String>,
    /// Expected `iss` on the callback, when the provider sends one.
    pub issuer: Option<String>,
    /// Client id (empty: not configured).
    pub client_id: String,
    /// Client secret.
    pub client_secret: SecretString,
    /// Scopes requested.
    pub scopes: Vec<String>,
    /// Client authentication at the token endpoint.
    pub client_auth: ClientAuth,
    /// Extra authorize-request parameters (`access_type=offline`, …).
    pub authorize_params: BTreeMap<String, String>,
    /// Where the identity is in the userinfo response.
    pub identity: IdentityMap,
    /// Default tenant (`common`) substituted for `{tenant}`.
    pub tenant: Option<String>,
    /// Between scopes in the authorize URL (`" "`; Slack: `","`).
    pub scope_separator: String,
    /// The token request's body format.
    pub token_body: TokenBody,
    /// PKCE on authorize and token requests.
    pub pkce: bool,
    /// Token-endpoint errors that mean the grant is gone, beside `invalid_grant`.
    pub reauth_errors: Vec<String>,
    /// Where a token endpoint that does not answer RFC 6749 errors puts its
    /// error code (HubSpot: `/status`).
    pub token_error_pointer: Option<String>,
    /// The endpoints are discovered and the client registered per server
    /// (`discovery = "mcp"`): no fixed URLs and no operator's app.
    pub dynamic_registration: bool,
    /// The resource (RFC 8707) that tokens are asked for: an MCP server's,
    /// set per connection; `None` for a provider file's.
    pub resource: Option<String>,
    /// How long a refresh token lasts when the token response does not say.
    pub refresh_lifetime: Option<RefreshLifetime>,
}

/// A refresh token's declared lifetime (`refresh_token_lifetime_days`,
/// `refresh_token_lifetime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshLifetime {
    pub secs: i64,
    /// Sliding or after inactivity: each refresh starts it again.
    /// Absolute: it runs from the first grant.
    pub renewed: bool,
}

impl OAuthSettings {
    /// When a refresh token ends, for tokens issued at `now`: what the
    /// token response said (`refresh_token_expires_in`), else the declared
    /// lifetime (an absolute one counted from the first grant: `before`
    /// stays on a refresh), else what was known `before`.
    pub fn refresh_end(&self, said: Option<u64>, now: i64, before: Option<i64>, first_grant: bool) -> Option<i64> {
        refresh_end(self.refresh_lifetime, said, now, before, first_grant)
    }
}

/// [`OAuthSettings::refresh_end`] for a declared `lifetime`.
pub fn refresh_end(
    lifetime: Option<RefreshLifetime>,
    said: Option<u64>,
    now: i64,
    before: Option<i64>,
    first_grant: bool,
) -> Option<i64> {
    if let Some(secs) = said {
        return Some(now.saturating_add(i64::try_from(secs).unwrap_or(i64::MAX)));
    }
    match lifetime {
        Some(l) if l.renewed || first_grant => Some(now + l.secs),
        _ if first_grant => None,
        _ => before,
    }
}

impl std::fmt::Debug for OAuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthSettings")
            .field("authorization_url", &self.authorization_url)
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[REDACTED]")
            .finish_non_exhaustive()
    }
}

impl OAuthSettings {
    /// `url` with `{tenant}` replaced by `tenant` or the default.
    pub fn with_tenant(&self, url: &str, tenant: Option<&str>) -> String {
        let tenant = tenant.or(self.tenant.as_deref()).unwrap_or("common");
        url.replace("{tenant}", tenant)
    }
}

/// One provider definition.
#[derive(Debug)]
pub struct Provider {
    /// Stable id (`google`, `sftp`, …): the file's name.
    pub id: String,
    /// Human name.
    pub display_name: String,
    /// Auth types, in file order.
    pub auth_types: Vec<AuthType>,
    /// OAuth settings when an auth type is `oauth2`.
    pub oauth: Option<OAuthSettings>,
    /// API base URL (OpenAI, Anthropic, Telegram, and `{api_base_url}` in a probe).
    pub api_base_url: Option<Url>,
    /// A declared "who am I" probe (`[probe]`).
    pub probe: Option<ProbeSpec>,
    /// How the gateway authenticates, when not as the probe does (`[proxy]`).
    pub proxy: Option<ProxySpec>,
    /// A generic provider (`custom`, `http`), checked partly in code.
    pub generic: Option<Generic>,
    /// Headers the gateway adds to every call (`Notion-Version`).
    pub proxy_headers: BTreeMap<String, String>,
    /// An AWS provider's SigV4 service name (`ses`).
    pub aws_service: Option<String>,
    /// An AWS provider's endpoint with `{region}`.
    pub aws_endpoint: Option<String>,
}

impl Provider {
    /// The definition of one auth type, if the provider has it.
    pub fn auth_type(&self, kind: AuthKind) -> Option<&AuthType> {
        self.auth_types.iter().find(|a| a.kind == kind)
    }
}

/// All providers, by id.
#[derive(Debug, Default)]
pub struct Registry {
    providers: BTreeMap<String, Provider>,
}

impl Registry {
    /// Builds a registry from loaded providers.
    pub fn new(providers: Vec<Provider>) -> Self {
        Self {
            providers: providers.into_iter().map(|p| (p.id.clone(), p)).collect(),
        }
    }

    /// One provider.
    pub fn get(&self, id: &str) -> Option<&Provider> {
        self.providers.get(id)
    }

    /// Every provider, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = &Provider> {
        self.providers.values()
    }
}
