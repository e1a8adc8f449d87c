//! The domain's error: what a credential, OAuth or refresh operation can
//! fail with, in terms of the domain. Only `http/` turns it into a response.

use crate::providers::FieldError;
use crate::store::StoreError;
use crate::vault::VaultError;

/// Why a domain operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No such credential for this caller (or not theirs to see).
    #[error("not found")]
    NotFound,
    /// The caller's role may not do this.
    #[error("this API key's role may not do this")]
    Forbidden,
    /// Input that does not validate, by field.
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    /// A request that cannot be carried out as asked, with its own stable
    /// `code` (`invalid_path`, `not_proxyable`) and the fields at fault, if
    /// any.
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        errors: Vec<FieldError>,
    },
    /// The per-provider credential limit is reached.
    #[error("the organization already has {limit} credentials of provider {provider}")]
    QuotaExceeded { provider: String, limit: i64, count: i64 },
    /// The operation conflicts with the credential's state or a concurrent
    /// writer; `code` is stable (`conflict`, `account_mismatch`, …).
    #[error("{1}")]
    Conflict(&'static str, String),
    /// The grant is gone; a person must re-authorize.
    #[error("the credential must be re-authorized: {0}")]
    NeedsReauth(String),
    /// The provider failed for now; try again after `retry_after_secs`.
    #[error("{message}")]
    ProviderUnavailable { message: String, retry_after_secs: u64 },
    /// Too many of something pending for now (a rate, not a quota).
    #[error("{0}")]
    TooManyPending(String),
    /// The provider refused.
    #[error("the provider failed: {0}")]
    Provider(String),
    /// The database cannot be reached now, or gave the transaction up (a
    /// deadlock's victim); nothing was changed.
    #[error("the credential store is unavailable; try again shortly")]
    StoreUnavailable(#[source] StoreError),
    /// This replica lacks the master key that wraps the organization's
    /// data key (left behind during a key rotation): another replica, or
    /// this one once its keys are updated, can serve it.
    #[error(
        "this replica lacks master key {kid}, which wraps the organization's data key; \
         add it to CREDGATE_MASTER_KEYS (its /readyz says so too)"
    )]
    MasterKeyMissing { kid: String },
    /// The store, the vault or a bug.
    #[error("an internal error occurred")]
    Internal(#[source] anyhow::Error),
}

impl Error {
    /// A single-field validation error.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// Wraps anything as an internal error.
    pub fn internal(e: impl Into<anyhow::Error>) -> Self {
        Self::Internal(e.into())
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound,
            StoreError::QuotaExceeded { limit, count } => Self::QuotaExceeded {
                provider: String::new(),
                limit,
                count,
            },
            StoreError::Conflict | StoreError::KeyRotated => Self::Conflict(
                "conflict",
                "the credential changed meanwhile; read it again and retry".into(),
            ),
            StoreError::AccountTaken => Self::Conflict(
                "account_already_connected",
                "this account is already connected in another credential".into(),
            ),
            e @ (StoreError::Unavailable(_) | StoreError::GaveWay(_)) => Self::StoreUnavailable(e),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<VaultError> for Error {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Store(e) => e.into(),
            VaultError::Key(crate::crypto::KeyError::WrongMasterKey { kid }) => Self::MasterKeyMissing { kid },
            other => Self::Internal(other.into()),
        }
    }
}
