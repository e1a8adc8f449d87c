//! What the engine receives of the service's answer through the gateway:
//! never anything that would pass for credgate's own, never the
//! credential's secret written back by the service.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::gateway::{gateway_app, http_credential, packed_text, upstream};
use crate::helpers::{sentinel, TestApp, TestDb};

/// `Credgate-Error: 1` tells the engine that credgate itself refused or
/// failed the call. A service's answer carrying a `Credgate-*` header of
/// its own would pass for credgate's: such headers are never returned
/// (as none the engine sends is ever forwarded). The answer itself passes.
async fn a_services_credgate_headers_never_reach_the_engine(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;

    let answer = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/marked", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let headers = answer.headers().clone();
    let body = answer.text().await.unwrap();

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "the service's status passes");
    assert_eq!(body, "busy");
    let credgate: Vec<_> = headers.keys().filter(|k| k.as_str().starts_with("credgate-")).collect();
    assert!(
        credgate.is_empty(),
        "the service's own credgate-* headers: {credgate:?}"
    );
}
both_backends!(a_services_credgate_headers_never_reach_the_engine);

/// Two credentials of the stand-in at `base`: one whose `key` goes in the
/// query (`api_key`), one whose `token` goes in `Authorization`.
struct Placing {
    key: String,
    token: String,
    by_query: String,
    by_header: String,
}

async fn placing(app: &TestApp, base: &str) -> Placing {
    let key = sentinel();
    let token = sentinel();
    let by_query = http_credential(
        app,
        base,
        json!({"scheme": "query", "param_name": "api_key", "param_value": key}),
    )
    .await;
    let by_header = http_credential(app, base, json!({"scheme": "bearer", "token": token})).await;
    Placing {
        key,
        token,
        by_query,
        by_header,
    }
}

/// Services write requests back into their answers' headers: a redirect
/// that keeps the query (`/items` → `/items/?…`), a next page's `Link`, an
/// echo. A key placed in the query (or a header) would reach the engine
/// that way, which must never see it. The credential's parameter is taken
/// out of such URLs (the rest of them kept, so the engine can follow them
/// through the gateway); any other header that still holds the secret is
/// not returned.
async fn a_secret_the_service_writes_into_its_answers_headers_never_reaches_the_engine(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let Placing {
        key,
        token,
        by_query,
        by_header,
    } = placing(&app, &base).await;
    let call = |id: String| {
        app.client
            .get(format!("{}/integrations/credentials/{id}/proxy/moved?x=1", app.base))
            .bearer_auth(&app.org.engine)
            .send()
    };

    let queried = call(by_query).await.unwrap();
    let headed = call(by_header).await.unwrap();
    let host = base.trim_start_matches("http://");

    for (answer, secret) in [(&queried, &key), (&headed, &token)] {
        assert_eq!(answer.status(), StatusCode::MOVED_PERMANENTLY);
        for (name, value) in answer.headers() {
            let value = String::from_utf8_lossy(value.as_bytes());
            assert!(!value.contains(secret.as_str()), "{name}: {value}");
        }
        assert_eq!(answer.headers()["x-kept"], "yes", "the other headers pass");
    }
    assert_eq!(
        queried.headers()["location"],
        format!("http://{host}/v2/moved/?x=1").as_str(),
        "the redirect kept the engine's query, without the key"
    );
    let link = queried.headers()["link"].to_str().unwrap();
    assert_eq!(link, format!("<http://{host}/v2/items?x=1&page=2>; rel=\"next\""));
    assert!(headed.headers().get("x-echo-authorization").is_none());
}
both_backends!(a_secret_the_service_writes_into_its_answers_headers_never_reaches_the_engine);

/// The same in the answer's body (an echo, an error page that quotes the
/// request): each secret the call placed is masked, byte for byte with
/// `*`, so the body keeps its length (a declared `Content-Length` stays
/// true) and the rest of it passes as it came, whether it comes whole or
/// in pieces that split the secret.
async fn a_secret_the_service_writes_into_its_answers_body_is_masked(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let Placing {
        key,
        token,
        by_query,
        by_header,
    } = placing(&app, &base).await;

    for path in ["echo", "echo-whole"] {
        let call = |id: &str| {
            app.client
                .get(format!("{}/integrations/credentials/{id}/proxy/{path}?x=1", app.base))
                .bearer_auth(&app.org.engine)
                .send()
        };
        let queried = call(&by_query).await.unwrap().text().await.unwrap();
        let headed = call(&by_header).await.unwrap().text().await.unwrap();
        let mask = |secret: &str| "*".repeat(secret.len());

        assert_eq!(
            queried,
            format!("you sent ?x=1&api_key={} and  - end", mask(&key)),
            "{path}"
        );
        assert_eq!(
            headed,
            format!("you sent ?x=1 and Bearer {} - end", mask(&token)),
            "{path}"
        );
    }
}
both_backends!(a_secret_the_service_writes_into_its_answers_body_is_masked);

/// A token renewed after the service refused the first (401, one refresh,
/// the call sent again) is as secret as the first: the service writing it
/// back into its answer does not hand it to the engine either.
async fn a_token_renewed_after_a_401_is_kept_out_of_the_answer_too(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let ms = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Microsoft).await;
    let (app, id) = crate::gateway::connected(&db, &ms, "microsoft", &base).await;

    let answer = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/once401-echo", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let echoed = answer.headers().get("x-echo-authorization").cloned();
    let body = answer.text().await.unwrap();
    let calls = seen.0.lock().unwrap().clone();
    let renewed = calls[1]["headers"]["authorization"].as_str().unwrap().to_owned();
    let token = renewed.trim_start_matches("Bearer ");

    assert_eq!(status, StatusCode::OK, "answered after one refresh");
    assert_eq!(ms.with(|i| i.refresh_grants), 1, "one refresh");
    assert_ne!(
        calls[0]["headers"]["authorization"],
        calls[1]["headers"]["authorization"]
    );
    assert!(
        token.len() >= 8,
        "a token long enough to be looked for: {}",
        token.len()
    );
    assert_eq!(body, format!("token: Bearer {}", "*".repeat(token.len())));
    assert!(echoed.is_none(), "the header holding the renewed token is not returned");
}
both_backends!(a_token_renewed_after_a_401_is_kept_out_of_the_answer_too);

/// The body of an answer as its engine would read it: inflated when it
/// says it is compressed.
fn inflated(encoding: Option<&reqwest::header::HeaderValue>, bytes: &[u8]) -> String {
    let mut text = String::new();
    match encoding.map(|e| e.to_str().unwrap()) {
        Some("gzip") => {
            std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(bytes), &mut text).unwrap();
        }
        Some("deflate") => {
            std::io::Read::read_to_string(&mut flate2::read::ZlibDecoder::new(bytes), &mut text).unwrap();
        }
        None => text = String::from_utf8(bytes.to_vec()).unwrap(),
        Some(other) => panic!("an answer in {other}"),
    }
    text
}

/// What the `packed` stand-in writes back for each of the two placing
/// credentials, their secrets masked.
fn packed_masked(placing: &Placing) -> [(String, &String, String); 2] {
    let mask = |secret: &str| "*".repeat(secret.len());
    [
        (
            placing.by_query.clone(),
            &placing.key,
            packed_text(&format!("x=1&api_key={}", mask(&placing.key)), ""),
        ),
        (
            placing.by_header.clone(),
            &placing.token,
            packed_text("x=1", &format!("Bearer {}", mask(&placing.token))),
        ),
    ]
}

/// Nearly every engine's HTTP client asks for a compressed answer (axios,
/// undici, Python's requests: `Accept-Encoding: gzip, …`), and a service
/// that compresses its answer hides the secrets it writes back from the
/// gateway's search: the engine would find them once it inflated the
/// answer. The service is asked for the answer as it is (`identity`), so
/// that the secrets are masked in it as in any other.
async fn a_secret_in_an_answer_the_engine_asked_compressed_is_masked_too(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let placing = placing(&app, &base).await;

    for (id, secret, expected) in packed_masked(&placing) {
        let answer = app
            .client
            .get(format!("{}/integrations/credentials/{id}/proxy/packed?x=1", app.base))
            .bearer_auth(&app.org.engine)
            .header("accept-encoding", "gzip, deflate, br")
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let encoding = answer.headers().get("content-encoding").cloned();
        let text = inflated(encoding.as_ref(), &answer.bytes().await.unwrap());

        assert_eq!(
            text.matches(secret.as_str()).count(),
            0,
            "the secret in the answer the engine inflates ({encoding:?})"
        );
        assert_eq!(text, expected);
    }
    for call in seen.0.lock().unwrap().iter() {
        assert_eq!(call["headers"]["accept-encoding"], "identity", "{call}");
    }
}
both_backends!(a_secret_in_an_answer_the_engine_asked_compressed_is_masked_too);

/// A service that compresses its answer though asked not to (gzip, or
/// HTTP's `deflate`, zlib) has it inflated by the gateway, piece by piece
/// (memory stays bounded), and searched: the engine gets it as it is,
/// without `Content-Encoding` or `Content-Length`, its secrets masked. A
/// compressed answer broken off reaches the engine broken off, never as a
/// whole answer.
async fn an_answer_compressed_unasked_is_inflated_and_masked(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let placing = placing(&app, &base).await;
    let call = |id: &str, path: &str| {
        app.client
            .get(format!("{}/integrations/credentials/{id}/proxy/{path}?x=1", app.base))
            .bearer_auth(&app.org.engine)
            .send()
    };

    for path in ["packed-gzip", "packed-deflate"] {
        for (id, secret, expected) in packed_masked(&placing) {
            let answer = call(&id, path).await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            let headers = answer.headers().clone();
            let text = inflated(headers.get("content-encoding"), &answer.bytes().await.unwrap());

            assert_eq!(text.matches(secret.as_str()).count(), 0, "{path}");
            assert_eq!(text, expected, "{path}");
            assert!(headers.get("content-encoding").is_none(), "{path}: {headers:?}");
            assert!(headers.get("content-length").is_none(), "{path}: {headers:?}");
        }
    }
    // Broken off before the engine's connection sent anything, or after
    // the head: either way, never an answer read whole.
    let cut = match call(&placing.by_header, "packed-cut").await {
        Ok(answer) => answer.bytes().await.map(|b| b.len()).ok(),
        Err(_) => None,
    };
    assert_eq!(cut, None, "a broken-off answer never reads as whole");
}
both_backends!(an_answer_compressed_unasked_is_inflated_and_masked);

/// An answer in an encoding the gateway cannot inflate (asked for none)
/// cannot be searched: it is refused (502, credgate's own error naming the
/// encoding), and its use keeps the service's status and why. A credential
/// whose secret is too short to be looked for changes nothing: the
/// engine's `Accept-Encoding` passes, and so does the answer.
async fn an_answer_in_an_encoding_the_gateway_cannot_read_is_refused(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let placing = placing(&app, &base).await;
    let short = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let call = |id: &str| {
        app.client
            .get(format!(
                "{}/integrations/credentials/{id}/proxy/packed-br?x=1",
                app.base
            ))
            .bearer_auth(&app.org.engine)
            .header("accept-encoding", "br")
            .send()
    };

    let refused = call(&placing.by_header).await.unwrap();
    let status = refused.status();
    let marker = refused.headers().get("credgate-error").cloned();
    let refusal = refused.text().await.unwrap();
    let passed = call(&short).await.unwrap();
    let passed_status = passed.status();
    let passed_encoding = passed.headers().get("content-encoding").cloned();
    let passed_body = passed.text().await.unwrap();
    let uses = crate::gateway::settled_uses(&app, &placing.by_header, 1).await;

    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "{}",
        refusal.chars().take(100).collect::<String>()
    );
    let problem: serde_json::Value = serde_json::from_str(&refusal).unwrap();
    assert_eq!(marker.unwrap(), "1");
    assert!(problem["detail"].as_str().unwrap().contains("br"), "{problem}");
    assert!(!problem.to_string().contains(&placing.token), "{problem}");
    assert_eq!(uses[0]["detail"]["status"], 200, "{}", uses[0]);
    assert_eq!(uses[0]["detail"]["error"], "unreadable_encoding", "{}", uses[0]);
    assert_eq!(passed_status, StatusCode::OK);
    assert_eq!(passed_encoding.unwrap(), "br");
    assert_eq!(passed_body, packed_text("x=1", "Bearer t"));
    let calls = seen.0.lock().unwrap().clone();
    assert_eq!(calls[0]["headers"]["accept-encoding"], "identity");
    assert_eq!(
        calls[1]["headers"]["accept-encoding"], "br",
        "passed as the engine sent it"
    );
}
both_backends!(an_answer_in_an_encoding_the_gateway_cannot_read_is_refused);

/// A stream of events (an MCP server's notifications, an LLM's tokens as
/// server-sent events) reaches the engine as each event comes. The bytes
/// held back in case they begin a secret are only those that could (a
/// piece's end that is the start of one), so an event followed by silence
/// is not kept from the engine until the next one comes.
async fn an_event_followed_by_silence_reaches_the_engine_at_once(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let placing = placing(&app, &base).await;

    for id in [&placing.by_header, &placing.by_query] {
        let mut answer = app
            .client
            .get(format!("{}/integrations/credentials/{id}/proxy/events", app.base))
            .bearer_auth(&app.org.engine)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let event = "data: {\"n\":1}\n\n";
        let mut got = Vec::new();
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while got.len() < event.len() {
                match answer.chunk().await.unwrap() {
                    Some(piece) => got.extend_from_slice(&piece),
                    None => break,
                }
            }
        })
        .await;

        assert!(
            read.is_ok(),
            "the event was held back: {:?}",
            String::from_utf8_lossy(&got)
        );
        assert_eq!(String::from_utf8_lossy(&got), event);
    }
}
both_backends!(an_event_followed_by_silence_reaches_the_engine_at_once);
