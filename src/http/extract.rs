//! Request extractors that turn every rejection into a problem+json error:
//! [`ApiJson`] bodies and [`ApiQuery`] strings (the caller is in `auth`);
//! and [`NoStore`], the JSON answer that carries a secret.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::providers::FieldError;

pub use super::auth::Caller;
pub use crate::model::{Role, MANAGE, READ, RESOLVE};

/// A JSON answer that carries a secret value or a single-use link: sent
/// with `Cache-Control: no-store`, so no cache or browser keeps it.
#[derive(Debug)]
pub struct NoStore<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for NoStore<T> {
    fn into_response(self) -> axum::response::Response {
        ([(axum::http::header::CACHE_CONTROL, "no-store")], axum::Json(self.0)).into_response()
    }
}

/// A JSON body whose problems become 400/413/415/422 with field names.
#[derive(Debug)]
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = req
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime == "application/json" || mime.ends_with("+json")
            });
        if !json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit: 1 << 20 }
            } else {
                ApiError::MalformedBody("the body could not be read".into())
            }
        })?;
        parse_json(&bytes).map(ApiJson)
    }
}

/// Deserializes JSON, reporting data errors by field without echoing values.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if !inner.is_data() {
            return ApiError::MalformedBody(format!("line {} column {}", inner.line(), inner.column()));
        }
        let text = inner.to_string();
        let (field, message) = describe_data_error(&path, &text);
        ApiError::Validation(vec![FieldError::new(field, message)])
    })
}

/// serde's messages quote the offending value; keep only what is safe.
fn describe_data_error(path: &str, text: &str) -> (String, String) {
    let join = |name: &str| {
        if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    let between = |s: &str| s.split('`').nth(1).unwrap_or("").to_owned();
    if let Some(rest) = text.strip_prefix("missing field ") {
        return (join(&between(rest)), "is required".into());
    }
    if let Some(rest) = text.strip_prefix("unknown field ") {
        // serde_path_to_error already ends the path with the unknown key.
        let field = if path == "." { between(rest) } else { path.to_owned() };
        return (field, "is not a known field".into());
    }
    let expected = text
        .split(", expected ")
        .nth(1)
        .map(|e| e.split(" at line ").next().unwrap_or(e).to_owned());
    let field = if path == "." {
        "body".to_owned()
    } else {
        path.to_owned()
    };
    let message = match expected {
        Some(e) => format!("has the wrong type or value (expected {e})"),
        None => "has the wrong type or value".to_owned(),
    };
    (field, message)
}

/// Query-string parameters; a malformed query is a 422 naming `query`.
#[derive(Debug)]
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(ApiQuery)
            .map_err(|_| ApiError::field("query", "is not a valid query string"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[expect(dead_code, reason = "the fields are only deserialized")]
    struct Body {
        name: String,
        port: Option<u16>,
    }

    fn field_errors(body: &str) -> Vec<FieldError> {
        match parse_json::<Body>(body.as_bytes()) {
            Err(ApiError::Validation(errors)) => errors,
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn wrong_types_name_the_field_and_never_echo_the_value() {
        let errors = field_errors(r#"{"name": "x", "port": "s3cret-sentinel"}"#);
        assert_eq!(errors[0].field, "port");
        assert!(!errors[0].message.contains("s3cret-sentinel"));
        assert!(errors[0].message.contains("u16"));
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        assert_eq!(field_errors(r#"{"port": 1}"#)[0].field, "name");
        assert_eq!(field_errors(r#"{"name": "a", "zzz": 1}"#)[0].field, "zzz");
    }

    #[test]
    fn syntax_errors_are_malformed_bodies() {
        assert!(matches!(
            parse_json::<Body>(b"{\"name\": "),
            Err(ApiError::MalformedBody(_))
        ));
    }
}
