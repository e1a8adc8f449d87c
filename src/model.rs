//! The domain's vocabulary, shared by every layer and free of I/O: how a
//! credential authenticates, the states it can be in (with the transitions
//! written down in one place), and what an API key's role may do.

use serde::{Deserialize, Serialize};

use crate::ids::{OrgId, UserId};

/// How a credential of a provider authenticates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    /// Connected through the OAuth authorize/callback flow.
    Oauth2,
    /// A single API key or bot token.
    ApiKey,
    /// User name and password.
    UserPassword,
    /// A private key file (SSH).
    KeyFile,
    /// A client id and secret that mint access tokens (RFC 6749 §4.4).
    Oauth2ClientCredentials,
    /// A Google service account key file that signs JWT assertions (RFC 7523).
    ServiceAccount,
    /// An AWS access key that signs requests (Signature Version 4).
    AwsSigv4,
}

impl AuthKind {
    /// The wire name (`oauth2`, `api_key`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthKind::Oauth2 => "oauth2",
            AuthKind::ApiKey => "api_key",
            AuthKind::UserPassword => "user_password",
            AuthKind::KeyFile => "key_file",
            AuthKind::Oauth2ClientCredentials => "oauth2_client_credentials",
            AuthKind::ServiceAccount => "service_account",
            AuthKind::AwsSigv4 => "aws_sigv4",
        }
    }

    /// Does credgate mint this kind's access tokens itself, without a person
    /// (and mint them again before they expire)?
    pub fn is_minted(self) -> bool {
        matches!(self, AuthKind::Oauth2ClientCredentials | AuthKind::ServiceAccount)
    }

    /// Does this kind hold an access token that is renewed (refreshed or
    /// minted again) before it expires?
    pub fn has_tokens(self) -> bool {
        self == AuthKind::Oauth2 || self.is_minted()
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Oauth2,
            Self::ApiKey,
            Self::UserPassword,
            Self::KeyFile,
            Self::Oauth2ClientCredentials,
            Self::ServiceAccount,
            Self::AwsSigv4,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Where a credential stands.
///
/// | from | event | to |
/// |---|---|---|
/// | — | created with fields, or connected through OAuth | `active` |
/// | any | re-authorized through OAuth | `active` |
/// | any but `needs_reauth` | refresh succeeded | `active` |
/// | any | the provider says the grant is dead (`invalid_grant`, …) | `needs_reauth` |
/// | `active`, `expired` | refresh failed for now, token still valid | `active` |
/// | `active`, `expired` | refresh failed for now, token expired | `expired` |
/// | any but `needs_reauth` | connection test passed | `active` |
/// | any but `needs_reauth` | connection test failed | `error` |
///
/// Only a new grant leaves `needs_reauth`, and only `needs_reauth` stops
/// background refresh: a failed connection test (`error`) never does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CredentialStatus {
    /// Usable.
    Active,
    /// The access token expired and could not be refreshed yet.
    Expired,
    /// The grant is gone: a person must re-authorize.
    NeedsReauth,
    /// The last connection test failed.
    Error,
}

impl CredentialStatus {
    /// Every status, in display order.
    pub const ALL: [Self; 4] = [Self::Active, Self::Expired, Self::NeedsReauth, Self::Error];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Expired => "expired",
            Self::NeedsReauth => "needs_reauth",
            Self::Error => "error",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// A new credential: created with fields, or connected through OAuth.
    pub const NEW: Self = Self::Active;
    /// After a new grant (connected again, or re-authorized), from any status.
    pub const AFTER_GRANT: Self = Self::Active;
    /// After a refresh that succeeded. The store writes it only over the
    /// version it read, so a grant that died meanwhile is not revived.
    pub const AFTER_REFRESH: Self = Self::Active;

    /// After a connection test.
    pub fn after_test(self, passed: bool) -> Self {
        match (self, passed) {
            (Self::NeedsReauth, _) => Self::NeedsReauth,
            (_, true) => Self::Active,
            (_, false) => Self::Error,
        }
    }

    /// After a failed refresh: `permanent` when the grant is dead.
    pub fn after_refresh_failure(permanent: bool, token_still_valid: bool) -> Self {
        match (permanent, token_still_valid) {
            (true, _) => Self::NeedsReauth,
            (false, true) => Self::Active,
            (false, false) => Self::Expired,
        }
    }
}

/// What a person should know of a credential at a glance: `needs_reauth`
/// (a person must connect it again: the grant is gone or its end has
/// passed), `failing` (refreshes or its connection test fail for now),
/// `expiring` (its grant or secret ends within the warning window), `ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = CredentialHealth)]
pub enum Health {
    Ok,
    Expiring,
    NeedsReauth,
    Failing,
}

/// The facts health is computed from.
#[derive(Debug, Clone, Copy)]
pub struct HealthFacts {
    pub status: CredentialStatus,
    pub refresh_failures: i64,
    /// The earliest of the grant's and the secret's ends, if any is known.
    pub ends_at: Option<i64>,
}

impl Health {
    /// Every health, worst first.
    pub const ALL: [Self; 4] = [Self::NeedsReauth, Self::Failing, Self::Expiring, Self::Ok];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Expiring => "expiring",
            Self::NeedsReauth => "needs_reauth",
            Self::Failing => "failing",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == s)
    }

    /// The health of a credential with `facts` at `now`, warning
    /// `warn_secs` before its end.
    pub fn of(facts: HealthFacts, now: i64, warn_secs: i64) -> Self {
        let ended = facts.ends_at.is_some_and(|t| t <= now);
        if facts.status == CredentialStatus::NeedsReauth || ended {
            Self::NeedsReauth
        } else if matches!(facts.status, CredentialStatus::Expired | CredentialStatus::Error)
            || facts.refresh_failures > 0
        {
            Self::Failing
        } else if facts.ends_at.is_some_and(|t| t <= now + warn_secs) {
            Self::Expiring
        } else {
            Self::Ok
        }
    }
}

/// What an API key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Everything.
    Admin,
    /// Manage credentials, but not resolve them.
    Member,
    /// The workflow engine: read, test and resolve.
    Engine,
}

impl Role {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Engine => "engine",
        }
    }

    /// Parses `admin`, `member` or `engine`.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Admin, Self::Member, Self::Engine]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

/// A level of access to a credential, ordered: `use` < `view` < `manage`.
///
/// | level | may |
/// |---|---|
/// | `use` | see it in listings (summary), have the engine resolve it, run its test |
/// | `view` | also read its whole record, its audit events and its usage |
/// | `manage` | also rename, re-enter fields, delete, refresh, re-authorize, share |
///
/// The owner and every admin have `manage`; so does every user on an
/// organization credential (no owner). Others have the higher of the team's
/// level and their own grant, or none: then the credential does not exist
/// for them (404).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Pick it for workflows; the engine may resolve it for this user.
    Use,
    /// Also read the whole record, audit and usage.
    View,
    /// Also change, delete, refresh and share it.
    Manage,
}

impl Access {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Use => "use",
            Self::View => "view",
            Self::Manage => "manage",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Use, Self::View, Self::Manage]
            .into_iter()
            .find(|a| a.as_str() == s)
    }
}

/// Who acts: an API key of one organization, for a user or for the
/// organization itself (a key without a user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub org_id: OrgId,
    pub key_id: String,
    pub role: Role,
    pub user_id: Option<UserId>,
}

impl Principal {
    /// Who to name in audit events and `created_by`.
    pub fn actor(&self) -> String {
        match &self.user_id {
            Some(user) => format!("user:{user}"),
            None => format!("api_key:{}", self.key_id),
        }
    }

    /// The same key acting for `user` (an engine resolving for a user).
    pub fn for_user(&self, user: Option<UserId>) -> Self {
        Self {
            user_id: user,
            ..self.clone()
        }
    }
}

/// Roles allowed to manage credentials.
pub const MANAGE: &[Role] = &[Role::Admin, Role::Member];
/// Roles allowed to read credentials and run probes.
pub const READ: &[Role] = &[Role::Admin, Role::Member, Role::Engine];
/// Roles allowed to resolve secrets.
pub const RESOLVE: &[Role] = &[Role::Engine];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_the_worst_of_status_failures_and_ends() {
        let facts = |status, refresh_failures, ends_at| HealthFacts {
            status,
            refresh_failures,
            ends_at,
        };
        let day = 86_400;
        let of = |f| Health::of(f, 1000 * day, 14 * day);
        assert_eq!(of(facts(CredentialStatus::Active, 0, None)), Health::Ok);
        assert_eq!(of(facts(CredentialStatus::Active, 0, Some(1015 * day))), Health::Ok);
        assert_eq!(
            of(facts(CredentialStatus::Active, 0, Some(1014 * day))),
            Health::Expiring
        );
        assert_eq!(
            of(facts(CredentialStatus::Active, 0, Some(1000 * day))),
            Health::NeedsReauth
        );
        assert_eq!(
            of(facts(CredentialStatus::Active, 2, Some(1003 * day))),
            Health::Failing
        );
        assert_eq!(of(facts(CredentialStatus::Error, 0, None)), Health::Failing);
        assert_eq!(of(facts(CredentialStatus::Expired, 0, None)), Health::Failing);
        assert_eq!(
            of(facts(CredentialStatus::NeedsReauth, 0, Some(1003 * day))),
            Health::NeedsReauth
        );
        for h in Health::ALL {
            assert_eq!(Health::parse(h.as_str()), Some(h));
        }
    }

    #[test]
    fn wire_names_round_trip() {
        for s in CredentialStatus::ALL {
            assert_eq!(CredentialStatus::parse(s.as_str()), Some(s));
        }
        for r in [Role::Admin, Role::Member, Role::Engine] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(AuthKind::parse("oauth2"), Some(AuthKind::Oauth2));
        assert_eq!(CredentialStatus::parse("Active"), None);
    }

    #[test]
    fn access_levels_are_ordered() {
        assert!(Access::Use < Access::View && Access::View < Access::Manage);
        assert_eq!(Access::parse("view"), Some(Access::View));
        assert_eq!(Access::parse("admin"), None);
    }

    #[test]
    fn only_a_new_grant_leaves_needs_reauth() {
        assert_eq!(
            CredentialStatus::NeedsReauth.after_test(true),
            CredentialStatus::NeedsReauth
        );
        assert_eq!(CredentialStatus::Error.after_test(true), CredentialStatus::Active);
        assert_eq!(CredentialStatus::Active.after_test(false), CredentialStatus::Error);
        assert_eq!(
            CredentialStatus::after_refresh_failure(false, false),
            CredentialStatus::Expired
        );
        assert_eq!(
            CredentialStatus::after_refresh_failure(true, true),
            CredentialStatus::NeedsReauth
        );
    }
}
