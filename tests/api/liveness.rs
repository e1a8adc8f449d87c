//! What operators watch: the worker's heartbeat in `/metrics`, `/readyz`
//! asking the store at most once a second, and the worker's own schedule of
//! housekeeping (expired OAuth states go without anyone calling the purge).

use std::sync::Arc;
use std::time::Duration;

use credgate::oauth::worker::{run_loop, run_worker, Step};
use reqwest::StatusCode;

use crate::helpers::{Backend, TestApp, TestDb};

const LAST_STEP: &str = "credgate_worker_last_step_timestamp_seconds";

/// Runs the worker loop for exactly one step that does nothing.
async fn one_step(app: &TestApp) {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    run_loop(&app.state.ctx, stop_rx, move || {
        let stop_tx = stop_tx.clone();
        async move {
            let _ = stop_tx.send(true);
            Ok(Step::default())
        }
    })
    .await;
}

#[test]
fn the_worker_heartbeat_metric_shows_when_its_last_step_finished() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        let before_any = app.metric(LAST_STEP).await;
        app.clock.advance(1000); // the worker's clock, not the wall clock

        let first_at = app.clock.now();
        one_step(&app).await;
        let first = app.metric(LAST_STEP).await;
        app.clock.advance(500);
        let second_at = app.clock.now();
        one_step(&app).await;
        let second = app.metric(LAST_STEP).await;

        assert_eq!(before_any, 0, "no step yet");
        assert!((first_at..first_at + 2).contains(&first), "{first} vs {first_at}");
        assert!((second_at..second_at + 2).contains(&second), "{second} vs {second_at}");
        assert_eq!(second, app.state.worker.last_step(), "the metric and readiness agree");
    });
}

async fn readiness_asks_the_store_at_most_once_a_second(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let checks = "credgate_readiness_store_checks_total";
    let ready = || {
        let url = format!("{}/readyz", app.base);
        let client = app.client.clone();
        async move { client.get(url).send().await.unwrap().status() }
    };
    let before = app.metric(checks).await;

    let burst = futures::future::join_all((0..10).map(|_| ready())).await;
    let after_burst = app.metric(checks).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = ready().await;
    let after_a_second = app.metric(checks).await;

    assert!(burst.iter().all(|s| *s == StatusCode::OK), "{burst:?}");
    assert_eq!(
        after_burst - before,
        1,
        "ten readiness checks within a second, one store ping"
    );
    assert_eq!(later, StatusCode::OK);
    assert_eq!(after_a_second - before, 2, "a second later the store is asked again");
}
crate::both_backends!(readiness_asks_the_store_at_most_once_a_second);

async fn pending_states(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM oauth_states")
        .fetch_one(&app.sql().await)
        .await
        .unwrap()
}

/// Waits (at most `secs`) until no OAuth state is left.
async fn purged_within(app: &TestApp, secs: u64) -> bool {
    for _ in 0..secs * 10 {
        if pending_states(app).await == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn the_running_worker_purges_expired_oauth_states_on_its_own_schedule(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Google).await;
    let app = crate::oauth::oauth_app(&db, &[(&google, "google")], |_| {}).await;
    for _ in 0..3 {
        crate::oauth::authorize(&app, "google", "").await;
    }
    app.clock.advance(credgate::oauth::STATE_TTL_SECS + 1);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(run_worker(app.state.ctx.clone(), stop_rx));

    let first_round = purged_within(&app, 10).await;
    crate::oauth::authorize(&app, "google", "").await;
    let fresh_one_kept = pending_states(&app).await;
    app.clock.advance(credgate::oauth::STATE_TTL_SECS + 1); // and past the purge interval
    let second_round = purged_within(&app, 10).await;
    let _ = stop_tx.send(true);
    worker.await.unwrap();

    assert!(first_round, "the worker's first step purges what expired");
    assert_eq!(fresh_one_kept, 1, "a state that has not expired stays");
    assert!(
        second_round,
        "a minute (of its clock) later, the worker purges again by itself"
    );
}
crate::both_backends!(the_running_worker_purges_expired_oauth_states_on_its_own_schedule);
