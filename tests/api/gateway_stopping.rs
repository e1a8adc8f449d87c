//! A server stopping while a gateway call it was preparing is still being
//! written: it ends as a process does (its runtime dropped, and with it
//! whatever it left running), so only what it waited for is kept.

use serde_json::{json, Value};

use crate::both_backends;
use crate::gateway::{gateway_app, http_credential, settled_uses, upstream};
use crate::helpers::TestDb;
use crate::outage::denials::{hold_audit_writes, release};

/// The engine hangs up while its call's use is being written (the audit
/// log's writes held up), then the replica stops: it waits for that
/// preparation to end and for the `abandoned` outcome it queues, so the
/// use is never left reading as a call that went through.
async fn a_stopping_server_waits_for_the_calls_it_was_still_preparing(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let app = gateway_app(&db).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    // A second replica on the same database, on a runtime of its own that
    // is dropped when the replica has stopped, as a process ends.
    let (config, clock) = (app.config.clone(), app.clock.clone());
    let (port, replica_port) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let process = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let services = credgate::app::Services::init_with_clock(config, clock).await.unwrap();
            let replica = credgate::app::Application::from_services(services).await.unwrap();
            port.send((replica.port(), replica.state().clone())).unwrap();
            replica
                .run_until(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        drop(runtime);
    });
    let (replica_port, replica_state) = replica_port.recv().unwrap();
    let replica = format!("http://127.0.0.1:{replica_port}");

    let held = hold_audit_writes(&app, backend).await;
    let (client, url, key) = (
        app.client.clone(),
        format!("{replica}/integrations/credentials/{id}/proxy/items"),
        app.org.engine.clone(),
    );
    let engine = tokio::spawn(async move { client.get(url).bearer_auth(key).send().await });
    // The call has its slot: its use is about to be written, and waits.
    let mut taken = false;
    for _ in 0..200 {
        taken = replica_state.gateway.credentials_in_flight() == 1;
        if taken {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(taken, "the call reached the replica");
    engine.abort();
    // Long enough for the replica to see the engine gone.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.send(()).unwrap();
    // The replica is stopping (its requests are done) while the use waits.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    release(held).await;
    tokio::task::spawn_blocking(move || process.join().unwrap())
        .await
        .unwrap();
    let sql = app.sql().await;
    let (mut uses, mut missing) = (0, 0);
    for _ in 0..50 {
        uses = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'credential.proxy'")
            .fetch_one(&sql)
            .await
            .unwrap();
        missing = sqlx::query_scalar(
            "SELECT COUNT(*) FROM audit_events e WHERE e.action = 'credential.proxy' \
             AND NOT EXISTS (SELECT 1 FROM use_outcomes o WHERE o.event_id = e.id)",
        )
        .fetch_one(&sql)
        .await
        .unwrap();
        if uses > 0 && missing == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((uses, missing), (1, 0), "(uses, uses without an outcome)");
    let uses = settled_uses(&app, &id, 1).await;

    assert!(seen.0.lock().unwrap().is_empty(), "the call never left");
    let detail = &uses[0]["detail"];
    assert_eq!(detail["error"], "abandoned", "{}", uses[0]);
    assert_eq!(detail["status"], Value::Null);
}
both_backends!(a_stopping_server_waits_for_the_calls_it_was_still_preparing);
