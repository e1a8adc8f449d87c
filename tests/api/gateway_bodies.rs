//! What the service receives of the engine's request through the gateway
//! (a loopback stand-in records it): its body's length, and headers and
//! query parameters the credential sets.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::gateway::{gateway_app, http_credential, upstream};
use crate::helpers::{sentinel, TestDb};

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

/// A header the credential places (its key, a provider's static header)
/// goes once, with the credential's value: an engine that sends the same
/// header neither replaces it nor adds a second value beside it, which a
/// service might read first.
async fn a_header_the_credential_sets_goes_once_with_its_value(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let key = sentinel();
    let id = http_credential(
        &app,
        &base,
        json!({"scheme": "header", "header_name": "X-Api-Key", "header_value": key}),
    )
    .await;

    let answer = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/items", app.base))
        .bearer_auth(&app.org.engine)
        .header("x-api-key", "the-engines-own")
        .header("x-custom", "kept")
        .send()
        .await
        .unwrap();
    let seen = seen.0.lock().unwrap().clone();

    assert_eq!(answer.status(), StatusCode::CREATED);
    assert_eq!(seen[0]["headers"]["x-api-key"], key.as_str());
    assert_eq!(seen[0]["repeated"], json!([]), "{}", seen[0]);
    assert_eq!(seen[0]["headers"]["x-custom"], "kept");
}
both_backends!(a_header_the_credential_sets_goes_once_with_its_value);

/// A query parameter the credential places (its key, by the `query`
/// scheme or a provider's query placement) goes once, with the
/// credential's value: the engine's own parameter of that name is taken
/// out, as a header of that name is, so the service can never read the
/// engine's value first. The engine's other parameters pass.
async fn a_query_parameter_the_credential_sets_goes_once_with_its_value(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let key = sentinel();
    let id = http_credential(
        &app,
        &base,
        json!({"scheme": "query", "param_name": "api_key", "param_value": key}),
    )
    .await;

    let answer = app
        .client
        .get(format!(
            "{}/integrations/credentials/{id}/proxy/items?api_key=the-engines-own&x=1&api_key=again&API_KEY=other",
            app.base
        ))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let seen = seen.0.lock().unwrap().clone();
    let query = seen[0]["query"].as_str().unwrap_or_default().to_owned();
    let values = |name: &str| -> Vec<String> {
        query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.to_owned())
            .collect()
    };

    assert_eq!(answer.status(), StatusCode::CREATED);
    assert_eq!(values("api_key"), vec![key.clone()], "{query}");
    assert_eq!(values("x"), vec!["1".to_owned()], "{query}");
    assert_eq!(
        values("API_KEY"),
        vec!["other".to_owned()],
        "names are case-sensitive: {query}"
    );
}
both_backends!(a_query_parameter_the_credential_sets_goes_once_with_its_value);

/// A call whose engine says nothing of what it accepts goes with
/// `Accept: */*`, as curl's and the engines' usual clients send (some
/// services answer 406 to a request without it); an engine's own `Accept`
/// passes as it is.
async fn a_call_without_accept_says_it_takes_anything(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let url = format!("{}/integrations/credentials/{id}/proxy/items", app.base);

    // reqwest always sends an Accept of its own: the bare call is written
    // by hand.
    let bare = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = app.base.trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let request = format!(
            "GET /integrations/credentials/{id}/proxy/items HTTP/1.1\r\nHost: {addr}\r\n\
             Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
            app.org.engine
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let own = app
        .client
        .get(&url)
        .bearer_auth(&app.org.engine)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let seen = seen.0.lock().unwrap().clone();

    assert!(bare.starts_with("HTTP/1.1 201"), "{bare}");
    assert_eq!(own.status(), StatusCode::CREATED);
    assert_eq!(seen[0]["headers"]["accept"], "*/*", "{}", seen[0]);
    assert_eq!(seen[1]["headers"]["accept"], "application/json");
    assert_eq!(seen[1]["repeated"], json!([]));
}
both_backends!(a_call_without_accept_says_it_takes_anything);
