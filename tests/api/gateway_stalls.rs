//! A body that stops coming, either way through the gateway: nothing may
//! hold a call's slot (and its sockets) for ever. The first-byte limit is
//! also the longest silence allowed inside either body.

use std::time::Duration;

use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::both_backends;
use crate::gateway::{http_credential, settled_uses, upstream};
use crate::helpers::{test_config, TestApp, TestDb};

/// An app whose gateway allows loopback, a 1 s silence at most, and one
/// call per credential at a time.
async fn app_with_short_limit(db: &TestDb) -> TestApp {
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    config.proxy_first_byte_timeout = Duration::from_secs(1);
    config.proxy_concurrency_per_credential = 1;
    TestApp::spawn_with(config).await
}

/// The service sends its answer's head and a first piece, then nothing:
/// the engine's answer is cut off once the silence passes the limit (its
/// body ends in an error, never mistaken for a whole one), and the call's
/// slot is free again. Before, the call held its slot as long as the
/// service kept its connection open.
async fn an_answer_that_stops_coming_is_cut_off_and_its_slot_freed(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = app_with_short_limit(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let call = |path: &str| {
        app.client
            .get(format!("{}/integrations/credentials/{id}/proxy/{path}", app.base))
            .bearer_auth(&app.org.engine)
            .send()
    };

    let stalled = call("stall").await.unwrap();
    let stalled_status = stalled.status();
    let while_held = call("items").await.unwrap().status();
    let body = tokio::time::timeout(Duration::from_secs(20), stalled.bytes()).await;
    let mut after = StatusCode::TOO_MANY_REQUESTS;
    for _ in 0..40 {
        after = call("items").await.unwrap().status();
        if after != StatusCode::TOO_MANY_REQUESTS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(stalled_status, StatusCode::OK, "the head passed as it came");
    assert_eq!(
        while_held,
        StatusCode::TOO_MANY_REQUESTS,
        "the stalled call held the only slot"
    );
    let body = body.expect("the answer was never cut off: the stalled call kept its slot");
    assert!(
        body.is_err(),
        "a cut-off answer ends in an error, not as a whole body: {body:?}"
    );
    assert_eq!(
        after,
        StatusCode::CREATED,
        "the slot is free once the answer is cut off"
    );
    assert_eq!(app.state.gateway.credentials_in_flight(), 0);
    // The stalled call and the one after it (a call refused for the cap is
    // no use).
    let uses = settled_uses(&app, &id, 2).await;
    let stall_use = uses.iter().find(|u| u["detail"]["path"] == "/stall").unwrap();
    assert_eq!(stall_use["detail"]["status"], 200, "{stall_use}");
}
both_backends!(an_answer_that_stops_coming_is_cut_off_and_its_slot_freed);

/// A request whose body starts with `first`, then never goes on.
async fn stalled_call(app: &TestApp, id: &str, first: Vec<u8>) -> (StatusCode, Option<String>, Value) {
    let first = futures::stream::once(async { Ok::<_, std::io::Error>(axum::body::Bytes::from(first)) });
    let body = reqwest::Body::wrap_stream(first.chain(futures::stream::pending()));
    let sent = app
        .client
        .post(format!("{}/integrations/credentials/{id}/proxy/items", app.base))
        .bearer_auth(&app.org.engine)
        .body(body)
        .send();
    let answer = tokio::time::timeout(Duration::from_secs(20), sent)
        .await
        .expect("the gateway waited for the rest of the body for ever")
        .unwrap();
    let status = answer.status();
    let marker = answer
        .headers()
        .get("credgate-error")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, marker, answer.json().await.unwrap())
}

/// The engine starts its request's body, then sends nothing more: it is
/// told so (422 naming `body`, credgate's own error), and its use says
/// why (`body_incomplete`), not that the body was too large. A small body
/// (read whole before the call) never reaches the service; a large one
/// (streamed to it as it comes) is broken off. Before, the call waited
/// for the rest for ever, holding its slot.
async fn an_engine_body_that_stops_coming_is_refused_and_its_use_says_why(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = app_with_short_limit(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;

    let small = stalled_call(&app, &id, b"part".to_vec()).await;
    let large = stalled_call(&app, &id, vec![b'x'; 2 * 1024 * 1024]).await;
    let uses = settled_uses(&app, &id, 2).await;

    for (status, marker, problem) in [&small, &large] {
        assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{problem}");
        assert_eq!(problem["errors"][0]["field"], "body", "{problem}");
        assert_eq!(marker.as_deref(), Some("1"));
    }
    assert!(
        seen.0.lock().unwrap().is_empty(),
        "no whole request reached the service"
    );
    for used in &uses {
        assert_eq!(used["detail"]["error"], "body_incomplete", "{used}");
    }
    assert_eq!(app.state.gateway.credentials_in_flight(), 0);
}
both_backends!(an_engine_body_that_stops_coming_is_refused_and_its_use_says_why);
