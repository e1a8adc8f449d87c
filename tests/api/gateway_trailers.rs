//! Trailers: the fields a service sends after a chunked answer's body
//! (gRPC-Web's status, a digest of the streamed body) reach the engine that
//! asks for them (`TE: trailers`), under the same rules as the answer's
//! header: nothing never returned, nothing that would pass for credgate's
//! own, no secret the call placed.

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::both_backends;
use crate::gateway::{gateway_app, http_credential};
use crate::helpers::{sentinel, TestDb};

/// A service that answers each request with a short chunked body and then
/// trailers, as a plain HTTP/1.1 server writes them (whatever the request's
/// `TE`): one writing the request's `Authorization` back, a `Set-Cookie`,
/// a `Credgate-Error`, and one of its own that must pass.
async fn trailing_service() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let head = read_head(&mut socket).await;
                let authorization = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("authorization")
                            .then(|| value.trim().to_owned())
                    })
                    .unwrap_or_default();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\
                     trailer: x-echo, x-checksum, set-cookie, credgate-error\r\nconnection: close\r\n\r\n\
                     5\r\nhello\r\n0\r\nx-echo: you sent {authorization}\r\nx-checksum: 5d41402a\r\n\
                     set-cookie: session=service\r\ncredgate-error: 1\r\n\r\n"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    base
}

/// A request's or an answer's head, up to its blank line.
async fn read_head(socket: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if socket.read(&mut byte).await.unwrap_or(0) == 0 {
            break;
        }
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// The whole of credgate's answer to a proxied `GET` whose engine asks for
/// trailers, as the bytes on the wire (the engine's HTTP clients hand
/// trailers on, but not all expose them).
async fn raw_call(base: &str, path: &str, engine_key: &str) -> String {
    let address = base.trim_start_matches("http://");
    let mut socket = TcpStream::connect(address).await.unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nhost: {address}\r\nauthorization: Bearer {engine_key}\r\n\
         te: trailers\r\nconnection: close\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), socket.read_to_end(&mut answer))
        .await
        .expect("the answer ends")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// What follows the last chunk (`0\r\n`) of a chunked answer: its trailers.
fn trailers_of(answer: &str) -> &str {
    let (_, body) = answer.split_once("\r\n\r\n").expect("a head");
    let (_, after) = body.split_once("\r\n0\r\n").expect("a last chunk");
    after
}

/// A service's trailers pass to the engine as its headers do: the one the
/// service writes its request's secret back into is dropped, as are
/// `Set-Cookie` and `Credgate-Error`; the service's own fields pass.
async fn an_answers_trailers_pass_as_its_headers_do(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let base = trailing_service().await;
    let app = gateway_app(&db).await;
    let token = sentinel();
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": token})).await;

    let answer = raw_call(
        &app.base,
        &format!("/integrations/credentials/{id}/proxy/items"),
        &app.org.engine,
    )
    .await;

    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(!answer.contains(&token), "the secret reached the engine: {answer}");
    let trailers = trailers_of(&answer).to_ascii_lowercase();
    assert!(trailers.contains("x-checksum: 5d41402a"), "{answer}");
    assert!(!trailers.contains("x-echo"), "{answer}");
    assert!(!trailers.contains("set-cookie"), "{answer}");
    assert!(!trailers.contains("credgate-error"), "{answer}");
    assert!(answer.contains("\r\n5\r\nhello\r\n"), "{answer}");
}
both_backends!(an_answers_trailers_pass_as_its_headers_do);
