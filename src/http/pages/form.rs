//! What the page forms share: reading a form body, provider fields from
//! form inputs and back, and words for auth types and OAuth outcomes.

use axum::body::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::model::AuthKind;
use crate::providers::{FieldDef, FieldKind};

/// A form body's pairs (empty when it is not a form).
pub fn pairs(body: &Bytes) -> Vec<(String, String)> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

/// The first value of `key`.
pub fn value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// `?csrf=` of a link that starts something (an OAuth popup).
#[derive(Debug, Deserialize)]
pub struct CsrfQuery {
    pub csrf: Option<String>,
}

/// An auth type in words.
pub fn type_words(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::Oauth2 => "Sign in (OAuth)",
        AuthKind::ApiKey => "API key",
        AuthKind::UserPassword => "User and password",
        AuthKind::KeyFile => "Key file",
    }
}

/// A stored value as an input's text.
pub fn text_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// Field values as the API takes them: empty inputs left out, numbers as
/// numbers (a number that does not parse stays text, so validation names
/// it), checkboxes as booleans.
pub fn fields_from_form(defs: &[FieldDef], pairs: &[(String, String)]) -> Map<String, Value> {
    let mut fields = Map::new();
    for def in defs {
        let key = format!("f.{}", def.name);
        let value = pairs.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str());
        let value = match (&def.kind, value) {
            (FieldKind::Boolean, v) => Value::Bool(v == Some("true")),
            (_, None) => continue,
            (_, Some(v)) if v.trim().is_empty() => continue,
            (FieldKind::Integer | FieldKind::Port, Some(v)) => v
                .trim()
                .parse::<i64>()
                .map_or_else(|_| Value::String(v.to_owned()), Value::from),
            (_, Some(v)) => Value::String(v.to_owned()),
        };
        fields.insert(def.name.clone(), value);
    }
    fields
}

/// Non-secret values to show again after a failed save.
pub fn public_values(defs: &[FieldDef], fields: &Map<String, Value>) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(k, _)| defs.iter().any(|d| &d.name == *k && !d.secret))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// An OAuth error code in words.
pub fn oauth_words(code: &str) -> &'static str {
    match code {
        "access_denied" => "You did not grant access at the provider, so nothing was connected.",
        "oauth_state_invalid" => "The sign-in took too long or was already used. Try connecting again.",
        "account_mismatch" => {
            "You signed in with a different account than the one this credential belongs to. \
             Sign in with the same account, or connect a new credential."
        }
        "quota_exceeded" => {
            "Your organization already has the most credentials allowed for this provider. \
             Delete one you no longer need, or ask an administrator to raise the limit."
        }
        "account_already_connected" => "This account is already connected in another credential.",
        _ => "The provider did not connect the account. Try again; if it keeps failing, tell your administrator.",
    }
}
