//! Request body schemas that utoipa cannot derive: the probe bodies, the
//! names of a secrets resolve (each with its pattern), and the credential
//! body built from the provider registry (one shape per provider and auth
//! type, with each field's type, bounds and pattern).

use serde_json::{json, Map, Value};

use crate::model::AuthKind;
use crate::providers::{FieldDef, FieldKind, Generic, Registry};

/// `schema`, or `null` (which the bodies take as absent).
fn nullable(mut schema: Value) -> Value {
    match schema.get("type").cloned() {
        Some(Value::String(t)) => {
            schema["type"] = json!([t, "null"]);
            if let Some(values) = schema.get_mut("enum").and_then(Value::as_array_mut) {
                values.push(Value::Null);
            }
            schema
        }
        _ => json!({"anyOf": [schema, {"type": "null"}]}),
    }
}

fn port() -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": 65535})
}

/// The answer of `POST /integrations/credentials/{id}/resolve`: every field
/// with its value decrypted, and for OAuth the access token (never the
/// refresh token) and when it expires.
pub fn resolved() -> Value {
    json!({
        "type": "object",
        "required": ["id", "provider", "auth_type", "fields"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "provider": {"type": "string"},
            "auth_type": {"type": "string"},
            "fields": {"type": "object", "additionalProperties": true,
                       "description": "every field of the credential, secrets decrypted"},
            "access_token": {"type": "string", "description": "OAuth: a token valid for at least the resolve margin"},
            "expires_at": {"type": "string", "format": "date-time"}
        }
    })
}

/// `POST /integrations/secrets/resolve`: 1 to 100 names, each matching the
/// names' pattern.
pub fn resolve_secrets() -> Value {
    json!({
        "type": "object",
        "required": ["names"],
        "additionalProperties": false,
        "properties": {
            "names": {
                "type": "array",
                "minItems": 1,
                "maxItems": crate::named_secrets::MAX_RESOLVE,
                "items": {"type": "string", "pattern": super::secrets::NAME_PATTERN},
            },
        },
    })
}

/// `POST /integrations/sftp/test-connection`.
pub fn sftp() -> Value {
    json!({
        "type": "object",
        "required": ["host", "username"],
        "properties": {
            "host": {"type": "string", "description": "host name or IP address", "maxLength": 253},
            "port": nullable(port()),
            "username": {"type": "string"},
            "password": nullable(json!({"type": "string"})),
            "private_key": nullable(json!({"type": "string", "description": "PEM or OpenSSH private key"})),
            "passphrase": nullable(json!({"type": "string"})),
            "host_key_sha256": nullable(json!({"type": "string", "description": "SHA256:<43 base64 characters>"})),
            "path": nullable(json!({"type": "string"}))
        },
        "description": "give `password` or `private_key`"
    })
}

/// `POST /integrations/postgres/test-connection`.
pub fn postgres() -> Value {
    json!({
        "type": "object",
        "properties": {
            "connection_string": nullable(json!({"type": "string", "description": "libpq URL or key=value string; wins over the fields"})),
            "host": {"type": "string"},
            "port": nullable(port()),
            "database": {"type": "string"},
            "username": {"type": "string"},
            "password": nullable(json!({"type": "string"})),
            "sslmode": nullable(json!({"type": "string", "enum": ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]}))
        },
        "anyOf": [
            {"required": ["connection_string"], "properties": {"connection_string": {"type": "string", "minLength": 1}}},
            {"required": ["host", "database", "username"]}
        ],
        "description": "`connection_string`, or `host`, `database` and `username`"
    })
}

/// `POST /integrations/llm/test-connection` (`base_url` is required for
/// `openai_compatible`; said in words, since schema tools mishandle the
/// conditional).
pub fn llm() -> Value {
    json!({
        "type": "object",
        "required": ["provider_type", "api_key"],
        "properties": {
            "provider_type": {"type": "string", "enum": ["openai", "anthropic", "openai_compatible"]},
            "api_key": {"type": "string", "pattern": "^[!-~]+$", "description": "printable ASCII, no spaces"},
            "base_url": nullable(json!({"type": "string", "description": "needed for openai_compatible"})),
            "organization_id": nullable(json!({"type": "string"}))
        }
    })
}

/// `POST /integrations/telegram/test-connection`.
pub fn telegram() -> Value {
    json!({
        "type": "object",
        "required": ["bot_token"],
        "properties": {"bot_token": {"type": "string", "pattern": "^[0-9]+:[A-Za-z0-9_-]{30,}$"}}
    })
}

fn field(def: &FieldDef) -> Value {
    let mut schema = match &def.kind {
        FieldKind::Integer => {
            let mut s = json!({"type": "integer"});
            if let Some(min) = def.min {
                s["minimum"] = json!(min);
            }
            if let Some(max) = def.max {
                s["maximum"] = json!(max);
            }
            s
        }
        FieldKind::Port => {
            json!({"type": "integer", "minimum": def.min.unwrap_or(1), "maximum": def.max.unwrap_or(65535)})
        }
        FieldKind::Boolean => json!({"type": "boolean"}),
        FieldKind::Enum(values) => json!({"type": "string", "enum": values}),
        other => {
            let mut s = json!({"type": "string", "maxLength": def.max_length});
            let format = match other {
                FieldKind::Url => Some("absolute http(s) URL"),
                FieldKind::Hostname => Some("host name or IP address"),
                FieldKind::PrivateKey => Some("PEM or OpenSSH private key"),
                FieldKind::Json => Some("a JSON object as text (a key file)"),
                _ => None,
            };
            if let Some(f) = format {
                s["description"] = json!(f);
            }
            if let Some(p) = &def.pattern {
                s["pattern"] = json!(p.as_str());
            }
            s
        }
    };
    if def.secret {
        schema["writeOnly"] = json!(true);
    }
    schema["title"] = json!(def.label);
    if def.required && def.default.is_none() {
        schema
    } else {
        nullable(schema)
    }
}

/// `POST /integrations/credentials`: one shape per provider and (non-OAuth) auth type.
pub fn credential(registry: &Registry) -> Value {
    let shapes: Vec<Value> = registry
        .iter()
        .flat_map(|p| p.auth_types.iter().map(move |a| (p, a)))
        .filter(|(_, a)| a.kind != AuthKind::Oauth2)
        .map(|(p, a)| {
            if p.generic == Some(Generic::KeyValue) {
                return key_value(p, a.kind);
            }
            let properties: Map<String, Value> = a.fields.iter().map(|f| (f.name.clone(), field(f))).collect();
            let required: Vec<&str> = a
                .fields
                .iter()
                .filter(|f| f.required && f.default.is_none())
                .map(|f| f.name.as_str())
                .collect();
            json!({
                "type": "object",
                "title": format!("{} ({})", p.display_name, a.kind.as_str()),
                "additionalProperties": false,
                "required": ["name", "provider", "auth_type", "fields"],
                "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200},
                    "provider": {"const": p.id},
                    "auth_type": {"const": a.kind.as_str()},
                    "fields": {"type": "object", "additionalProperties": false, "required": required, "properties": properties}
                }
            })
        })
        .collect();
    json!({"oneOf": shapes})
}

/// A key-value (`custom`) credential: any string fields, `public` naming
/// those shown in the clear.
fn key_value(p: &crate::providers::Provider, kind: AuthKind) -> Value {
    json!({
        "type": "object",
        "title": format!("{} ({})", p.display_name, kind.as_str()),
        "additionalProperties": false,
        "required": ["name", "provider", "auth_type", "fields"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "provider": {"const": p.id},
            "auth_type": {"const": kind.as_str()},
            "fields": {
                "type": "object",
                "minProperties": 1,
                "maxProperties": crate::providers::MAX_KV_FIELDS,
                "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_.-]{0,63}$"},
                "additionalProperties": {"type": "string", "maxLength": 1024}
            },
            "public": {"type": "array", "items": {"type": "string"}, "maxItems": crate::providers::MAX_KV_FIELDS}
        }
    })
}
