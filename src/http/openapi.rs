//! The OpenAPI 3.1 document, made exact after utoipa generates it: every
//! error a route can answer is documented as `application/problem+json`,
//! and the routes that need no API key say so (`security: []`).

use serde_json::{json, Value};

use super::schemas;
use crate::providers::Registry;

/// Routes that take no bearer key.
fn is_public(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics") || path.ends_with("/callback")
}

/// The problem statuses every route with an API key may answer.
const API_ERRORS: &[(&str, &str)] = &[
    ("400", "the body is not JSON"),
    ("401", "no valid API key"),
    ("403", "the key's role may not do this"),
    ("404", "no such resource (or another organization's)"),
    ("413", "the body is larger than 1 MiB"),
    ("415", "the body is not application/json"),
    ("422", "invalid fields, named in `errors`"),
    ("429", "rate limited; see Retry-After"),
    ("503", "the store (or the provider) is unavailable; see Retry-After"),
];

/// The problem statuses of the OAuth callback.
const CALLBACK_ERRORS: &[(&str, &str)] = &[
    ("404", "no such provider"),
    ("422", "a malformed query"),
    ("429", "rate limited per client address; see Retry-After"),
];

fn problem(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// Request bodies that utoipa cannot derive, by path.
fn body_schema(path: &str, registry: &Registry) -> Option<Value> {
    Some(match path {
        "/integrations/sftp/test-connection" => schemas::sftp(),
        "/integrations/postgres/test-connection" => schemas::postgres(),
        "/integrations/llm/test-connection" => schemas::llm(),
        "/integrations/telegram/test-connection" => schemas::telegram(),
        "/integrations/credentials" => schemas::credential(registry),
        "/integrations/secrets/resolve" => schemas::resolve_secrets(),
        _ => return None,
    })
}

/// Answers that utoipa cannot derive, by path: `resolve`'s is assembled
/// from the credential's decrypted fields, which no type holds.
fn answer_schema(path: &str) -> Option<Value> {
    Some(match path {
        "/integrations/credentials/{id}/resolve" => schemas::resolved(),
        _ => return None,
    })
}

/// Completes utoipa's document.
pub fn exact(doc: utoipa::openapi::OpenApi, registry: &Registry) -> Value {
    let mut doc = serde_json::to_value(doc).expect("the document serializes");
    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else { continue };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else { continue };
            if let (Some(schema), "post") = (body_schema(path, registry), method.as_str()) {
                op.insert(
                    "requestBody".into(),
                    json!({"required": true, "content": {"application/json": {"schema": schema}}}),
                );
            }
            let responses = op.entry("responses").or_insert_with(|| json!({}));
            let Some(responses) = responses.as_object_mut() else {
                continue;
            };
            if let (Some(schema), Some(ok)) = (answer_schema(path), responses.get_mut("200")) {
                ok["content"] = json!({"application/json": {"schema": schema}});
            }
            // Errors are problem documents, whatever utoipa wrote.
            for response in responses.values_mut() {
                if let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) {
                    let is_problem = content
                        .get("application/json")
                        .and_then(|c| c["schema"]["$ref"].as_str())
                        .is_some_and(|r| r.ends_with("/Problem"));
                    if is_problem {
                        if let Some(c) = content.remove("application/json") {
                            content.insert("application/problem+json".into(), c);
                        }
                    }
                }
            }
            let errors = if path.ends_with("/callback") {
                CALLBACK_ERRORS
            } else if is_public(path) {
                &[]
            } else {
                API_ERRORS
            };
            for (status, description) in errors {
                responses.entry(*status).or_insert_with(|| problem(description));
            }
            if is_public(path) {
                op.insert("security".into(), json!([]));
            }
        }
    }
    doc
}
