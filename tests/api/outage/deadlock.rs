//! A transaction PostgreSQL picks as a deadlock's victim (40P01): the
//! database undid all of it. A request gets a 503 `store_unavailable` with
//! Retry-After, not a 500, and succeeds once the other side is gone; the
//! refresh worker writes its rotated tokens again rather than lose them.

use std::sync::Arc;
use std::time::Duration;

use credgate::oauth::worker::try_refresh_due;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection, Row};

use crate::helpers::{captured_logs, until_a_lock_is_awaited, Backend, TestApp, TestDb};
use crate::oauth::{connect, oauth_app};
use crate::oauth_server::{Answer, AuthServer, Flavor, Gate};

/// The other side of the deadlock: a session behind the API's back that
/// never gives up first (its deadlock check waits a minute, credgate's
/// sessions the default second), in a transaction.
async fn other_side(db: &TestDb) -> PgConnection {
    let mut other = PgConnection::connect(&db.url).await.unwrap();
    other.execute("SET deadlock_timeout = '60s'").await.unwrap();
    other.execute("BEGIN").await.unwrap();
    other
}

/// Once credgate waits for a lock `other` holds, `other` asks for the row of
/// credential `id` (which credgate holds): each waits for the other, and
/// credgate's transaction is undone. `other` then rolls back; the id it
/// locked, if the row was still there.
async fn close_the_cycle(app: &TestApp, mut other: PgConnection, id: &str) -> Option<String> {
    until_a_lock_is_awaited(app).await;
    let row = sqlx::query("SELECT id FROM credentials WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut other)
        .await
        .unwrap();
    other.execute("ROLLBACK").await.unwrap();
    row.map(|r| r.get::<String, _>("id"))
}

/// Counts the rows `sql` finds for `id` (bound as `$1`).
async fn rows(app: &TestApp, sql: &str, id: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap()
}

#[test]
fn a_deadlock_victim_gets_503_with_retry_after_and_nothing_of_its_write_is_kept() {
    crate::helpers::run_test(deadlock_victim());
}

async fn deadlock_victim() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::spawn(&db).await;
    let id = app.create_pg(&app.org, "db", "pw").await;

    // The other side locks the organization's listing version, which a
    // delete takes at commit, after the credential's row.
    let mut other = other_side(&db).await;
    sqlx::query("UPDATE listing_versions SET version = version WHERE org_id = $1")
        .bind(app.org.id.as_str())
        .execute(&mut other)
        .await
        .unwrap();

    let delete = app
        .client
        .delete(format!("{}/integrations/credentials/{id}", app.base))
        .bearer_auth(&app.org.admin)
        .timeout(Duration::from_secs(30))
        .send();
    let (answer, locked) = tokio::join!(delete, close_the_cycle(&app, other, &id));
    let answer = answer.unwrap();
    let status = answer.status();
    let retry_after = answer.headers().get("retry-after").cloned();
    let body: Value = answer.json().await.unwrap();

    assert_eq!(
        locked.as_deref(),
        Some(id.as_str()),
        "the delete was undone: the row is still there"
    );
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "store_unavailable", "{body}");
    assert!(retry_after.is_some(), "a 503 says when to try again");
    let logs = captured_logs();
    assert!(logs.contains("deadlock detected"), "the cause is logged");
    assert!(!logs.contains("\"status\":500"), "no 500 was answered");
    assert_eq!(
        rows(&app, "SELECT COUNT(*) FROM credentials WHERE id = $1", &id).await,
        1
    );
    assert_eq!(
        rows(
            &app,
            "SELECT COUNT(*) FROM audit_events WHERE credential_id = $1 AND action = 'credential.delete'",
            &id
        )
        .await,
        0,
        "no audit event of a delete that did not happen"
    );
    assert_eq!(
        rows(&app, "SELECT COUNT(*) FROM outbox WHERE credential_id = $1", &id).await,
        1,
        "only the create's notification"
    );

    // The same request, the other side gone: it succeeds.
    let again = app
        .client
        .delete(format!("{}/integrations/credentials/{id}", app.base))
        .bearer_auth(&app.org.admin)
        .send()
        .await
        .unwrap();
    assert!(again.status().is_success(), "{}", again.status());
    assert_eq!(
        rows(&app, "SELECT COUNT(*) FROM credentials WHERE id = $1", &id).await,
        0
    );
}

#[test]
fn a_refreshed_token_write_undone_by_a_deadlock_is_written_again() {
    crate::helpers::run_test(refresh_deadlock_victim());
}

async fn refresh_deadlock_victim() {
    let db = TestDb::new(Backend::Postgres).await;
    // Microsoft's stand-in rotates refresh tokens and revokes the family on
    // reuse: a rotated token lost would show.
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    let gate = Arc::new(Gate::default());
    ms.with(|i| i.refresh_gate = Some(gate.clone()));
    app.make_due(&id).await;
    let ctx = app.state.ctx.clone();
    let step = tokio::spawn(async move { try_refresh_due(&ctx, 10).await });
    gate.arrivals(1).await; // the lease is taken, the provider asked

    // The other side holds a lock that the refresh's audit event now needs,
    // after the credential's row.
    let mut other = other_side(&db).await;
    sqlx::query("SELECT pg_advisory_xact_lock(4242)")
        .execute(&mut other)
        .await
        .unwrap();
    let sql = app.sql().await;
    for statement in [
        "CREATE FUNCTION wait_for_the_test() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN PERFORM pg_advisory_xact_lock(4242); RETURN NEW; END $$",
        "CREATE TRIGGER wait_for_the_test BEFORE INSERT ON audit_events \
         FOR EACH ROW EXECUTE FUNCTION wait_for_the_test()",
    ] {
        sqlx::query(statement).execute(&sql).await.unwrap();
    }
    gate.release(1, Answer::Normal); // rotated: the old refresh token is spent
    let locked = close_the_cycle(&app, other, &id).await;
    let step = tokio::time::timeout(Duration::from_secs(30), step)
        .await
        .unwrap()
        .unwrap();
    ms.with(|i| i.refresh_gate = None);
    let lease = app.refresh_state(&id).await.2;
    app.make_due(&id).await;
    let next = try_refresh_due(&app.state, 10).await.unwrap();
    let (grants, reused) = ms.with(|i| (i.refresh_grants, i.reuse_detected));
    let (status, resolved) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/resolve"),
            &app.org.engine,
            None,
        )
        .await;

    assert_eq!(locked.as_deref(), Some(id.as_str()), "the other side got the row");
    assert_eq!(step.unwrap().refreshed, 1, "the write was made again");
    assert_eq!(lease, None, "the lease was released with the write");
    assert_eq!(next.refreshed, 1, "the next refresh used the rotated token");
    assert_eq!((grants, reused), (2, 0), "no refresh token was used twice");
    assert_eq!(status, StatusCode::OK, "{resolved}");
    assert!(
        ms.access_valid(resolved["access_token"].as_str().unwrap()),
        "{resolved}"
    );
    assert!(
        captured_logs().contains("deadlock detected"),
        "the write was a deadlock's victim"
    );
}

/// A session behind the API's back holds a credential's row and never lets
/// go: a PATCH of it waits no longer than the lock timeout (lowered to a
/// second here; 15 s by default), then gets a 503 `store_unavailable` with
/// Retry-After, and nothing of it is written. Without a lock timeout, it
/// waited as long as the other session held the row, holding a pool
/// connection.
#[test]
fn a_write_behind_a_lock_held_for_ever_gives_up_after_the_lock_timeout_with_503() {
    crate::helpers::run_test(lock_held_for_ever());
}

async fn lock_held_for_ever() {
    let db = TestDb::new(Backend::Postgres).await;
    let mut config = crate::helpers::test_config(&db);
    config.store_lock_timeout = Duration::from_secs(1);
    let app = TestApp::spawn_with(config).await;
    let id = app.create_pg(&app.org, "db", "pw").await;
    let mut other = other_side(&db).await;
    sqlx::query("SELECT id FROM credentials WHERE id = $1 FOR UPDATE")
        .bind(&id)
        .execute(&mut other)
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let patch = app
        .client
        .patch(format!("{}/integrations/credentials/{id}", app.base))
        .bearer_auth(&app.org.admin)
        .json(&serde_json::json!({"name": "renamed"}))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .expect("an answer before the client's 20 s");
    let waited = started.elapsed();
    let status = patch.status();
    let retry_after = patch.headers().get("retry-after").cloned();
    let body: Value = patch.json().await.unwrap();
    other.execute("ROLLBACK").await.unwrap();

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["code"], "store_unavailable", "{body}");
    assert!(retry_after.is_some(), "a 503 says when to try again");
    assert!(waited < Duration::from_secs(10), "waited {waited:?}");
    assert!(captured_logs().contains("lock timeout"), "the cause is logged");
    let name: String = sqlx::query_scalar("SELECT name FROM credentials WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    assert_eq!(name, "db", "nothing of the PATCH was written");
    // The other session gone, the same PATCH succeeds.
    let (status, body) = app
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            Some(serde_json::json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["name"], "renamed");
}

/// Migrations wait for another replica's migrations as long as those run,
/// not the lock timeout: a replica that starts while a session holds the
/// migrations' table (as a replica migrating does) starts once it lets go,
/// seconds after its lock timeout (1 s here) would have run out.
#[test]
fn a_replica_starting_while_another_migrates_waits_past_the_lock_timeout() {
    crate::helpers::run_test(starting_while_another_migrates());
}

async fn starting_while_another_migrates() {
    let db = TestDb::new(Backend::Postgres).await;
    let first = TestApp::spawn(&db).await;
    let mut other = other_side(&db).await;
    other
        .execute("LOCK TABLE _sqlx_migrations IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut config = first.config.clone();
    config.store_lock_timeout = Duration::from_secs(1);
    let starting = tokio::spawn(async move {
        credgate::app::Services::init_with_clock(config, credgate::clock::Clock::manual())
            .await
            .map(|_| ())
    });

    tokio::time::sleep(Duration::from_secs(3)).await;
    let still_waiting = !starting.is_finished();
    other.execute("ROLLBACK").await.unwrap();
    let started = tokio::time::timeout(Duration::from_secs(20), starting)
        .await
        .expect("started within 20 s of the lock's release")
        .unwrap();

    assert!(still_waiting, "it waited for the migrations' table");
    assert!(started.is_ok(), "{started:?}");
}
