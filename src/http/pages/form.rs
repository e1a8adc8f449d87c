//! What the page forms share: reading a form body, provider fields from
//! form inputs and back, and words for auth types and OAuth outcomes.

use axum::body::Bytes;
use maud::{html, Markup};
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
    /// The MCP card's server URL (Connect of provider `mcp`).
    pub server_url: Option<String>,
}

/// An auth type in words.
pub fn type_words(kind: AuthKind) -> &'static str {
    match kind {
        AuthKind::Oauth2 => "Sign in (OAuth)",
        AuthKind::ApiKey => "API key",
        AuthKind::UserPassword => "User and password",
        AuthKind::KeyFile => "Key file",
        AuthKind::Oauth2ClientCredentials => "Client credentials",
        AuthKind::ServiceAccount => "Service account key",
        AuthKind::AwsSigv4 => "AWS access key",
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

/// Rows a key-value form offers beyond the fields it already has.
const KV_SPARE_ROWS: usize = 4;

/// The rows of a key-value (`custom`) form: name, value (a password input,
/// never filled) and "shown in the clear". `names` are the existing fields
/// (name, public).
pub fn key_value_rows(names: &[(String, bool)], errors: &[crate::providers::FieldError]) -> Markup {
    let rows = names.len() + KV_SPARE_ROWS;
    html! {
        fieldset.kv {
            legend { "Fields (values are secret unless marked as shown)" }
            @for i in 0..rows {
                @let (name, public) = names.get(i).cloned().unwrap_or_default();
                div.field.grant {
                    label for=(format!("kv-name-{i}")) { "Name " (i + 1) }
                    input #(format!("kv-name-{i}")) name=(format!("kv.name.{i}")) value=(name) autocomplete="off" spellcheck="false";
                    label for=(format!("kv-value-{i}")) { "Value " (i + 1) }
                    input #(format!("kv-value-{i}")) type="password" name=(format!("kv.value.{i}")) autocomplete="new-password";
                    label for=(format!("kv-public-{i}")) {
                        input #(format!("kv-public-{i}")) type="checkbox" name=(format!("kv.public.{i}")) value="true" checked[public];
                        " shown"
                    }
                }
            }
            @for e in errors.iter().filter(|e| e.field.starts_with("fields") || e.field.starts_with("public")) {
                p.field-error { (e.field) " " (e.message) }
            }
        }
    }
}

/// A key-value form's fields and the names marked as shown.
pub fn key_value_from_form(pairs: &[(String, String)]) -> (Map<String, Value>, Vec<String>) {
    let mut fields = Map::new();
    let mut public = Vec::new();
    for (key, name) in pairs {
        let Some(i) = key.strip_prefix("kv.name.") else {
            continue;
        };
        let name = name.trim();
        if name.is_empty() {
            continue;
        }
        let value = value(pairs, &format!("kv.value.{i}")).unwrap_or_default();
        fields.insert(name.to_owned(), Value::String(value.to_owned()));
        if value_is_true(pairs, &format!("kv.public.{i}")) {
            public.push(name.to_owned());
        }
    }
    (fields, public)
}

fn value_is_true(pairs: &[(String, String)], key: &str) -> bool {
    value(pairs, key) == Some("true")
}
