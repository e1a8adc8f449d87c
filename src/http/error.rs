//! The API error type: every failure a handler can return, rendered as an
//! RFC 9457 `application/problem+json` body with a stable machine `code`.
//! The error also rides in the response's extensions so one middleware logs
//! it inside the request span.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;
use crate::providers::FieldError;
use crate::store::StoreError;
use crate::vault::VaultError;

/// Everything an API call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("a valid API key is required")]
    Unauthorized,
    #[error("this API key's role may not do this")]
    Forbidden,
    #[error("not found")]
    NotFound,
    #[error("this route does not take that method")]
    MethodNotAllowed,
    #[error("the request has invalid fields")]
    Validation(Vec<FieldError>),
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        message: String,
        errors: Vec<FieldError>,
    },
    #[error("the request body is not valid JSON: {0}")]
    MalformedBody(String),
    #[error("the request body must be application/json")]
    UnsupportedMediaType,
    #[error("the request body is larger than {}", size(*limit))]
    PayloadTooLarge { limit: u64 },
    #[error("the organization has {count} credentials of provider {provider}, and its limit is {limit}")]
    QuotaExceeded { provider: String, limit: i64, count: i64 },
    #[error("too many requests")]
    RateLimited { retry_after_secs: u64 },
    #[error("{1}")]
    Conflict(&'static str, String),
    #[error("the provider failed: {0}")]
    Provider(String),
    #[error("{message}")]
    ProviderUnavailable { message: String, retry_after_secs: u64 },
    #[error("the credential must be re-authorized: {0}")]
    NeedsReauth(String),
    #[error("the credential store is unavailable; try again shortly")]
    StoreUnavailable(#[source] crate::store::StoreError),
    #[error("{0}")]
    MasterKeyMissing(String),
    #[error("an internal error occurred")]
    Internal(#[source] anyhow::Error),
}

/// `n` bytes in words: whole MiB or KiB when it is a whole number of them.
fn size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}

/// The problem+json body.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    pub code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldError>>,
}

/// What the logging middleware finds in a failed response's extensions.
#[derive(Debug, Clone)]
pub struct LoggedError {
    /// Machine code.
    pub code: &'static str,
    /// Full error chain (never containing secrets: no error carries one).
    pub message: String,
    /// 5xx errors are logged at error level.
    pub server_side: bool,
}

impl ApiError {
    /// A single-field validation error.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// HTTP status and stable code.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::Forbidden => (StatusCode::FORBIDDEN, "forbidden"),
            Self::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "validation_failed"),
            Self::Unprocessable { code, .. } => (StatusCode::UNPROCESSABLE_ENTITY, code),
            Self::MalformedBody(_) => (StatusCode::BAD_REQUEST, "malformed_body"),
            Self::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::QuotaExceeded { .. } => (StatusCode::CONFLICT, "quota_exceeded"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Self::Conflict(code, _) => (StatusCode::CONFLICT, code),
            Self::Provider(_) => (StatusCode::BAD_GATEWAY, "provider_error"),
            Self::NeedsReauth(_) => (StatusCode::CONFLICT, "needs_reauth"),
            Self::ProviderUnavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "provider_unavailable"),
            Self::StoreUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            Self::MasterKeyMissing(_) => (StatusCode::SERVICE_UNAVAILABLE, "master_key_missing"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound => Self::NotFound,
            Error::Forbidden => Self::Forbidden,
            Error::Validation(errors) => Self::Validation(errors),
            Error::Unprocessable { code, message, errors } => Self::Unprocessable { code, message, errors },
            Error::QuotaExceeded { provider, limit, count } => Self::QuotaExceeded { provider, limit, count },
            Error::Conflict(code, message) => Self::Conflict(code, message),
            Error::NeedsReauth(m) => Self::NeedsReauth(m),
            Error::ProviderUnavailable {
                message,
                retry_after_secs,
            } => Self::ProviderUnavailable {
                message,
                retry_after_secs,
            },
            Error::Provider(m) => Self::Provider(m),
            Error::TooManyPending(_) => Self::RateLimited { retry_after_secs: 60 },
            Error::StoreUnavailable(e) => Self::StoreUnavailable(e),
            e @ Error::MasterKeyMissing { .. } => Self::MasterKeyMissing(e.to_string()),
            Error::Internal(e) => Self::Internal(e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Error::from(e).into()
    }
}

impl From<VaultError> for ApiError {
    fn from(e: VaultError) -> Self {
        Error::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let retry_after = match &self {
            Self::RateLimited { retry_after_secs } | Self::ProviderUnavailable { retry_after_secs, .. } => {
                Some(*retry_after_secs)
            }
            Self::StoreUnavailable(_) => Some(2),
            Self::MasterKeyMissing(_) => Some(30),
            _ => None,
        };
        let detail = match &self {
            // Never tell the client what broke inside.
            Self::Internal(_) => "an internal error occurred; it has been logged".to_owned(),
            other => other.to_string(),
        };
        let logged = LoggedError {
            code,
            message: match &self {
                Self::Internal(e) => format!("{e:#}"),
                Self::StoreUnavailable(e) => e.to_string(),
                other => other.to_string(),
            },
            server_side: status.is_server_error(),
        };
        let errors = match self {
            Self::Validation(errors) => Some(errors),
            Self::Unprocessable { errors, .. } if !errors.is_empty() => Some(errors),
            _ => None,
        };
        let body = Problem {
            kind: format!("https://credgate.dev/problems/{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail,
            code: code.to_owned(),
            errors,
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response.extensions_mut().insert(logged);
        response
    }
}
