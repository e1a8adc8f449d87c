//! The PostgreSQL probe against hostile stand-ins: one that logs the client
//! in and then never answers its query, one that announces a message of
//! about 2 GiB and streams it. A probe closes its socket whenever it ends,
//! and reads a bounded number of bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use credgate::probes::postgres::{probe, PostgresRequest};
use credgate::probes::{ApiBaseUrls, ProbeContext, ProbeTimeouts};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::own_process::{in_own_process, open_fds, settles_to, status_kib};
use super::{code, loopback_policy, ORG};

#[derive(Clone, Copy)]
enum Mode {
    /// Logs in (AuthenticationOk, ReadyForQuery), then never answers.
    Stall,
    /// Answers the startup message with a header announcing ~2 GiB, then
    /// sends zeros for as long as the client reads.
    Huge,
}

/// Serves `mode` on a loopback port until the test ends; counts the
/// connections it accepted.
async fn stand_in(mode: Mode) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(socket, mode));
        }
    });
    (port, accepted)
}

async fn serve(mut socket: TcpStream, mode: Mode) -> std::io::Result<()> {
    const SSL_REQUEST: i32 = 80_877_103;
    let mut len = socket.read_i32().await?;
    let mut code = socket.read_i32().await?;
    if code == SSL_REQUEST {
        socket.write_all(b"N").await?;
        len = socket.read_i32().await?;
        code = socket.read_i32().await?;
    }
    let _ = code;
    let mut startup = vec![0; usize::try_from(len - 8).unwrap_or(0)];
    socket.read_exact(&mut startup).await?;
    match mode {
        Mode::Stall => {
            socket.write_all(b"R\0\0\0\x08\0\0\0\0Z\0\0\0\x05I").await?;
            // Read the query and everything after it; answer nothing. The
            // socket closes here only when the client closes its side.
            let mut sink = [0; 4096];
            while socket.read(&mut sink).await? > 0 {}
        }
        Mode::Huge => {
            socket.write_all(b"R\x7f\xff\xff\xf0").await?;
            let zeros = vec![0; 64 * 1024];
            loop {
                socket.write_all(&zeros).await?;
            }
        }
    }
    Ok(())
}

fn request(port: u16) -> PostgresRequest {
    serde_json::from_value(json!({
        "host": "127.0.0.1", "port": port, "database": "db", "username": "user",
        "password": "SENTINEL-pg-hostile", "sslmode": "disable",
    }))
    .unwrap()
}

/// A whole probe may take `total`, each stage far longer: only the probe's
/// own limit can end a stalled query in time.
fn hostile_ctx(total: Duration) -> ProbeContext {
    let timeouts = ProbeTimeouts {
        connect: Duration::from_secs(3),
        stage: Duration::from_secs(30),
        total,
    };
    ProbeContext::new(loopback_policy(), timeouts, ApiBaseUrls::default()).unwrap()
}

#[test]
fn fifty_probes_whose_query_is_never_answered_leave_no_descriptor_open() {
    in_own_process(
        module_path!(),
        "fifty_probes_whose_query_is_never_answered_leave_no_descriptor_open",
        || async {
            let (port, accepted) = stand_in(Mode::Stall).await;
            let ctx = hostile_ctx(Duration::from_millis(700));
            let req = request(port);
            // Whatever a first probe sets up once (and keeps) is not a leak.
            probe(&ctx, &ORG, &req).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let before = open_fds();

            let mut results = Vec::new();
            for _ in 0..50 / 10 {
                // Two organizations, so that each of the ten gets a slot.
                let two = [super::org("org-a"), super::org("org-b")];
                let batch = (0..10).map(|i| probe(&ctx, &two[i % 2], &req));
                results.extend(futures::future::join_all(batch).await);
            }
            let after = settles_to(before, Duration::from_secs(2), open_fds).await;
            println!("postgres stall: open fds {before} -> {after} after 50 probes");

            for result in &results {
                assert_eq!(code(result), "timeout", "{result:?}");
            }
            assert_eq!(
                accepted.load(Ordering::SeqCst),
                1 + 50,
                "every probe reached the server"
            );
            assert_eq!(after, before, "descriptors left open by 50 probes");
        },
    );
}

#[test]
fn a_message_of_two_gibibytes_is_a_protocol_failure_without_memory_growth() {
    in_own_process(
        module_path!(),
        "a_message_of_two_gibibytes_is_a_protocol_failure_without_memory_growth",
        || async {
            let (port, _) = stand_in(Mode::Huge).await;
            let ctx = hostile_ctx(Duration::from_secs(3));
            let peak_before = status_kib("VmHWM");

            let result = probe(&ctx, &ORG, &request(port)).await;
            let peak_after = status_kib("VmHWM");
            println!("postgres huge message: VmHWM {peak_before} -> {peak_after} KiB, {result:?}");

            assert!(
                peak_after < peak_before + 32 * 1024,
                "peak RSS grew from {peak_before} to {peak_after} KiB"
            );
            assert_eq!(code(&result), "protocol", "{result:?}");
            assert!(result.error.unwrap().message.contains("1 MiB"));
        },
    );
}
