//! Provider files as written: what `load` reads before it checks them
//! and turns them into [`Provider`](super::Provider)s.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::AuthKind;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) display_name: String,
    pub(super) auth_types: Vec<RawAuthType>,
    pub(super) authorization_url: Option<String>,
    pub(super) token_url: Option<String>,
    pub(super) userinfo_url: Option<String>,
    pub(super) revocation_url: Option<String>,
    pub(super) issuer: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    #[serde(default)]
    pub(super) scopes: Vec<String>,
    pub(super) tenant: Option<String>,
    pub(super) api_base_url: Option<String>,
    pub(super) client_auth: Option<String>,
    #[serde(default)]
    pub(super) authorize_params: BTreeMap<String, String>,
    pub(super) identity: Option<RawIdentity>,
    pub(super) probe: Option<super::probe::RawProbe>,
    /// How the gateway authenticates, when not as the probe does.
    pub(super) proxy: Option<super::proxy::RawProxy>,
    pub(super) generic: Option<String>,
    /// Between requested scopes in the authorize URL (Slack: `,`).
    pub(super) scope_separator: Option<String>,
    /// The token request's body: `form` (RFC 6749) or `json` (Notion).
    pub(super) token_request_format: Option<String>,
    /// PKCE on the authorize and token requests (default on).
    pub(super) pkce: Option<bool>,
    /// Headers for the identity request (`Notion-Version`).
    #[serde(default)]
    pub(super) identity_headers: BTreeMap<String, String>,
    /// Token-endpoint `error` codes that mean the grant is gone, beside
    /// `invalid_grant` (Slack: `invalid_refresh_token`).
    #[serde(default)]
    pub(super) reauth_errors: Vec<String>,
    /// How long a refresh token lasts, in days, when the token response
    /// does not say (`refresh_token_expires_in`).
    pub(super) refresh_token_lifetime_days: Option<i64>,
    /// `absolute` (from the first grant), `sliding` (renewed by each
    /// refresh) or `inactivity` (lapses after that long without a refresh).
    pub(super) refresh_token_lifetime: Option<String>,
    /// A JSON pointer to the error code of a token endpoint whose errors
    /// are not RFC 6749's `{"error": …}` (HubSpot: `/status`).
    pub(super) token_error_pointer: Option<String>,
    /// `mcp`: the authorization server is discovered from the server URL a
    /// person gives (RFC 9728, RFC 8414) and credgate registers itself
    /// there (RFC 7591); no fixed endpoints or client.
    pub(super) discovery: Option<String>,
    /// Headers the gateway adds to every call it makes for a credential of
    /// this provider (`Notion-Version`, `anthropic-version`).
    #[serde(default)]
    pub(super) proxy_headers: BTreeMap<String, String>,
    /// An AWS provider's service name for SigV4 (`ses`).
    pub(super) aws_service: Option<String>,
    /// An AWS provider's endpoint, `{region}` substituted (`https://email.{region}.amazonaws.com/`).
    pub(super) aws_endpoint: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuthType {
    #[serde(rename = "type")]
    pub(super) kind: AuthKind,
    #[serde(default)]
    pub(super) fields: Vec<RawField>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawField {
    pub(super) name: String,
    pub(super) label: String,
    #[serde(default)]
    pub(super) secret: bool,
    #[serde(default)]
    pub(super) required: bool,
    #[serde(rename = "type", default = "default_kind")]
    pub(super) kind: String,
    pub(super) min: Option<i64>,
    pub(super) max: Option<i64>,
    pub(super) pattern: Option<String>,
    pub(super) max_length: Option<usize>,
    pub(super) default: Option<toml::Value>,
    #[serde(default)]
    pub(super) values: Vec<String>,
}

fn default_kind() -> String {
    "string".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    /// `userinfo` (the default: a GET of `userinfo_url`) or
    /// `token_response` (the token endpoint's answer names the account).
    pub(super) source: Option<String>,
    pub(super) id: Vec<String>,
    #[serde(default)]
    pub(super) email: Vec<String>,
    #[serde(default)]
    pub(super) display_name: Vec<String>,
}
