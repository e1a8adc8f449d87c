//! Compressed answers through the gateway: a compressed body would hide
//! the secrets a service writes back from the search for them, so the
//! service is asked for the answer as it is, one compressed anyway is
//! inflated, and one that cannot be is not returned.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::gateway::{gateway_app, http_credential, packed_text, upstream};
use crate::gateway_answers::{placing, Placing};
use crate::helpers::TestDb;

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
            // What described the compressed bytes does not describe the
            // inflated ones: the tag is weak (the same resource, other
            // bytes; a strong tag would let a range of the inflated answer
            // be joined to one of the compressed), the digest and the
            // ranges of the compressed bytes are gone.
            assert_eq!(headers.get("etag").unwrap(), "W/\"packed-v1\"", "{path}");
            assert!(headers.get("content-digest").is_none(), "{path}: {headers:?}");
            assert!(headers.get("accept-ranges").is_none(), "{path}: {headers:?}");
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
    let passed_tag = passed.headers().get("etag").cloned();
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
    assert_eq!(
        passed_tag.unwrap(),
        "\"packed-v1\"",
        "an answer passed as it came keeps its tag"
    );
    assert_eq!(passed_body, packed_text("x=1", "Bearer t"));
    let calls = seen.0.lock().unwrap().clone();
    assert_eq!(calls[0]["headers"]["accept-encoding"], "identity");
    assert_eq!(
        calls[1]["headers"]["accept-encoding"], "br",
        "passed as the engine sent it"
    );
}
both_backends!(an_answer_in_an_encoding_the_gateway_cannot_read_is_refused);
