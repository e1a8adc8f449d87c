//! Hosted-page sessions: a platform's backend opens one for one of its users
//! (`connect` or `manage`), sends the person's browser to the URL, and the
//! pages act as that user — through the same domain calls and the same
//! sharing rules as the API, audited as `user:{id}`.
//!
//! The URL carries a one-time token; opening it trades the token for a
//! cookie (both stored only as SHA-256 hashes). A session lasts at most an
//! hour.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use secrecy::{ExposeSecret, SecretString};

use crate::api_tokens::token_hash;
use crate::context::Context;
use crate::credentials::{self, access};
use crate::error::Error;
use crate::ids::{CredentialId, OrgId, UserId};
use crate::model::{Access, Principal, Role};
use crate::oauth::return_to::return_to_allowed;
use crate::providers::FieldError;
use crate::store::{NewPageSession, PageSessionRow, StoreError};

/// Longest a session may last.
pub const MAX_TTL_SECS: i64 = 3600;
/// A session's life when the request names none.
pub const DEFAULT_TTL_SECS: i64 = 1800;
/// Sessions an organization may have open (unexpired) at once.
pub const MAX_OPEN_PER_ORG: i64 = 10_000;

/// What the pages are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Connect a new account (or re-enter one credential).
    Connect,
    /// See and manage the user's credentials.
    Manage,
}

impl Purpose {
    /// The wire name, also the page's path.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Manage => "manage",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Connect, Self::Manage].into_iter().find(|p| p.as_str() == s)
    }
}

/// What the calling backend asks for.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// As sent: parsed here, where its errors join the others.
    pub user_id: Option<String>,
    pub purpose: Purpose,
    /// Provider ids offered; `None`: every provider.
    pub providers: Option<Vec<String>>,
    pub credential_id: Option<CredentialId>,
    pub return_to: Option<String>,
    pub expires_in: Option<i64>,
}

/// A created session: the one-time token for its URL (shown once).
pub struct Opened {
    pub token: SecretString,
    pub purpose: Purpose,
    pub expires_at: i64,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("purpose", &self.purpose)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A live session, as the pages see it.
#[derive(Debug, Clone)]
pub struct PageSession {
    pub id: String,
    pub org_id: OrgId,
    pub user_id: UserId,
    pub purpose: Purpose,
    pub providers: Option<Vec<String>>,
    pub credential_id: Option<CredentialId>,
    pub return_to: Option<String>,
    /// Every state-changing request of the page must carry it.
    pub csrf_token: String,
    pub expires_at: i64,
}

impl PageSession {
    /// Who the pages act as: the session's user, with a member's rights
    /// (sharing decides the rest), named by the session in denial logs.
    pub fn principal(&self) -> Principal {
        Principal {
            org_id: self.org_id.clone(),
            key_id: format!("session:{}", self.id),
            role: Role::Member,
            user_id: Some(self.user_id.clone()),
        }
    }

    /// May this session offer `provider`?
    pub fn offers(&self, provider: &str) -> bool {
        self.providers
            .as_ref()
            .is_none_or(|p| p.iter().any(|id| id == provider))
    }

    /// Does `token` match this session's CSRF token (in constant time)?
    pub fn csrf_ok(&self, token: &str) -> bool {
        use subtle::ConstantTimeEq;
        !token.is_empty() && bool::from(token.as_bytes().ct_eq(self.csrf_token.as_bytes()))
    }

    fn from_row(row: PageSessionRow) -> Result<Self, Error> {
        let purpose = Purpose::parse(&row.purpose)
            .ok_or_else(|| Error::internal(anyhow::anyhow!("page session {} has purpose {:?}", row.id, row.purpose)))?;
        let providers = row.providers;
        Ok(Self {
            id: row.id,
            org_id: row.org_id,
            user_id: row.user_id,
            purpose,
            providers,
            credential_id: row.credential_id,
            return_to: row.return_to,
            csrf_token: row.csrf_token,
            expires_at: row.expires_at,
        })
    }
}

fn random_token(prefix: &str) -> String {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw))
}

/// Opens a session for `input.user_id` (or the caller's own user). Admins
/// open sessions for any user of their organization, members only for
/// themselves, engines not at all.
pub async fn create(ctx: &Context, who: &Principal, input: NewSession) -> Result<Opened, Error> {
    if !matches!(who.role, Role::Admin | Role::Member) {
        access::deny(ctx, who, None, "role").await?;
        return Err(Error::Forbidden);
    }
    let mut errors = Vec::new();
    let user = match (&input.user_id, &who.user_id) {
        (Some(asked), own) => {
            if who.role == Role::Member && own.as_deref() != Some(asked.as_str()) {
                access::deny(ctx, who, None, "session for another user").await?;
                return Err(Error::Forbidden);
            }
            credentials::check_user_id("user_id", asked)
                .map_err(|e| errors.push(e))
                .ok()
        }
        (None, Some(own)) => Some(own.clone()),
        (None, None) => {
            errors.push(FieldError::new("user_id", "is required: this API key has no user"));
            None
        }
    };
    if let Some(providers) = &input.providers {
        if providers.is_empty() {
            errors.push(FieldError::new(
                "providers",
                "must name at least one provider, or be left out for all",
            ));
        }
        if let Some(unknown) = providers.iter().find(|p| ctx.registry.get(p).is_none()) {
            errors.push(FieldError::new(
                "providers",
                format!(
                    "{:?} is not a known provider",
                    unknown.chars().take(64).collect::<String>()
                ),
            ));
        }
    }
    if let Some(r) = &input.return_to {
        if !return_to_allowed(&ctx.config.allowed_return_urls, r) {
            errors.push(FieldError::new(
                "return_to",
                "must start with one of CREDGATE_ALLOWED_RETURN_URLS",
            ));
        }
    }
    let ttl = input.expires_in.unwrap_or(DEFAULT_TTL_SECS);
    if !(60..=MAX_TTL_SECS).contains(&ttl) {
        errors.push(FieldError::new(
            "expires_in",
            format!("must be 60 to {MAX_TTL_SECS} seconds"),
        ));
    }
    let (Some(user), true) = (user, errors.is_empty()) else {
        return Err(Error::Validation(errors));
    };
    let row = PageSessionRow {
        id: uuid::Uuid::new_v4().to_string(),
        org_id: who.org_id.clone(),
        user_id: user,
        purpose: input.purpose.as_str().to_owned(),
        providers: input.providers,
        credential_id: input.credential_id,
        return_to: input.return_to,
        csrf_token: random_token(""),
        expires_at: ctx.now() + ttl,
    };
    if let Some(id) = &row.credential_id {
        // The session's user must be able to act on it: re-enter it (connect)
        // or see it (manage). Otherwise it does not exist for them.
        let needed = match input.purpose {
            Purpose::Connect => Access::Manage,
            Purpose::Manage => Access::View,
        };
        let session = PageSession::from_row(row.clone())?;
        let (credential, _) = access::authorize(ctx, &session.principal(), id, needed).await?;
        if !session.offers(&credential.provider) {
            return Err(Error::field(
                "credential_id",
                "is of a provider this session does not offer",
            ));
        }
    }
    let token = random_token("cgs_");
    let stored = ctx
        .store
        .insert_page_session(
            &NewPageSession {
                row: &row,
                url_token_hash: &token_hash(&token),
                created_by: &who.actor(),
                api_key_id: &who.key_id,
            },
            MAX_OPEN_PER_ORG,
        )
        .await;
    match stored {
        Ok(()) => {}
        Err(StoreError::QuotaExceeded { limit, .. }) => {
            return Err(Error::TooManyPending(format!(
                "the organization has {limit} hosted-page sessions open; they expire within an hour"
            )))
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(session = %row.id, purpose = %row.purpose, user = %row.user_id, "page session created");
    Ok(Opened {
        token: SecretString::from(token),
        purpose: input.purpose,
        expires_at: row.expires_at,
    })
}

/// Trades a URL token for a cookie value, once, on the page of its own
/// `purpose`. `None`: the token is unknown, already used, expired or for the
/// other page (then it stays unused; the page says so in words).
pub async fn enter(
    ctx: &Context,
    url_token: &str,
    purpose: Purpose,
) -> Result<Option<(PageSession, SecretString)>, Error> {
    let cookie = random_token("");
    let Some(row) = ctx
        .store
        .open_page_session(&token_hash(url_token), purpose.as_str(), &token_hash(&cookie))
        .await?
    else {
        return Ok(None);
    };
    Ok(Some((PageSession::from_row(row)?, SecretString::from(cookie))))
}

/// The live session a cookie value belongs to, if any.
pub async fn current(ctx: &Context, cookie: &SecretString) -> Result<Option<PageSession>, Error> {
    ctx.store
        .page_session(&token_hash(cookie.expose_secret()))
        .await?
        .map(PageSession::from_row)
        .transpose()
}
