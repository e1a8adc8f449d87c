//! What the engine receives of the service's answer through the gateway:
//! never anything that would pass for credgate's own, never the
//! credential's secret written back by the service.

use reqwest::StatusCode;
use serde_json::json;

use crate::both_backends;
use crate::gateway::{gateway_app, http_credential, upstream};
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
pub struct Placing {
    pub key: String,
    pub token: String,
    pub by_query: String,
    pub by_header: String,
}

pub async fn placing(app: &TestApp, base: &str) -> Placing {
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

/// A ranged request would let the engine have the service cut its answer
/// where it likes: a secret the service wrote into the answer, split
/// between two ranges (or asked for a byte at a time), is in no range
/// whole, so none is masked, and the engine joins them. The service is
/// asked for the range widened on each side by one byte less than the
/// secret's longest spelling, so that a secret reaching into the engine's
/// range is found whole and masked; the engine's range is then cut out
/// (206, its own `Content-Range` and length). Several ranges at once are
/// not forwarded (the answer comes whole, 200); a range past the end is
/// answered 416, as the service would have. A call with no secret to look
/// for keeps its range as it was.
async fn a_range_of_an_answer_is_cut_from_a_wider_one_once_its_secrets_are_masked(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let placing = placing(&app, &base).await;
    let short = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let ranged = |id: String, range: String| {
        app.client
            .get(format!("{}/integrations/credentials/{id}/proxy/ranged", app.base))
            .bearer_auth(&app.org.engine)
            .header("range", range)
            .header("if-range", "\"v1\"")
            .send()
    };
    let before = "the file says: your key is Bearer ";
    let whole = format!("{before}{} - end", "*".repeat(placing.token.len()));
    let length = whole.len();
    let pad = placing.token.len() - 1;
    // Cut inside the secret: each range holds a part of it.
    let cut = before.len() + 10;
    let cases = [
        (format!("bytes=0-{}", cut - 1), 0, cut - 1),
        (format!("bytes={cut}-{}", length - 1), cut, length - 1),
        ("bytes=50-50".to_owned(), 50, 50),
        ("bytes=40-".to_owned(), 40, length - 1),
        ("bytes=-5".to_owned(), length - 5, length - 1),
    ];

    let mut got = Vec::new();
    for (range, _, _) in &cases {
        let answer = ranged(placing.by_header.clone(), range.clone()).await.unwrap();
        let status = answer.status();
        let content_range = answer.headers().get("content-range").cloned();
        got.push((status, content_range, answer.text().await.unwrap()));
    }
    let several = ranged(placing.by_header.clone(), "bytes=0-1,5-6".into()).await.unwrap();
    let several = (several.status(), several.text().await.unwrap());
    let past = ranged(
        placing.by_header.clone(),
        format!("bytes={}-{}", length + 4, length + 9),
    )
    .await
    .unwrap();
    let past = (past.status(), past.headers().get("content-range").cloned());
    let short_answer = ranged(short, "bytes=15-25".into()).await.unwrap();
    let short_status = short_answer.status();
    let short_body = short_answer.text().await.unwrap();
    let calls = seen.0.lock().unwrap().clone();

    for ((range, first, last), (status, content_range, body)) in cases.iter().zip(&got) {
        assert_eq!(*status, StatusCode::PARTIAL_CONTENT, "{range}: {body}");
        assert_eq!(
            body,
            &whole[*first..=*last],
            "{range}: the range, cut from the masked whole"
        );
        assert_eq!(
            content_range.as_ref().unwrap(),
            format!("bytes {first}-{last}/{length}").as_str(),
            "{range}"
        );
        assert!(
            !body.contains(&placing.token[9..15]),
            "{range}: a part of the secret: {body}"
        );
    }
    assert_eq!(
        calls[0]["headers"]["range"],
        format!("bytes=0-{}", cut - 1 + pad),
        "asked for widened"
    );
    assert_eq!(calls[2]["headers"]["range"], format!("bytes={}-{}", 50 - pad, 50 + pad));
    assert_eq!(calls[4]["headers"]["range"], format!("bytes=-{}", 5 + pad));
    assert_eq!(
        calls[0]["headers"]["if-range"], "\"v1\"",
        "the service decides If-Range"
    );
    assert_eq!(
        several,
        (StatusCode::OK, whole.clone()),
        "several ranges: the whole answer"
    );
    assert!(calls[5]["headers"].get("range").is_none(), "{}", calls[5]);
    assert!(calls[5]["headers"].get("if-range").is_none(), "{}", calls[5]);
    assert_eq!(past.0, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(past.1.unwrap(), format!("bytes */{length}").as_str());
    assert_eq!(
        short_status,
        StatusCode::PARTIAL_CONTENT,
        "no secret looked for: the range passes"
    );
    assert_eq!(short_body, "your key is");
    assert_eq!(calls[7]["headers"]["range"], "bytes=15-25");
}
both_backends!(a_range_of_an_answer_is_cut_from_a_wider_one_once_its_secrets_are_masked);

/// Some services take a range under a name of their own (Azure's storage:
/// `x-ms-range`) and answer it 206 like any other; no rule about `Range`
/// keeps such a range from cutting a secret in two. A part of an answer
/// cannot be searched whole, so a call whose secrets are looked for never
/// returns one: 502, `Credgate-Error: 1`, and the use's error
/// `partial_answer` beside the service's status. A call with no secret to
/// look for gets its part.
async fn a_part_of_an_answer_cut_by_another_name_is_not_returned(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let placing = placing(&app, &base).await;
    let short = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let ranged = |id: String| {
        app.client
            .get(format!("{}/integrations/credentials/{id}/proxy/ranged", app.base))
            .bearer_auth(&app.org.engine)
            .header("x-ms-range", "bytes=0-35")
            .send()
    };

    let answer = ranged(placing.by_header.clone()).await.unwrap();
    let status = answer.status();
    let marked = answer.headers().get("credgate-error").cloned();
    let body = answer.text().await.unwrap();
    let short_answer = ranged(short).await.unwrap();
    let short_status = short_answer.status();
    let short_body = short_answer.text().await.unwrap();
    let uses = crate::gateway::settled_uses(&app, &placing.by_header, 1).await;

    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(marked.as_ref().map(|m| m.to_str().unwrap()), Some("1"));
    assert!(!body.contains(&placing.token[..6]), "no part of the secret: {body}");
    assert!(body.contains("206"), "{body}");
    assert_eq!(uses[0]["detail"]["status"], 206, "{}", uses[0]);
    assert_eq!(uses[0]["detail"]["error"], "partial_answer", "{}", uses[0]);
    assert_eq!(uses[0]["outcome"], "failure", "{}", uses[0]);
    assert_eq!(short_status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(short_body, "the file says: your key is Bearer t ");
}
both_backends!(a_part_of_an_answer_cut_by_another_name_is_not_returned);

/// A token renewed after a 401 can be longer than the one the range was
/// first widened for (Microsoft's grow and shrink with their claims): the
/// call sent again asks for the range widened for the renewed token, so a
/// range cutting into it is still answered (206, the renewed token
/// masked) instead of being refused as a part credgate cannot search.
async fn a_range_sent_again_with_a_longer_renewed_token_is_widened_for_it(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let ms = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Microsoft).await;
    let (app, id) = crate::gateway::connected(&db, &ms, "microsoft", &base).await;
    // The access token handed out on connecting (Microsoft's are JWTs).
    let first = ms.with(|i| i.issued.iter().rev().find(|t| t.starts_with("eyJ")).cloned().unwrap());
    ms.with(|i| i.token_tail = format!(".{}", "x".repeat(40)));
    let renewed_length = first.len() + 41;
    let before = "the file says: your key is Bearer ";
    // Inside the renewed token's tail: farther from its start than the
    // first token's length.
    let (start, end) = (before.len() + first.len() + 20, before.len() + first.len() + 30);

    let answer = app
        .client
        .get(format!(
            "{}/integrations/credentials/{id}/proxy/once401-ranged",
            app.base
        ))
        .bearer_auth(&app.org.engine)
        .header("range", format!("bytes={start}-{end}"))
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let content_range = answer.headers().get("content-range").cloned();
    let body = answer.text().await.unwrap();
    let calls = seen.0.lock().unwrap().clone();
    let renewed = calls[1]["headers"]["authorization"].as_str().unwrap().to_owned();
    let uses = crate::gateway::settled_uses(&app, &id, 1).await;
    let whole = format!("{before}{} - end", "*".repeat(renewed_length));

    assert_eq!(renewed.len(), "Bearer ".len() + renewed_length, "{renewed}");
    assert_eq!(status, StatusCode::PARTIAL_CONTENT, "{body}");
    assert_eq!(body, whole[start..=end]);
    assert_eq!(
        calls[0]["headers"]["range"],
        format!("bytes={}-{}", start - (first.len() - 1), end + first.len() - 1)
    );
    assert_eq!(
        calls[1]["headers"]["range"],
        format!("bytes={}-{}", start - (renewed_length - 1), end + renewed_length - 1),
        "sent again widened for the renewed token"
    );
    assert_eq!(
        content_range.unwrap(),
        format!("bytes {start}-{end}/{}", whole.len()).as_str()
    );
    assert_eq!(uses[0]["detail"]["status"], 206, "{}", uses[0]);
    assert_eq!(uses[0]["outcome"], "success", "{}", uses[0]);
}
both_backends!(a_range_sent_again_with_a_longer_renewed_token_is_widened_for_it);
