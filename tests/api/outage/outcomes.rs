//! A gateway call's outcome is written after the service answered, by a
//! writer nobody waits for. When the database cannot take it at that
//! moment (PostgreSQL silent, SQLite's write lock held by another connection),
//! the outcome waits for the database; it is not dropped.

use std::time::Duration;

use serde_json::json;

use super::fault_proxy::FaultProxy;
use crate::gateway::{http_credential, settled_uses, upstream};
use crate::helpers::{test_config, Backend, TestApp, TestDb};

/// How the database is made to blink: PostgreSQL behind a proxy that falls
/// silent; SQLite with its write lock held by a connection of the test's.
enum Blink {
    Postgres(FaultProxy),
    Sqlite(sqlx::pool::PoolConnection<sqlx::Any>),
}

async fn a_calls_outcome_waits_for_the_database_to_come_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    // Each store operation gives up after a second: the outcome's first
    // write fails well inside the blink.
    config.db_timeout = Duration::from_secs(1);
    let proxy = match backend {
        Backend::Postgres => {
            let proxy = FaultProxy::start(&db.url).await;
            config.database_url = proxy.url.clone();
            Some(proxy)
        }
        Backend::Sqlite => None,
    };
    let app = TestApp::spawn_with(config).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;

    // The stand-in answers `slow` after 3 s: the use is written before the
    // call leaves, the database blinks while the service takes its time.
    let call = {
        let request = app
            .client
            .get(format!("{}/integrations/credentials/{id}/proxy/slow", app.base))
            .bearer_auth(&app.org.engine)
            .header("credgate-run-id", "run-blink");
        tokio::spawn(async move { request.send().await.map(|r| r.status()) })
    };
    while seen.0.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let blink = match proxy {
        Some(proxy) => {
            proxy.fall_silent();
            Blink::Postgres(proxy)
        }
        None => {
            let mut conn = app.sql().await.acquire().await.unwrap();
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.unwrap();
            Blink::Sqlite(conn)
        }
    };
    let answered = call.await.unwrap().unwrap();
    // The outcome was queued with the answer; its write meets the blink.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    match blink {
        Blink::Postgres(proxy) => {
            proxy.heal();
            // Kept until the end, so that the app's store keeps its way in.
            let uses = settled_uses(&app, &id, 1).await;
            check(answered, &uses);
            drop(proxy);
        }
        Blink::Sqlite(mut conn) => {
            sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
            drop(conn);
            let uses = settled_uses(&app, &id, 1).await;
            check(answered, &uses);
        }
    }
}
crate::both_backends!(a_calls_outcome_waits_for_the_database_to_come_back);

fn check(answered: reqwest::StatusCode, uses: &[serde_json::Value]) {
    assert_eq!(
        answered,
        reqwest::StatusCode::CREATED,
        "the service's answer reached the engine"
    );
    let detail = &uses[0]["detail"];
    assert_eq!(detail["status"], 201, "{}", uses[0]);
    assert_eq!(detail["error"], serde_json::Value::Null, "{}", uses[0]);
    assert_eq!(detail["run_id"], "run-blink", "{}", uses[0]);
    assert_eq!(uses[0]["outcome"], "success");
}

/// The outcome of the call with run id `run`, once written.
async fn outcome_of(app: &TestApp, run: &str) -> Option<serde_json::Value> {
    let detail: Option<String> = sqlx::query_scalar(
        "SELECT o.detail FROM audit_events e JOIN use_outcomes o ON o.event_id = e.id WHERE e.run_id = $1",
    )
    .bind(run)
    .fetch_optional(&app.sql().await)
    .await
    .unwrap();
    detail.map(|d| serde_json::from_str(&d).unwrap())
}

/// Waits up to 20 s for the outcome of the call with run id `run`.
async fn settled_outcome(app: &TestApp, run: &str) -> serde_json::Value {
    for _ in 0..200 {
        if let Some(outcome) = outcome_of(app, run).await {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the outcome of {run} was never recorded");
}

/// A PostgreSQL app whose store gives up a lock after 300 ms, and a
/// transaction of the test's holding `use_outcomes` locked: every write of
/// an outcome gives way (55P03) until the test lets go.
async fn outcomes_locked(db: &TestDb) -> (TestApp, String, sqlx::Transaction<'static, sqlx::Any>) {
    let (base, _) = upstream().await;
    let mut config = test_config(db);
    config.egress_allow = "127.0.0.0/8".into();
    config.store_lock_timeout = Duration::from_millis(300);
    let app = TestApp::spawn_with(config).await;
    let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
    let mut lock = app.sql().await.begin().await.unwrap();
    sqlx::query("LOCK TABLE use_outcomes IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    (app, id, lock)
}

/// One call through the gateway with run id `run`.
fn call(app: &TestApp, id: &str, run: &str) -> reqwest::RequestBuilder {
    app.client
        .get(format!("{}/integrations/credentials/{id}/proxy/items", app.base))
        .bearer_auth(&app.org.engine)
        .header("credgate-run-id", run)
}

#[test]
fn an_outcome_that_meets_a_held_lock_waits_for_it() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Postgres).await;
        let (app, id, lock) = outcomes_locked(&db).await;

        let answered = call(&app, &id, "run-locked").send().await.unwrap().status();
        // Several writes of the outcome give way meanwhile.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let waiting = app.metric("credgate_gateway_outcomes_unwritten").await;
        lock.commit().await.unwrap();
        let outcome = settled_outcome(&app, "run-locked").await;
        // Counted down just after the commit that made the row visible.
        let mut waiting_after = -1;
        for _ in 0..40 {
            waiting_after = app.metric("credgate_gateway_outcomes_unwritten").await;
            if waiting_after == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }

        assert_eq!(waiting, 1, "operators see the outcome waiting");
        assert_eq!(waiting_after, 0);
        assert_eq!(answered, reqwest::StatusCode::CREATED);
        assert_eq!(outcome["status"], 201, "{outcome}");
        assert_eq!(outcome["error"], serde_json::Value::Null, "{outcome}");
    });
}

/// The outcome queue full (its writer held by the lock), a call's outcome
/// waits for room before its answer goes back; the engine gives up on it
/// meanwhile: the outcome it had is still written, once room is made.
#[test]
fn an_outcome_waiting_for_room_in_a_full_queue_is_kept_when_the_engine_leaves() {
    crate::helpers::run_test(async {
        use futures::StreamExt;
        let db = TestDb::new(Backend::Postgres).await;
        let (app, id, lock) = outcomes_locked(&db).await;

        // The writer takes the first outcome and waits on the lock; the
        // next fill the queue.
        assert!(call(&app, &id, "first").send().await.unwrap().status().is_success());
        tokio::time::sleep(Duration::from_millis(300)).await;
        let filled = futures::stream::iter(0..credgate::group_commit::QUEUE)
            .map(|n| {
                let request = call(&app, &id, &format!("fill-{n}"));
                async move { request.send().await.map(|r| r.status().is_success()) }
            })
            .buffer_unordered(16)
            .filter(|sent| std::future::ready(matches!(sent, Ok(true))))
            .count()
            .await;
        let gave_up = call(&app, &id, "left").timeout(Duration::from_secs(2)).send().await;
        lock.commit().await.unwrap();
        let outcome = settled_outcome(&app, "left").await;

        assert_eq!(filled, credgate::group_commit::QUEUE);
        assert!(
            gave_up.as_ref().is_err_and(reqwest::Error::is_timeout),
            "the last call waited for room in the queue: {gave_up:?}"
        );
        assert_eq!(outcome["status"], 201, "the outcome it was settled with: {outcome}");
        assert_eq!(outcome["error"], serde_json::Value::Null, "{outcome}");
    });
}

/// A group of outcomes the database cannot write within the store's time
/// limit (here: a statement of more than two rows takes 1.5 s, the limit
/// is 1 s) is written in halves, each halved again while it is too slow:
/// every outcome is written. Before, the whole group was written again,
/// and timed out again, for ever; the queue behind it waited with it.
#[test]
fn a_group_of_outcomes_too_slow_for_the_time_limit_is_written_in_parts() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Postgres).await;
        let (base, _) = upstream().await;
        let mut config = test_config(&db);
        config.egress_allow = "127.0.0.0/8".into();
        config.db_timeout = Duration::from_secs(1);
        let app = TestApp::spawn_with(config).await;
        let id = http_credential(&app, &base, json!({"scheme": "bearer", "token": "t"})).await;
        let sql = app.sql().await;
        // A sequence counts the slow statements (nextval is never rolled back).
        for statement in [
            "CREATE SEQUENCE slow_groups",
            "CREATE FUNCTION slow_outcomes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                IF (SELECT count(*) FROM added) > 2 THEN \
                PERFORM nextval('slow_groups'); PERFORM pg_sleep(1.5); END IF; RETURN NULL; END $$",
            "CREATE TRIGGER slow_outcomes AFTER INSERT ON use_outcomes REFERENCING NEW TABLE AS added \
                FOR EACH STATEMENT EXECUTE FUNCTION slow_outcomes()",
        ] {
            sqlx::query(statement).execute(&sql).await.unwrap();
        }

        // Eight calls at once: their outcomes come within one group's 25 ms.
        let runs: Vec<String> = (0..8).map(|n| format!("part-{n}")).collect();
        let answers = futures::future::join_all(runs.iter().map(|run| call(&app, &id, run).send())).await;
        let mut outcomes = Vec::new();
        for run in &runs {
            outcomes.push(settled_outcome(&app, run).await);
        }
        let slow_groups: i64 =
            sqlx::query_scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM slow_groups")
                .fetch_one(&sql)
                .await
                .unwrap();

        for answer in answers {
            assert_eq!(answer.unwrap().status(), reqwest::StatusCode::CREATED);
        }
        for outcome in outcomes {
            assert_eq!(outcome["status"], 201, "{outcome}");
        }
        assert!(slow_groups >= 1, "a group of more than two outcomes was met");
    });
}
