//! Connections are bounded: half a request head, a quiet kept-alive
//! connection, a client speaking HTTP/2 and more connections than the cap
//! allows cannot hold credgate's slots.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{test_config, Backend, TestApp, TestDb};

/// Reads until the server closes the connection or `limit` passes; returns
/// what was read and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: std::time::Duration) -> (String, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&got).into_owned(), true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&got).into_owned(), false),
        }
    }
}

#[test]
fn a_client_that_sends_one_header_byte_a_second_is_cut_off() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let mut config = test_config(&db);
        config.header_read_timeout_secs = 2;
        let app = TestApp::spawn_with(config).await;
        let addr = app.base.trim_start_matches("http://").to_owned();

        let mut slow = TcpStream::connect(&addr).await.unwrap();
        let started = std::time::Instant::now();
        let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        let mut cut_off_after = None;
        for byte in head {
            if slow.write_all(&[*byte]).await.is_err() {
                cut_off_after = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            if started.elapsed() > Duration::from_secs(8) {
                break;
            }
        }
        let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(2)).await;

        // A kept-alive connection that goes quiet is closed as well.
        let mut idle = TcpStream::connect(&addr).await.unwrap();
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (answer, idle_closed) = read_until_closed(&mut idle, Duration::from_secs(5)).await;

        assert!(closed || cut_off_after.is_some(), "the slow client was not cut off");
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "cut off after {:?}",
            started.elapsed()
        );
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(idle_closed, "an idle kept-alive connection is closed after the timeout");
    });
}

/// What arrives within `limit` (until the first read that returns data).
async fn first_bytes(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut buf = [0u8; 4096];
    match tokio::time::timeout(limit, stream.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";

#[test]
fn past_the_connection_cap_the_next_connection_waits_until_one_closes() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let mut config = test_config(&db);
        config.max_connections = 4;
        let app = TestApp::spawn_with(config).await;
        let addr = app.base.trim_start_matches("http://").to_owned();
        let mut held = Vec::new();
        let mut served = Vec::new();
        for _ in 0..4 {
            let mut conn = TcpStream::connect(&addr).await.unwrap();
            conn.write_all(HEALTHZ).await.unwrap();
            served.push(first_bytes(&mut conn, Duration::from_secs(5)).await);
            held.push(conn); // kept alive, idle
        }

        let mut fifth = TcpStream::connect(&addr).await.unwrap(); // the kernel's backlog takes it
        fifth.write_all(HEALTHZ).await.unwrap();
        let while_full = first_bytes(&mut fifth, Duration::from_millis(1500)).await;
        drop(held.remove(0));
        let after_one_closed = first_bytes(&mut fifth, Duration::from_secs(5)).await;
        let mut sixth = TcpStream::connect(&addr).await.unwrap();
        sixth.write_all(HEALTHZ).await.unwrap();
        let sixth_while_full = first_bytes(&mut sixth, Duration::from_millis(500)).await;
        drop(fifth);
        let sixth_after = first_bytes(&mut sixth, Duration::from_secs(5)).await;

        assert!(
            served
                .iter()
                .all(|a| a.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 200"))),
            "{served:?}"
        );
        assert_eq!(
            while_full, None,
            "the fifth connection is not served while four are open"
        );
        assert!(
            after_one_closed
                .as_deref()
                .is_some_and(|a| a.starts_with("HTTP/1.1 200")),
            "served once one closed: {after_one_closed:?}"
        );
        assert_eq!(sixth_while_full, None, "the cap holds again");
        assert!(
            sixth_after.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 200")),
            "{sixth_after:?}"
        );
    });
}

#[test]
fn a_client_speaking_http2_is_refused_and_its_connection_closed() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        let addr = app.base.trim_start_matches("http://").to_owned();
        let mut h2 = TcpStream::connect(&addr).await.unwrap();
        let started = std::time::Instant::now();

        // The HTTP/2 connection preface, then an empty SETTINGS frame.
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        let (answer, closed) = read_until_closed(&mut h2, Duration::from_secs(5)).await;

        assert!(closed, "the connection is closed, not kept for HTTP/2: {answer:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "closed after {:?}",
            started.elapsed()
        );
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 4") || answer.starts_with("HTTP/1.1 5"),
            "no HTTP/2 SETTINGS frame: {answer:?}"
        );
    });
}
