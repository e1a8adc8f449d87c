//! What the service receives of the engine's request body through the
//! gateway (a loopback stand-in records it).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::gateway::{gateway_app, http_credential, upstream};
use crate::helpers::TestDb;

/// A request that carries a payload says its length, even an empty one:
/// Google's front ends, among others, answer `411 Length Required` to a
/// `POST` without `Content-Length` (an action such as "trash this message"
/// has no body). A `GET` carries none.
async fn an_empty_body_is_sent_with_its_length(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let methods = [Method::POST, Method::PUT, Method::PATCH, Method::DELETE, Method::GET];

    for method in &methods {
        let answer = app
            .client
            .request(
                method.clone(),
                format!("{}/integrations/credentials/{id}/proxy/items/1", app.base),
            )
            .bearer_auth(&app.org.engine)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::CREATED, "{method}");
    }
    let seen = seen.0.lock().unwrap().clone();
    let length = |method: &Method| -> Value {
        let request = seen.iter().find(|r| r["method"] == method.as_str()).unwrap();
        request["headers"].get("content-length").cloned().unwrap_or(Value::Null)
    };

    assert_eq!(seen.len(), methods.len());
    for method in [Method::POST, Method::PUT, Method::PATCH] {
        assert_eq!(length(&method), "0", "{method}");
    }
    assert_eq!(length(&Method::GET), Value::Null);
}
both_backends!(an_empty_body_is_sent_with_its_length);
