//! The gateway: the engine's calls go to the credential's service with its
//! authentication added; a loopback stand-in records what arrives.

use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method as AxumMethod, StatusCode as AxumStatus};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{captured_logs, sentinel, test_config, TestApp, TestDb};

#[derive(Clone, Default)]
pub struct Seen(pub Arc<Mutex<Vec<Value>>>);

async fn record(
    State(seen): State<Seen>,
    method: AxumMethod,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let names: serde_json::Map<String, Value> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), json!(v.to_str().unwrap_or(""))))
        .collect();
    // Names sent more than once (the map above keeps the last value).
    let repeated: Vec<&str> = headers
        .keys()
        .filter(|k| headers.get_all(*k).iter().count() > 1)
        .map(|k| k.as_str())
        .collect();
    seen.0
        .lock()
        .unwrap()
        .push(json!({"method": method.as_str(), "path": path, "query": query,
        "headers": names, "repeated": repeated, "body": String::from_utf8_lossy(&body)}));
    if path == "big" {
        // 200 MiB, produced as it is sent.
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let chunks = futures::stream::iter((0..3200).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
        return (AxumStatus::OK, axum::body::Body::from_stream(chunks)).into_response();
    }
    if path == "stall" {
        // The head and a first piece, then nothing more, ever.
        let first = futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"part")) });
        let body = axum::body::Body::from_stream(first.chain(futures::stream::pending()));
        return (AxumStatus::OK, body).into_response();
    }
    if path == "events" {
        // A stream of events that stays open (an MCP server's
        // notifications): one event, then nothing for now.
        let first =
            futures::stream::once(async { Ok::<_, std::io::Error>(Bytes::from_static(b"data: {\"n\":1}\n\n")) });
        let body = axum::body::Body::from_stream(first.chain(futures::stream::pending()));
        return (AxumStatus::OK, [("content-type", "text/event-stream")], body).into_response();
    }
    if path == "marked" {
        // A service whose answer carries headers named like credgate's own.
        return (
            AxumStatus::SERVICE_UNAVAILABLE,
            [("credgate-error", "1"), ("credgate-note", "the service's")],
            "busy",
        )
            .into_response();
    }
    if path == "moved" {
        // Writes the request back into its answer's headers, as services
        // do: a redirect keeping the query, a next page's link, an echo.
        let host = names.get("host").and_then(Value::as_str).unwrap_or_default();
        let query = query.clone().unwrap_or_default();
        let authorization = names.get("authorization").and_then(Value::as_str).unwrap_or_default();
        return (
            AxumStatus::MOVED_PERMANENTLY,
            [
                ("location", format!("http://{host}/v2/moved/?{query}")),
                ("link", format!("<http://{host}/v2/items?{query}&page=2>; rel=\"next\"")),
                ("x-echo-authorization", authorization.to_owned()),
                ("x-kept", "yes".to_owned()),
            ],
            "",
        )
            .into_response();
    }
    if let Some(how) = path.strip_prefix("packed") {
        // Writes the request back into a long answer (some 130 KiB),
        // compressed: `packed` as services do, gzip when the request
        // accepts it; `packed-gzip`, `packed-deflate` and `packed-br`
        // whatever it accepts (`br` stands for any encoding: its bytes are
        // the text as it is); `packed-cut`, gzip broken off halfway.
        let text = packed_text(
            query.as_deref().unwrap_or_default(),
            names.get("authorization").and_then(Value::as_str).unwrap_or_default(),
        );
        let accepts_gzip = names
            .get("accept-encoding")
            .and_then(Value::as_str)
            .is_some_and(|a| a.contains("gzip"));
        let encoding = match how {
            "" if accepts_gzip => "gzip",
            "" => return (AxumStatus::OK, text).into_response(),
            "-cut" => "gzip",
            other => other.trim_start_matches('-'),
        };
        let level = flate2::Compression::default();
        let mut body = match encoding {
            "gzip" => {
                let mut gzip = flate2::write::GzEncoder::new(Vec::new(), level);
                gzip.write_all(text.as_bytes()).unwrap();
                gzip.finish().unwrap()
            }
            "deflate" => {
                let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), level);
                zlib.write_all(text.as_bytes()).unwrap();
                zlib.finish().unwrap()
            }
            _ => text.into_bytes(),
        };
        if how == "-cut" {
            body.truncate(body.len() / 2);
        }
        // The validators and digests of the compressed bytes, as services
        // send them.
        let headers = [
            ("content-encoding", encoding),
            ("etag", "\"packed-v1\""),
            ("content-digest", "sha-256=:AAAA:"),
            ("accept-ranges", "bytes"),
        ];
        return (AxumStatus::OK, headers, body).into_response();
    }
    if path == "echo" || path == "echo-whole" {
        // Writes the request back into its answer's body: streamed in
        // pieces of 3 bytes (each secret split across them), or whole
        // with its length.
        let text = format!(
            "you sent ?{} and {} - end",
            query.clone().unwrap_or_default(),
            names.get("authorization").and_then(Value::as_str).unwrap_or_default()
        );
        if path == "echo-whole" {
            return (AxumStatus::OK, text).into_response();
        }
        let pieces: Vec<Result<Bytes, std::io::Error>> = text
            .into_bytes()
            .chunks(3)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        return (
            AxumStatus::OK,
            axum::body::Body::from_stream(futures::stream::iter(pieces)),
        )
            .into_response();
    }
    if path == "once401-ranged" && seen.0.lock().unwrap().len() == 1 {
        // The file below, behind a token the service no longer takes.
        return (AxumStatus::UNAUTHORIZED, "expired").into_response();
    }
    if path == "ranged" || path == "once401-ranged" {
        // A file that holds the request's `Authorization`, served in
        // ranges as file services do: one range (`first-last`, `first-`
        // or `-count`, in `Range`, or in `x-ms-range` as Azure's storage
        // takes it) is answered 206 with those bytes only, 416 when it
        // starts past the end.
        let text = format!(
            "the file says: your key is {} - end",
            names.get("authorization").and_then(Value::as_str).unwrap_or_default()
        );
        let length = text.len();
        let spec = names
            .get("range")
            .or_else(|| names.get("x-ms-range"))
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("bytes="))
            .filter(|r| !r.contains(','))
            .and_then(|r| r.split_once('-'));
        let span = match spec {
            Some(("", count)) => count
                .parse::<usize>()
                .ok()
                .map(|n| (length.saturating_sub(n), length - 1)),
            Some((first, "")) => first.parse::<usize>().ok().map(|a| (a, length - 1)),
            Some((first, last)) => first
                .parse::<usize>()
                .ok()
                .zip(last.parse::<usize>().ok())
                .map(|(a, b)| (a, b.min(length - 1))),
            None => None,
        };
        let Some((first, last)) = span else {
            return (AxumStatus::OK, [("accept-ranges", "bytes")], text).into_response();
        };
        if first >= length {
            let unsatisfied = format!("bytes */{length}");
            return (AxumStatus::RANGE_NOT_SATISFIABLE, [("content-range", unsatisfied)]).into_response();
        }
        let content_range = format!("bytes {first}-{last}/{length}");
        return (
            AxumStatus::PARTIAL_CONTENT,
            [("accept-ranges", "bytes".to_owned()), ("content-range", content_range)],
            text[first..=last].to_owned(),
        )
            .into_response();
    }
    if path.ends_with("/echo-path") {
        // Writes the path it was called at back (a token placed in the
        // path, as Telegram's, included).
        return (AxumStatus::OK, format!("you called {path}")).into_response();
    }
    if path == "slow" {
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    }
    if path == "once401" || path == "once401-echo" {
        let token = names.get("authorization").cloned().unwrap_or_default();
        let calls = seen.0.lock().unwrap().len();
        if calls == 1 {
            seen.0.lock().unwrap()[0]["first_token"] = token;
            return (AxumStatus::UNAUTHORIZED, "expired").into_response();
        }
        if path == "once401-echo" {
            // The token it took, written back into its answer.
            let token = token.as_str().unwrap_or_default().to_owned();
            return (
                AxumStatus::OK,
                [("x-echo-authorization", token.clone())],
                format!("token: {token}"),
            )
                .into_response();
        }
    }
    if path == "always401" {
        return (AxumStatus::UNAUTHORIZED, "refused").into_response();
    }
    if path == "redirect" {
        return (AxumStatus::FOUND, [("location", "http://elsewhere.example/")], "").into_response();
    }
    (
        AxumStatus::CREATED,
        [
            ("set-cookie", "session=upstream"),
            ("x-upstream", "1"),
            ("retry-after", "7"),
        ],
        "made",
    )
        .into_response()
}

/// The text the stand-in's `packed` answers carry: the request's query and
/// `Authorization` written back on each of 1,500 lines.
pub fn packed_text(query: &str, authorization: &str) -> String {
    (0..1500)
        .map(|i| format!("{i:04} you sent ?{query} and {authorization} - end\n"))
        .collect()
}

pub async fn upstream() -> (String, Seen) {
    let seen = Seen::default();
    let app = Router::new().route("/v2/{*path}", any(record)).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, seen)
}

pub async fn gateway_app(db: &TestDb) -> TestApp {
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    TestApp::spawn_with(config).await
}

pub async fn http_credential(app: &TestApp, base: &str, fields: Value) -> String {
    let mut all = json!({"base_url": format!("{base}/v2")});
    all.as_object_mut().unwrap().extend(fields.as_object().unwrap().clone());
    let body = json!({"name": "Service", "provider": "http", "auth_type": "api_key", "fields": all});
    let (status, created) = app
        .call(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["id"].as_str().unwrap().to_owned()
}

async fn a_call_carries_the_credentials_authentication_and_nothing_of_the_engines(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let token = sentinel();
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": token})).await;

    let answer = app
        .client
        .post(format!(
            "{}/integrations/credentials/{id}/proxy/items/1?x=1&y=two",
            app.base
        ))
        .bearer_auth(&app.org.engine)
        .header("cookie", "engine=secret")
        .header("x-forwarded-for", "10.0.0.1")
        .header("forwarded", "for=10.0.0.1")
        .header("credgate-workflow-id", "wf-9")
        .header("credgate-run-id", "run-3")
        .header("x-custom", "yes")
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let answer_body = answer.text().await.unwrap();
    let redirect = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/redirect", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let (_, audit) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;
    let calls = seen.0.lock().unwrap().clone();

    assert_eq!(status, StatusCode::CREATED, "the service's status passes");
    assert_eq!(answer_body, "made");
    assert_eq!(answer_headers["x-upstream"], "1");
    assert_eq!(answer_headers["retry-after"], "7");
    assert!(
        answer_headers.get("set-cookie").is_none(),
        "Set-Cookie is never returned"
    );
    assert!(answer_headers.get("credgate-error").is_none());
    let call = &calls[0];
    assert_eq!(call["method"], "POST");
    assert_eq!(call["path"], "items/1");
    assert_eq!(call["query"], "x=1&y=two");
    assert_eq!(call["body"], "hello");
    assert_eq!(call["headers"]["authorization"], format!("Bearer {token}"));
    assert_eq!(call["headers"]["x-custom"], "yes");
    for never in [
        "cookie",
        "x-forwarded-for",
        "forwarded",
        "credgate-workflow-id",
        "credgate-run-id",
    ] {
        assert!(call["headers"].get(never).is_none(), "{never} was forwarded: {call}");
    }
    assert_eq!(
        redirect.status(),
        StatusCode::FOUND,
        "a redirect is returned, not followed"
    );
    assert_eq!(redirect.headers()["location"], "http://elsewhere.example/");
    assert_eq!(calls.len(), 2);
    let uses: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "credential.proxy")
        .collect();
    assert_eq!(uses.len(), 2, "{audit}");
    let post = uses.iter().find(|e| e["detail"]["method"] == "POST").unwrap();
    assert_eq!(post["detail"]["path"], "/items/1", "the path without its query");
    assert_eq!(post["detail"]["workflow_id"], "wf-9");
    assert!(!captured_logs().contains(&token), "the token in a log line");
}
both_backends!(a_call_carries_the_credentials_authentication_and_nothing_of_the_engines);

/// A GET sent as raw HTTP/1.1 with the engine's key: the status and the
/// whole answer (head and body), lowercased.
async fn raw_get(app: &TestApp, target: &str) -> (StatusCode, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        app.org.engine
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let code: u16 = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (StatusCode::from_u16(code).unwrap(), text)
}

async fn a_path_never_leaves_the_credentials_base_and_own_errors_say_so(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(
        &app,
        &base,
        json!({"scheme": "query", "param_name": "key", "param_value": "qv"}),
    )
    .await;

    // Sent as raw HTTP: a URL library would resolve the dot segments (even
    // `%2e%2e`) before sending, and the point is what a raw client can send.
    let mut refusals = Vec::new();
    for path in [
        "..",
        "a/../../x",
        "./x",
        "%2e%2e/x",
        "a%2fb",
        "a%5cb",
        "//evil.example/x",
        "@evil.example",
        "http:%2f%2fevil.example",
        "a/%2E%2E/%2E%2E/x",
    ] {
        let (status, text) = raw_get(&app, &format!("/integrations/credentials/{id}/proxy/{path}")).await;
        let head = text.split("\r\n\r\n").next().unwrap_or_default();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
        refusals.push((path, status, head.contains("credgate-error: 1").then_some("1"), body));
    }
    let member = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/ok", app.base))
        .bearer_auth(&app.org.member)
        .send()
        .await
        .unwrap();
    let good = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/ok?a=1", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let calls = seen.0.lock().unwrap().clone();

    for (path, status, marker, body) in &refusals {
        assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{path}");
        assert_eq!(*marker, Some("1"), "{path}");
        assert!(body.contains(r#""code":"invalid_path""#), "{path}: {body}");
        assert!(body.contains(r#""field":"path""#), "{path}: {body}");
    }
    assert_eq!(member.status(), StatusCode::FORBIDDEN);
    assert_eq!(member.headers()["credgate-error"], "1");
    assert_eq!(good.status(), StatusCode::CREATED);
    assert_eq!(calls.len(), 1, "only the good call reached the service: {calls:?}");
    assert_eq!(calls[0]["path"], "ok");
    assert_eq!(calls[0]["query"], "a=1&key=qv", "the query placement");
}
both_backends!(a_path_never_leaves_the_credentials_base_and_own_errors_say_so);

/// The credential's events of `action`.
async fn events_of(app: &TestApp, id: &str, action: &str) -> Vec<Value> {
    let (status, audit) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{audit}");
    audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

async fn a_credential_without_an_http_api_is_not_proxyable_and_no_use_is_recorded(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = gateway_app(&db).await;
    let secret = sentinel();
    let mut ids = Vec::new();
    for (provider, auth_type, fields) in [
        (
            "sftp",
            "user_password",
            json!({"host": "sftp.example.com", "username": "u", "password": secret}),
        ),
        ("custom", "api_key", json!({"api_key": secret})),
        (
            "postgresql",
            "user_password",
            json!({"host": "db.example.com", "username": "u", "password": secret, "database": "d"}),
        ),
    ] {
        let body = json!({"name": provider, "provider": provider, "auth_type": auth_type, "fields": fields});
        let (status, created) = app
            .call(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{provider}: {created}");
        ids.push((provider, created["id"].as_str().unwrap().to_owned()));
    }

    let mut answers = Vec::new();
    for (provider, id) in &ids {
        let answer = app
            .client
            .post(format!("{}/integrations/credentials/{id}/proxy/anything", app.base))
            .bearer_auth(&app.org.engine)
            .body("payload")
            .send()
            .await
            .unwrap();
        let marker = answer
            .headers()
            .get("credgate-error")
            .map(|v| v.to_str().unwrap().to_owned());
        let status = answer.status();
        let problem: Value = answer.json().await.unwrap();
        answers.push((*provider, status, marker, problem));
    }

    for (provider, status, marker, problem) in &answers {
        assert_eq!(*status, StatusCode::UNPROCESSABLE_ENTITY, "{provider}: {problem}");
        assert_eq!(problem["code"], "not_proxyable", "{provider}: {problem}");
        assert_eq!(marker.as_deref(), Some("1"), "{provider}");
        assert!(!problem.to_string().contains(&secret), "{provider}: {problem}");
    }
    for (provider, id) in &ids {
        assert!(
            events_of(&app, id, "credential.proxy").await.is_empty(),
            "{provider}: a call that never left is no use"
        );
    }
}
both_backends!(a_credential_without_an_http_api_is_not_proxyable_and_no_use_is_recorded);

async fn a_service_silent_past_the_first_byte_limit_is_a_timeout(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    config.proxy_first_byte_timeout = std::time::Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;

    // The stand-in answers `slow` after 3 s.
    let answer = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/slow", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let marker = answer.headers().get("credgate-error").cloned();
    let status = answer.status();
    let problem: Value = answer.json().await.unwrap();
    let uses = settled_uses(&app, &id, 1).await;

    assert_eq!(status, StatusCode::BAD_GATEWAY, "{problem}");
    assert_eq!(problem["code"], "provider_error", "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("in time"), "{problem}");
    assert_eq!(marker.unwrap(), "1");
    assert_eq!(seen.0.lock().unwrap().len(), 1, "the call did reach the service");
    assert_eq!(uses[0]["detail"]["error"], "timeout", "{}", uses[0]);
    assert_eq!(uses[0]["detail"]["status"], Value::Null);
    assert_eq!(uses[0]["outcome"], "failure");
    let latency = uses[0]["detail"]["latency_ms"].as_u64().unwrap();
    assert!(
        (1000..3000).contains(&latency),
        "given up at the limit, not at the answer: {latency} ms"
    );
}
both_backends!(a_service_silent_past_the_first_byte_limit_is_a_timeout);

/// An app whose `provider` (served by `server`) calls the upstream at
/// `base`, and a credential connected through it.
pub async fn connected(
    db: &TestDb,
    server: &crate::oauth_server::AuthServer,
    provider: &str,
    base: &str,
) -> (TestApp, String) {
    let key = format!("CREDGATE_PROVIDER_{}_API_BASE_URL", provider.to_uppercase());
    let app = crate::oauth::oauth_app(db, &[(server, provider)], |c| {
        c.egress_allow = "127.0.0.0/8".into();
        c.provider_overrides.insert(key, format!("{base}/v2"));
    })
    .await;
    let id = crate::oauth::connect(&app, provider, "").await["credential_id"].clone();
    (app, id)
}

async fn an_oauth_credential_is_called_with_its_access_token(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let google = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Google).await;
    let (app, id) = connected(&db, &google, "google", &base).await;

    let res = app
        .client
        .get(format!(
            "{}/integrations/credentials/{id}/proxy/drive/v3/files",
            app.base
        ))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let calls = seen.0.lock().unwrap().clone();
    let authorization = calls[0]["headers"]["authorization"].as_str().unwrap().to_owned();

    assert_eq!(res.status(), StatusCode::CREATED);
    assert_eq!(calls[0]["path"], "drive/v3/files");
    assert!(authorization.starts_with("Bearer "));
    assert!(
        google.access_valid(authorization.trim_start_matches("Bearer ")),
        "the credential's own token"
    );
}
both_backends!(an_oauth_credential_is_called_with_its_access_token);

async fn a_refused_token_is_refreshed_once_and_the_call_sent_again(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let ms = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Microsoft).await;
    let (app, id) = connected(&db, &ms, "microsoft", &base).await;

    let res = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/once401", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let calls = seen.0.lock().unwrap().clone();

    assert_eq!(res.status(), StatusCode::CREATED, "answered after one refresh");
    assert_eq!(calls.len(), 2, "sent twice");
    assert_ne!(
        calls[0]["headers"]["authorization"],
        calls[1]["headers"]["authorization"]
    );
    assert_eq!(ms.with(|i| i.refresh_grants), 1, "one refresh");
}
both_backends!(a_refused_token_is_refreshed_once_and_the_call_sent_again);

async fn the_body_limit_and_the_cap_on_calls_at_once_are_settings(backend: crate::helpers::Backend) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    config.proxy_max_body = 1000;
    config.proxy_concurrency_per_credential = 2;
    let app = TestApp::spawn_with(config).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let default = credgate::config::Config::for_database("sqlite://x.db");

    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /integrations/credentials/{id}/proxy/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 2000\r\nConnection: close\r\n\r\n",
        app.org.engine
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered before the body was sent")
        .unwrap();
    let head = String::from_utf8_lossy(&answer[..n]).to_ascii_lowercase();
    // No length declared: the body is counted as it comes (sent whole at
    // once, so that the answer is read after the request, never cut by it).
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let chunk = format!("1f4\r\n{}\r\n", "y".repeat(500));
    let request = format!(
        "POST /integrations/credentials/{id}/proxy/upload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n{}0\r\n\r\n",
        app.org.engine,
        chunk.repeat(4)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut streamed = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read_to_end(&mut streamed))
        .await
        .expect("answered")
        .unwrap();
    let streamed = String::from_utf8_lossy(&streamed).to_ascii_lowercase();
    let small = app
        .client
        .post(format!("{}/integrations/credentials/{id}/proxy/upload", app.base))
        .bearer_auth(&app.org.engine)
        .body(vec![b'z'; 1000])
        .send()
        .await
        .unwrap()
        .status();
    let calls = (0..3).map(|_| {
        app.client
            .get(format!("{}/integrations/credentials/{id}/proxy/slow", app.base))
            .bearer_auth(&app.org.engine)
            .send()
    });
    let answers = futures::future::join_all(calls).await;
    let statuses: Vec<StatusCode> = answers.iter().map(|r| r.as_ref().unwrap().status()).collect();
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let uploads: Vec<Value> = seen
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|c| c["path"] == "upload")
        .cloned()
        .collect();

    assert_eq!(default.proxy_max_body, 10 * 1024 * 1024, "10 MiB by default");
    assert_eq!(default.proxy_concurrency_per_credential, 32);
    assert!(head.starts_with("http/1.1 413"), "{head}");
    assert!(head.contains("credgate-error: 1"), "{head}");
    assert!(streamed.starts_with("http/1.1 413"), "{streamed}");
    assert!(streamed.contains("credgate-error: 1"), "{streamed}");
    assert_eq!(small, StatusCode::CREATED, "a body at the limit passes");
    assert_eq!(uploads.len(), 1, "only the body within the limit arrived: {uploads:?}");
    assert_eq!(uploads[0]["body"].as_str().unwrap().len(), 1000);
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(statuses.iter().filter(|s| **s == StatusCode::CREATED).count(), 2);
    assert!(
        metrics.contains(r#"credgate_gateway_calls_total{provider="http",status_class="2xx"}"#),
        "{metrics}"
    );
}
both_backends!(the_body_limit_and_the_cap_on_calls_at_once_are_settings);

async fn a_refused_token_is_refreshed_and_a_kept_body_sent_again(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let ms = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Microsoft).await;
    let (app, id) = connected(&db, &ms, "microsoft", &base).await;
    let post = |path: &str, body: Vec<u8>| {
        app.client
            .post(format!("{}/integrations/credentials/{id}/proxy/{path}", app.base))
            .bearer_auth(&app.org.engine)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };

    let kept = post("once401", br#"{"subject":"hello"}"#.to_vec()).await.unwrap();
    let kept_status = kept.status();
    let after_kept = seen.0.lock().unwrap().clone();
    let refreshes_after_kept = ms.with(|i| i.refresh_grants);
    // Over 1 MiB: not kept, so the service's 401 is the answer.
    let large = post("always401", vec![b'q'; 1024 * 1024 + 1]).await.unwrap();
    let large_status = large.status();
    let large_error = large.headers().get("credgate-error").cloned();
    let large_body = large.text().await.unwrap();
    let calls = seen.0.lock().unwrap().clone();

    assert_eq!(kept_status, StatusCode::CREATED, "answered after one refresh");
    assert_eq!(after_kept.len(), 2, "sent twice");
    assert_eq!(after_kept[1]["body"], r#"{"subject":"hello"}"#, "the same body again");
    assert_eq!(after_kept[1]["headers"]["content-type"], "application/json");
    assert_ne!(
        after_kept[0]["headers"]["authorization"],
        after_kept[1]["headers"]["authorization"]
    );
    assert_eq!(refreshes_after_kept, 1, "one refresh");
    assert_eq!(large_status, StatusCode::UNAUTHORIZED, "the service's answer");
    assert!(large_error.is_none(), "not credgate's own error");
    assert_eq!(large_body, "refused");
    assert_eq!(calls.len(), 3, "the large body was sent once");
    assert_eq!(calls[2]["body"].as_str().unwrap().len(), 1024 * 1024 + 1);
    assert_eq!(
        ms.with(|i| i.refresh_grants),
        1,
        "no refresh for a call it could not repeat"
    );
}
both_backends!(a_refused_token_is_refreshed_and_a_kept_body_sent_again);

/// The credential's `credential.proxy` events once each has its outcome
/// (written just after the service answers).
pub async fn settled_uses(app: &TestApp, id: &str, count: usize) -> Vec<Value> {
    for _ in 0..100 {
        let uses = events_of(app, id, "credential.proxy").await;
        if uses.len() == count && uses.iter().all(|u| u["detail"].get("latency_ms").is_some()) {
            return uses;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the calls' outcomes were never recorded");
}

async fn each_call_is_a_use_with_the_services_status_and_latency(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let nowhere = format!("http://{}", crate::ports::unused_addr());
    let gone = http_credential(&app, &nowhere, json!({"scheme": "bearer", "token": "t"})).await;
    let call = |id: &str, path: &str| {
        app.client
            .get(format!(
                "{}/integrations/credentials/{id}/proxy/{path}?secret=no",
                app.base
            ))
            .bearer_auth(&app.org.engine)
            .header("credgate-workflow-id", "wf-1")
            .header("credgate-run-id", "run-1")
            .send()
    };

    let made = call(&id, "items").await.unwrap().status();
    let refused = call(&id, "always401").await.unwrap().status();
    let unreachable = call(&gone, "items").await.unwrap();
    let uses = settled_uses(&app, &id, 2).await;
    let failed = settled_uses(&app, &gone, 1).await;
    let (_, usage) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/usage"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(made, StatusCode::CREATED);
    assert_eq!(refused, StatusCode::UNAUTHORIZED);
    assert_eq!(unreachable.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(unreachable.headers()["credgate-error"], "1");
    let by_path = |path: &str| uses.iter().find(|u| u["detail"]["path"] == path).unwrap().clone();
    let ok = by_path("/items");
    assert_eq!(ok["detail"]["status"], 201, "{ok}");
    assert!(ok["detail"]["latency_ms"].as_u64().is_some(), "{ok}");
    assert_eq!(ok["detail"]["method"], "GET");
    assert_eq!(ok["detail"]["workflow_id"], "wf-1");
    assert_eq!(ok["detail"]["run_id"], "run-1");
    assert_eq!(ok["outcome"], "success");
    assert!(!ok.to_string().contains("secret=no"), "no query: {ok}");
    let no = by_path("/always401");
    assert_eq!(no["detail"]["status"], 401);
    assert_eq!(no["outcome"], "failure");
    assert_eq!(failed[0]["detail"]["status"], Value::Null);
    assert_eq!(failed[0]["detail"]["error"], "unreachable", "{}", failed[0]);
    assert_eq!(failed[0]["outcome"], "failure");
    assert_eq!(usage["uses_total"], 2, "{usage}");
    assert_eq!(usage["workflows"][0]["workflow_id"], "wf-1");
    assert_eq!(usage["workflows"][0]["uses"], 2);
}
both_backends!(each_call_is_a_use_with_the_services_status_and_latency);

/// The engine gives up on a call while the service is still answering (its
/// own timeout, a cancelled run): the use still gets its outcome.
async fn a_call_the_engine_abandons_still_gets_its_outcome(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;

    // The stand-in answers `slow` after 3 s; the engine waits 500 ms.
    let gave_up = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/slow", app.base))
        .bearer_auth(&app.org.engine)
        .timeout(std::time::Duration::from_millis(500))
        .send()
        .await;
    let uses = settled_uses(&app, &id, 1).await;

    assert!(gave_up.unwrap_err().is_timeout());
    assert_eq!(seen.0.lock().unwrap().len(), 1, "the call reached the service");
    let detail = &uses[0]["detail"];
    assert_eq!(detail["error"], "abandoned", "{}", uses[0]);
    assert_eq!(detail["status"], Value::Null);
    assert!(detail["latency_ms"].as_u64().is_some_and(|ms| ms >= 400), "{detail}");
    assert_eq!(uses[0]["outcome"], "failure");
}
both_backends!(a_call_the_engine_abandons_still_gets_its_outcome);

/// A process's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// Measured on a `credgate serve` process of its own, so that no other
/// test's memory counts.
async fn a_200_mib_download_streams_through_with_memory_flat(backend: crate::helpers::Backend) {
    use secrecy::ExposeSecret;
    let db = TestDb::new(backend).await;
    let (base, _) = upstream().await;
    let keys = credgate::crypto::MasterKeyring::generate_key();
    let keys = keys.expose_secret();
    crate::cli::migrated(&db, Some(keys));
    let org = crate::cli::stdout_line(&crate::cli::credgate(&db, Some(keys), &["org", "create", "Big"]));
    let key = |role: &str| {
        crate::cli::stdout_line(&crate::cli::credgate(
            &db,
            Some(keys),
            &["api-key", "create", "--org", &org, "--role", role],
        ))
    };
    let (admin, engine) = (key("admin"), key("engine"));
    let (child, addr) = crate::operator::serve(&db, keys, &[], &[("CREDGATE_EGRESS_ALLOW", "127.0.0.0/8")]);
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("http://{addr}/integrations/credentials"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Big", "provider": "http", "auth_type": "api_key",
                      "fields": {"base_url": format!("{base}/v2"), "scheme": "bearer", "token": "t"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let before = rss(child.id());

    let mut res = client
        .get(format!("http://{addr}/integrations/credentials/{id}/proxy/big"))
        .bearer_auth(&engine)
        .send()
        .await
        .unwrap();
    let (mut total, mut peak) = (0u64, before);
    while let Some(chunk) = res.chunk().await.unwrap() {
        total += chunk.len() as u64;
        if total % (8 << 20) < chunk.len() as u64 {
            peak = peak.max(rss(child.id()));
        }
    }
    crate::operator::stop(child);

    assert_eq!(total, 200 << 20);
    assert!(
        peak.saturating_sub(before) < 32 << 20,
        "the server grew by {} MiB while 200 MiB streamed through it",
        peak.saturating_sub(before) >> 20
    );
}
both_backends!(a_200_mib_download_streams_through_with_memory_flat);

/// A server stopping keeps what its last calls queued: once its requests
/// are done it waits for their outcomes to be written (a group of
/// outcomes waits 25 ms for more, and the process ends with the runtime).
async fn a_stopping_server_writes_its_last_calls_outcomes_before_it_ends(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    // A second replica on the same database, stopped on demand.
    let services = credgate::app::Services::init_with_clock(app.config.clone(), app.clock.clone())
        .await
        .unwrap();
    let replica = credgate::app::Application::from_services(services).await.unwrap();
    let replica_base = format!("http://127.0.0.1:{}", replica.port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(replica.run_until(async {
        let _ = stopped.await;
    }));

    let answer = app
        .client
        .get(format!("{replica_base}/integrations/credentials/{id}/proxy/last"))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    answer.bytes().await.unwrap();
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
    // Read at once: the replica has ended, and its outcome is written.
    let uses = events_of(&app, &id, "credential.proxy").await;

    assert_eq!(uses.len(), 1);
    assert_eq!(uses[0]["detail"]["status"], 201, "{}", uses[0]);
}
both_backends!(a_stopping_server_writes_its_last_calls_outcomes_before_it_ends);

/// Waits until `slots` count `replicas` live replicas (each counts at its
/// heartbeat, every 2 s).
async fn until_replicas(state: &credgate::http::AppState, replicas: usize) {
    for _ in 0..100 {
        if state.gateway.replicas() == replicas {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!(
        "the replica counted {} live replicas, not {replicas}",
        state.gateway.replicas()
    );
}

/// `n` slow calls at once through `id` on `base`: how many went through
/// (201) and how many were refused for the cap (429).
async fn slow_calls(app: &TestApp, base: &str, id: &str, n: usize) -> (usize, usize) {
    let calls = (0..n).map(|_| {
        app.client
            .get(format!("{base}/integrations/credentials/{id}/proxy/slow"))
            .bearer_auth(&app.org.engine)
            .send()
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    let passed = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!(passed + refused, n, "{statuses:?}");
    (passed, refused)
}

/// The cap on a credential's calls in flight is the deployment's, not each
/// replica's: the live replicas (counted by their heartbeats) share it. A
/// replica that stops gives its share back; one that crashed is forgotten
/// once it has not been seen for 10 s.
async fn the_replicas_share_the_cap_on_a_credentials_calls_in_flight(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    config.proxy_concurrency_per_credential = 4;
    let app = TestApp::spawn_with(config).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let services = credgate::app::Services::init_with_clock(app.config.clone(), app.clock.clone())
        .await
        .unwrap();
    let replica = credgate::app::Application::from_services(services).await.unwrap();
    let replica_base = format!("http://127.0.0.1:{}", replica.port());
    let replica_state = replica.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(replica.run_until(async {
        let _ = stopped.await;
    }));
    until_replicas(&app.state, 2).await;
    until_replicas(&replica_state, 2).await;

    // Four calls at each replica at once, eight against a cap of four.
    let (here, there) = tokio::join!(
        slow_calls(&app, &app.base, &id, 4),
        slow_calls(&app, &replica_base, &id, 4)
    );
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    stop.send(()).unwrap();
    serving.await.unwrap().unwrap();
    until_replicas(&app.state, 1).await;
    let alone = slow_calls(&app, &app.base, &id, 5).await;
    // A replica that crashed leaves its row: counted until it is 10 s old.
    sqlx::query("INSERT INTO gateway_replicas (id, seen_at) VALUES ('crashed', $1)")
        .bind(app.clock.now())
        .execute(&app.sql().await)
        .await
        .unwrap();
    until_replicas(&app.state, 2).await;
    let beside_the_crashed = slow_calls(&app, &app.base, &id, 3).await;
    app.clock.advance(11);
    until_replicas(&app.state, 1).await;

    assert_eq!(here, (2, 2), "this replica's share of four, with two live");
    assert_eq!(there, (2, 2), "the other replica's share");
    assert!(metrics.contains("credgate_gateway_replicas 2"), "{metrics}");
    assert_eq!(alone, (4, 1), "the whole cap once the other replica has stopped");
    assert_eq!(beside_the_crashed, (2, 1), "a crashed replica counts until it expires");
}
both_backends!(the_replicas_share_the_cap_on_a_credentials_calls_in_flight);

/// The engine gives up on a call while its use is being written (the
/// audit log's writes held up): the use is written all the same, and the
/// call, which never left, gets its outcome, `abandoned`, not none (a use
/// without one reads as a call that went through).
async fn a_call_the_engine_abandons_while_its_use_is_written_gets_its_outcome(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;

    let held = crate::outage::denials::hold_audit_writes(&app, backend).await;
    let gave_up = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/items", app.base))
        .bearer_auth(&app.org.engine)
        .timeout(std::time::Duration::from_millis(300))
        .send()
        .await;
    // Long enough for the server to see the engine gone.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    crate::outage::denials::release(held).await;
    let uses = settled_uses(&app, &id, 1).await;

    assert!(gave_up.unwrap_err().is_timeout());
    assert!(seen.0.lock().unwrap().is_empty(), "the call never left");
    let detail = &uses[0]["detail"];
    assert_eq!(detail["error"], "abandoned", "{}", uses[0]);
    assert_eq!(detail["status"], Value::Null);
    assert_eq!(detail["path"], "/items");
    assert_eq!(uses[0]["outcome"], "failure");
}
both_backends!(a_call_the_engine_abandons_while_its_use_is_written_gets_its_outcome);

/// Many engines calling at once and all hanging up at the same moment, as
/// a load generator does when its run ends: each use recorded gets an
/// outcome, whatever step its call had reached (the use still being
/// written, written but not yet taken up by its request, or the service
/// answering).
async fn engines_that_all_hang_up_at_once_leave_no_use_without_its_outcome(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let url = format!("{}/integrations/credentials/{id}/proxy/items", app.base);

    for _ in 0..3 {
        let engines: Vec<_> = (0..24)
            .map(|_| {
                let (client, url, key) = (reqwest::Client::new(), url.clone(), app.org.engine.clone());
                tokio::spawn(async move {
                    loop {
                        let _ = client.get(&url).bearer_auth(&key).send().await;
                    }
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        for engine in &engines {
            engine.abort();
        }
    }
    let sql = app.sql().await;
    let mut missing = -1;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        missing = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_events e WHERE e.action = 'credential.proxy' \
             AND NOT EXISTS (SELECT 1 FROM use_outcomes o WHERE o.event_id = e.id)",
        )
        .fetch_one(&sql)
        .await
        .unwrap();
        if missing == 0 {
            break;
        }
    }
    let uses: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'credential.proxy'")
        .fetch_one(&sql)
        .await
        .unwrap();

    assert!(uses > 100, "the engines made calls: {uses}");
    assert_eq!(missing, 0, "uses without an outcome, of {uses}");
}
both_backends!(engines_that_all_hang_up_at_once_leave_no_use_without_its_outcome);

/// A gateway call writes one line at `info`, as any request does: the
/// request's own, naming the credential and its provider (the call used to
/// write a second line of its own). No secret in it.
async fn a_gateway_call_is_one_log_line_naming_its_credential(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, _seen) = upstream().await;
    let app = gateway_app(&db).await;
    let token = sentinel();
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": token})).await;
    let answer = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/items?page=2", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    assert_eq!(answer.text().await.unwrap(), "made");
    let logs = captured_logs();
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["level"] == "INFO" && l.to_string().contains(&id))
        .collect();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    let line = &lines[0];
    assert_eq!(line["fields"]["message"], "request", "{line}");
    assert_eq!(line["fields"]["status"], 201, "{line}");
    assert_eq!(line["span"]["credential"], id.as_str(), "{line}");
    assert_eq!(line["span"]["provider"], "http", "{line}");
    assert_eq!(
        line["span"]["route"], "/integrations/credentials/{id}/proxy/{*path}",
        "{line}"
    );
    assert!(!logs.contains(&token), "a secret in the logs");
    assert!(!logs.contains("page=2"), "a query string in the logs");
}
both_backends!(a_gateway_call_is_one_log_line_naming_its_credential);
