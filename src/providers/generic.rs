//! The two generic providers, which a file alone cannot describe (a file
//! marks itself with `generic = "key_value"` or `generic = "http"`):
//!
//! - key-value (`custom`): any string fields, every one secret unless named
//!   in `public`; at most [`MAX_KV_FIELDS`] fields, [`MAX_KV_BYTES`] in all.
//! - HTTP (`http`): a base URL and one auth scheme, whose fields are required
//!   only for that scheme; its probe is built from the credential's scheme.

use secrecy::SecretString;
use serde_json::{Map, Value};

use super::{validate_fields, FieldDef, FieldError, ValidatedFields};

/// Most fields of a key-value credential.
pub const MAX_KV_FIELDS: usize = 64;
/// Most bytes of a key-value credential's names and values together.
pub const MAX_KV_BYTES: usize = 64 * 1024;

/// What kind of generic provider a file declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generic {
    /// Free key-value fields.
    KeyValue,
    /// A base URL and one auth scheme.
    Http,
}

impl Generic {
    /// Parses the file's `generic` value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "key_value" => Some(Self::KeyValue),
            "http" => Some(Self::Http),
            _ => None,
        }
    }
}

fn kv_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Checks submitted fields for a provider: its file's definitions, then what
/// a generic provider adds. `public` names the key-value fields shown in
/// the clear (only the key-value provider takes it).
pub fn validate(
    generic: Option<Generic>,
    defs: &[FieldDef],
    submitted: &Map<String, Value>,
    public: &[String],
) -> Result<ValidatedFields, Vec<FieldError>> {
    if generic != Some(Generic::KeyValue) && !public.is_empty() {
        return Err(vec![FieldError::new(
            "public",
            "is only for key-value (custom) credentials",
        )]);
    }
    match generic {
        None => validate_fields(defs, submitted),
        Some(Generic::KeyValue) => key_value(submitted, public),
        Some(Generic::Http) => {
            let validated = validate_fields(defs, submitted)?;
            let errors = http_scheme(submitted);
            if errors.is_empty() {
                Ok(validated)
            } else {
                Err(errors)
            }
        }
    }
}

fn key_value(submitted: &Map<String, Value>, public: &[String]) -> Result<ValidatedFields, Vec<FieldError>> {
    let mut errors = Vec::new();
    if submitted.is_empty() {
        errors.push(FieldError::new("fields", "must hold at least one field"));
    }
    if submitted.len() > MAX_KV_FIELDS {
        errors.push(FieldError::new("fields", format!("at most {MAX_KV_FIELDS} fields")));
    }
    let bytes: usize = submitted
        .iter()
        .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
        .sum();
    if bytes > MAX_KV_BYTES {
        errors.push(FieldError::new("fields", "at most 64 KiB of names and values in all"));
    }
    let mut out = ValidatedFields::default();
    for (name, value) in submitted.iter().take(MAX_KV_FIELDS) {
        let path = format!("fields.{}", name.chars().take(64).collect::<String>());
        if !kv_name_ok(name) {
            errors.push(FieldError::new(
                path,
                "names start with a letter or _ and hold letters, digits, _, - and . (at most 64)",
            ));
            continue;
        }
        let Some(text) = value.as_str() else {
            errors.push(FieldError::new(path, "must be a string"));
            continue;
        };
        if public.contains(name) {
            out.public.insert(name.clone(), Value::String(text.to_owned()));
        } else {
            out.secret.insert(name.clone(), SecretString::from(text.to_owned()));
        }
    }
    for (i, name) in public.iter().enumerate() {
        if !submitted.contains_key(name) {
            errors.push(FieldError::new(format!("public[{i}]"), "names no field"));
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The fields each HTTP auth scheme needs.
pub fn scheme_fields(scheme: &str) -> &'static [&'static str] {
    match scheme {
        "bearer" => &["token"],
        "header" => &["header_name", "header_value"],
        "basic" => &["username", "password"],
        "query" => &["param_name", "param_value"],
        _ => &[],
    }
}

const SCHEME_FIELDS: [&str; 7] = [
    "token",
    "header_name",
    "header_value",
    "username",
    "password",
    "param_name",
    "param_value",
];

fn http_scheme(submitted: &Map<String, Value>) -> Vec<FieldError> {
    let scheme = submitted.get("scheme").and_then(Value::as_str).unwrap_or("");
    let needed = scheme_fields(scheme);
    let mut errors = Vec::new();
    let present = |name: &str| {
        submitted
            .get(name)
            .and_then(Value::as_str)
            .is_some_and(|v| !v.is_empty())
    };
    for name in needed {
        if !present(name) {
            errors.push(FieldError::new(
                format!("fields.{name}"),
                format!("is required with scheme {scheme}"),
            ));
        }
    }
    for name in SCHEME_FIELDS.iter().filter(|n| !needed.contains(n)) {
        if present(name) {
            errors.push(FieldError::new(
                format!("fields.{name}"),
                format!("is not used with scheme {scheme}"),
            ));
        }
    }
    if let Some(name) = submitted.get("header_name").and_then(Value::as_str) {
        if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
            errors.push(FieldError::new("fields.header_name", "is not a valid header name"));
        }
    }
    if let Some(path) = submitted.get("test_path").and_then(Value::as_str) {
        if !path.starts_with('/') || path.starts_with("//") || path.contains(char::is_whitespace) {
            errors.push(FieldError::new("fields.test_path", "must be a path starting with /"));
        }
    }
    if let Some(base) = submitted.get("base_url").and_then(Value::as_str) {
        let credentials_in_url =
            url::Url::parse(base).is_ok_and(|u| !u.username().is_empty() || u.password().is_some());
        if credentials_in_url {
            errors.push(FieldError::new(
                "fields.base_url",
                "must not contain credentials; use the auth scheme",
            ));
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        let Value::Object(m) = v else { panic!() };
        m
    }

    #[test]
    fn key_value_fields_are_secret_unless_public() {
        let ok = key_value(&map(json!({"API_KEY": "s", "region": "eu"})), &["region".into()]).unwrap();
        assert_eq!(ok.public.get("region"), Some(&json!("eu")));
        assert_eq!(ok.secret.names(), vec!["API_KEY".to_owned()]);
        let bad = key_value(&map(json!({"9x": "s", "n": 1})), &["missing".into()]).unwrap_err();
        let fields: Vec<&str> = bad.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["fields.9x", "fields.n", "public[0]"]);
    }

    #[test]
    fn each_http_scheme_needs_its_own_fields_only() {
        assert!(http_scheme(&map(json!({"scheme": "bearer", "token": "t"}))).is_empty());
        let missing = http_scheme(&map(json!({"scheme": "basic", "username": "u"})));
        assert_eq!(missing[0].field, "fields.password");
        let extra = http_scheme(&map(json!({"scheme": "bearer", "token": "t", "param_value": "v"})));
        assert_eq!(extra[0].field, "fields.param_value");
    }
}
