//! Field definitions and the validation of submitted field values.

use regex::Regex;
use secrecy::SecretString;
use serde::Serialize;
use serde_json::{Map, Value};

use super::raw::RawField;
use crate::crypto::SecretMap;

/// The shape a field value must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FieldKind {
    /// Any text.
    String,
    /// A JSON integer within `min..=max`.
    Integer,
    /// A TCP port, 1–65535.
    Port,
    /// `true` or `false`.
    Boolean,
    /// An absolute `http(s)` URL.
    Url,
    /// A DNS name or IP address.
    Hostname,
    /// A PEM or OpenSSH private key.
    PrivateKey,
    /// A JSON object given as text (a key file), at most `max_length`.
    Json,
    /// One of a fixed list of values.
    Enum(Vec<String>),
}

/// One field of an auth type.
#[derive(Debug, Clone)]
pub struct FieldDef {
    /// Key in `fields`.
    pub name: String,
    /// Human label.
    pub label: String,
    /// Secret fields are encrypted and never returned.
    pub secret: bool,
    /// Must be present.
    pub required: bool,
    /// Value shape.
    pub kind: FieldKind,
    /// Inclusive bounds for integers.
    pub min: Option<i64>,
    /// Inclusive bounds for integers.
    pub max: Option<i64>,
    /// Regex the whole text value must match.
    pub pattern: Option<Regex>,
    /// Longest text accepted, in bytes.
    pub max_length: usize,
    /// Value stored when the field is absent.
    pub default: Option<Value>,
}

/// A problem with one field, as reported in problem+json `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Dotted path of the field (`fields.port`).
    pub field: String,
    /// What is wrong, never echoing the value.
    pub message: String,
}

impl FieldError {
    /// A new field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Field values split into what may be shown and what is sealed.
#[derive(Debug, Default)]
pub struct ValidatedFields {
    /// Non-secret values, stored in the clear and returned.
    pub public: Map<String, Value>,
    /// Secret values, sealed and never returned.
    pub secret: SecretMap,
}

/// Whether `s` is a DNS name (or an IP address), as a `hostname` field takes.
pub fn hostname_ok(s: &str) -> bool {
    if s.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn private_key_ok(s: &str) -> bool {
    let s = s.trim();
    let begin = s.starts_with("-----BEGIN ") && s.lines().next().is_some_and(|l| l.ends_with("PRIVATE KEY-----"));
    let end = s
        .lines()
        .last()
        .is_some_and(|l| l.starts_with("-----END ") && l.ends_with("PRIVATE KEY-----"));
    begin && end && s.lines().count() >= 3
}

impl FieldDef {
    /// Checks one present value; the message never contains the value.
    fn check(&self, value: &Value) -> Result<(), String> {
        let text = |v: &Value| v.as_str().map(str::to_owned);
        match &self.kind {
            FieldKind::Integer | FieldKind::Port => {
                let n = value.as_i64().ok_or("must be an integer")?;
                let (min, max) = match self.kind {
                    FieldKind::Port => (self.min.unwrap_or(1), self.max.unwrap_or(65535)),
                    _ => (self.min.unwrap_or(i64::MIN), self.max.unwrap_or(i64::MAX)),
                };
                if n < min || n > max {
                    return Err(format!("must be between {min} and {max}"));
                }
                return Ok(());
            }
            FieldKind::Boolean => {
                return value
                    .as_bool()
                    .map(|_| ())
                    .ok_or_else(|| "must be true or false".into())
            }
            _ => {}
        }
        let s = text(value).ok_or("must be a string")?;
        if s.len() > self.max_length {
            return Err(format!("must be at most {} bytes long", self.max_length));
        }
        if self.required && s.trim().is_empty() {
            return Err("must not be empty".into());
        }
        match &self.kind {
            FieldKind::Url => {
                let ok =
                    url::Url::parse(&s).is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                if !ok {
                    return Err("must be an absolute http or https URL".into());
                }
            }
            FieldKind::Hostname if !hostname_ok(&s) => return Err("must be a host name or IP address".into()),
            FieldKind::PrivateKey if !private_key_ok(&s) => {
                return Err("must be a PEM or OpenSSH private key (-----BEGIN … PRIVATE KEY-----)".into())
            }
            FieldKind::Json if !serde_json::from_str::<Value>(&s).is_ok_and(|v| v.is_object()) => {
                return Err("must be a JSON object (the key file's contents)".into())
            }
            FieldKind::Enum(values) if !values.contains(&s) => {
                return Err(format!("must be one of: {}", values.join(", ")))
            }
            _ => {}
        }
        if let Some(re) = &self.pattern {
            if !re.is_match(&s) {
                return Err("has the wrong format".into());
            }
        }
        Ok(())
    }
}

/// Validates submitted `fields` against an auth type's definitions.
///
/// Unknown fields, missing required ones, wrong types and out-of-range values
/// are each reported under `fields.NAME`; defaults fill absent optional fields.
pub fn validate(defs: &[FieldDef], submitted: &Map<String, Value>) -> Result<ValidatedFields, Vec<FieldError>> {
    let mut errors = Vec::new();
    for name in submitted.keys() {
        if !defs.iter().any(|d| &d.name == name) {
            errors.push(FieldError::new(
                format!("fields.{name}"),
                "is not a field of this provider and auth type",
            ));
        }
    }
    let mut out = ValidatedFields::default();
    for def in defs {
        let path = format!("fields.{}", def.name);
        let value = match submitted.get(&def.name) {
            None | Some(Value::Null) => match (&def.default, def.required) {
                (Some(default), _) => default.clone(),
                (None, true) => {
                    errors.push(FieldError::new(path, "is required"));
                    continue;
                }
                (None, false) => continue,
            },
            Some(v) => v.clone(),
        };
        if let Err(message) = def.check(&value) {
            errors.push(FieldError::new(path, message));
            continue;
        }
        if def.secret {
            match value {
                Value::String(s) => out.secret.insert(def.name.clone(), SecretString::from(s)),
                other => out
                    .secret
                    .insert(def.name.clone(), SecretString::from(other.to_string())),
            }
        } else {
            out.public.insert(def.name.clone(), value);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A provider file's field as a definition; an error names the key at
/// fault and says why.
pub(super) fn build_field(f: RawField) -> Result<FieldDef, (String, String)> {
    let kind = match f.kind.as_str() {
        "string" => FieldKind::String,
        "integer" => FieldKind::Integer,
        "port" => FieldKind::Port,
        "boolean" => FieldKind::Boolean,
        "url" => FieldKind::Url,
        "hostname" => FieldKind::Hostname,
        "private_key" => FieldKind::PrivateKey,
        "json" => FieldKind::Json,
        "enum" if !f.values.is_empty() => FieldKind::Enum(f.values.clone()),
        "enum" => return Err(("values".into(), "an enum field needs values".into())),
        other => return Err(("type".into(), format!("unknown field type {other:?}"))),
    };
    let pattern = match &f.pattern {
        Some(p) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|e| ("pattern".to_owned(), e.to_string()))?),
        None => None,
    };
    let default = match f.default {
        Some(v) => Some(serde_json::to_value(v).map_err(|e| ("default".to_owned(), e.to_string()))?),
        None => None,
    };
    let def = FieldDef {
        name: f.name,
        label: f.label,
        secret: f.secret,
        required: f.required,
        kind,
        min: f.min,
        max: f.max,
        pattern,
        max_length: f.max_length.unwrap_or(4096),
        default,
    };
    if let Some(Value::Null) = def.default {
        return Err(("default".into(), "must not be null".into()));
    }
    Ok(def)
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use serde_json::json;

    fn def(name: &str, kind: FieldKind, secret: bool, required: bool) -> FieldDef {
        FieldDef {
            name: name.into(),
            label: name.into(),
            secret,
            required,
            kind,
            min: None,
            max: None,
            pattern: None,
            max_length: 4096,
            default: None,
        }
    }

    fn sftp_defs() -> Vec<FieldDef> {
        let mut port = def("port", FieldKind::Port, false, false);
        port.default = Some(json!(22));
        vec![
            def("host", FieldKind::Hostname, false, true),
            port,
            def("password", FieldKind::String, true, true),
        ]
    }

    #[test]
    fn valid_fields_split_into_public_and_secret_with_defaults() {
        let fields = json!({"host": "sftp.example.com", "password": "pw-sentinel"});
        let out = validate(&sftp_defs(), fields.as_object().unwrap()).unwrap();
        assert_eq!(out.public["port"], json!(22));
        assert!(!out.public.contains_key("password"));
        assert_eq!(out.secret.get("password").unwrap().expose_secret(), "pw-sentinel");
    }

    #[test]
    fn each_bad_field_is_named_and_its_value_is_not_echoed() {
        let fields = json!({"host": "bad host!", "port": 70000, "extra": "pw-sentinel"});
        let errors = validate(&sftp_defs(), fields.as_object().unwrap()).unwrap_err();
        let names: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(names, ["fields.extra", "fields.host", "fields.port", "fields.password"]);
        assert!(errors.iter().all(|e| !e.message.contains("pw-sentinel")));
    }

    #[test]
    fn private_keys_must_look_like_pem() {
        let d = def("private_key", FieldKind::PrivateKey, true, true);
        assert!(d.check(&json!("hello")).is_err());
        let pem = "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n";
        assert!(d.check(&json!(pem)).is_ok());
    }
}
