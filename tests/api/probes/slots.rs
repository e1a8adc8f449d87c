//! Concurrency caps of the PostgreSQL and HTTP probes: one organization's
//! probes at a server that never answers take at most their share of slots;
//! the others wait, and end with a `timeout` that says they found no slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use credgate::probes::{llm, postgres, ApiBaseUrls, Pool, ProbeContext, ProbeResult, ProbeTimeouts};
use serde_json::json;

use super::{code, loopback_policy, ORG};

/// A loopback server that accepts, reads and never answers; counts the
/// connections it accepted.
async fn silent_server() -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut sink = [0; 4096];
                while tokio::io::AsyncReadExt::read(&mut socket, &mut sink).await.unwrap_or(0) > 0 {}
            });
        }
    });
    (port, accepted)
}

/// Eight probes of one organization hold their slots for `HOLD` at a
/// silent server; four more of the same organization, started a moment
/// later with a shorter limit (same slots: a clone of the context), must
/// get none.
const HOLD: Duration = Duration::from_millis(1500);

fn contexts() -> (ProbeContext, ProbeContext) {
    let timeouts = ProbeTimeouts {
        connect: Duration::from_secs(2),
        stage: Duration::from_secs(10),
        total: HOLD,
    };
    let holders = ProbeContext::new(loopback_policy(), timeouts, ApiBaseUrls::default()).unwrap();
    let mut waiters = holders.clone();
    waiters.timeouts.total = Duration::from_millis(400);
    (holders, waiters)
}

/// Runs eight holders and, 100 ms later, four waiters; returns both results.
async fn hold_and_wait<F, Fut>(probe: F) -> (Vec<ProbeResult>, Vec<ProbeResult>)
where
    F: Fn(bool) -> Fut,
    Fut: std::future::Future<Output = ProbeResult>,
{
    let holders = futures::future::join_all((0..8).map(|_| probe(true)));
    let waiters = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        futures::future::join_all((0..4).map(|_| probe(false))).await
    };
    tokio::join!(holders, waiters)
}

fn assert_held_and_refused(holders: &[ProbeResult], waiters: &[ProbeResult]) {
    for result in holders {
        assert_eq!(code(result), "timeout", "{result:?}");
        assert!(result.latency_ms >= HOLD.as_millis() as u64, "{result:?}");
    }
    for result in waiters {
        assert_eq!(code(result), "timeout", "{result:?}");
        let message = &result.error.as_ref().unwrap().message;
        assert!(message.contains("slot"), "{message}");
    }
}

#[tokio::test]
async fn one_organization_runs_at_most_eight_postgres_probes_at_once() {
    let (port, accepted) = silent_server().await;
    let (holders, waiters) = contexts();
    let req: postgres::PostgresRequest = serde_json::from_value(json!({
        "host": "127.0.0.1", "port": port, "database": "db", "username": "u", "sslmode": "disable",
    }))
    .unwrap();

    let (held, refused) =
        hold_and_wait(|hold| postgres::probe(if hold { &holders } else { &waiters }, &ORG, &req)).await;

    assert_eq!(accepted.load(Ordering::SeqCst), Pool::Postgres.limits().1);
    assert_held_and_refused(&held, &refused);
    assert_eq!(holders.free_slots(Pool::Postgres), Pool::Postgres.limits().0);
}

#[tokio::test]
async fn one_organization_runs_at_most_eight_http_probes_at_once() {
    let (port, accepted) = silent_server().await;
    let (holders, waiters) = contexts();
    let req: llm::LlmRequest = serde_json::from_value(json!({
        "provider_type": "openai_compatible", "api_key": "sk-SENTINEL-slots",
        "base_url": format!("http://127.0.0.1:{port}/v1"),
    }))
    .unwrap();

    let (held, refused) = hold_and_wait(|hold| llm::probe(if hold { &holders } else { &waiters }, &ORG, &req)).await;

    assert_eq!(accepted.load(Ordering::SeqCst), Pool::Http.limits().1);
    assert_held_and_refused(&held, &refused);
}
