//! A denial is audited before it is answered. When the store cannot write
//! the audit event now (PostgreSQL: a lock on the audit log not granted in
//! time; SQLite: its write lock held by another connection), the request
//! is refused as the store's (503 `store_unavailable`), not as a 403 that
//! no audit log shows; once the store takes writes again, the denial is
//! answered and audited once. A credential hidden from its caller stays a
//! 404 all along: a 503 would tell that it exists.

use std::time::Duration;

use credgate::model::Role;
use reqwest::{Method, StatusCode};

use crate::helpers::{sentinel, test_config, Backend, TestApp, TestDb};
use crate::sharing::{create, key};

/// Writes to the audit log held up by a connection of the test's.
pub enum Held {
    Postgres(sqlx::Transaction<'static, sqlx::Any>),
    Sqlite(sqlx::pool::PoolConnection<sqlx::Any>),
}

pub async fn hold_audit_writes(app: &TestApp, backend: Backend) -> Held {
    match backend {
        Backend::Postgres => {
            let mut tx = app.sql().await.begin().await.unwrap();
            // Reads go on; inserts wait for the lock.
            sqlx::query("LOCK TABLE audit_events IN SHARE MODE")
                .execute(&mut *tx)
                .await
                .unwrap();
            Held::Postgres(tx)
        }
        Backend::Sqlite => {
            let mut conn = app.sql().await.acquire().await.unwrap();
            sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.unwrap();
            Held::Sqlite(conn)
        }
    }
}

pub async fn release(held: Held) {
    match held {
        Held::Postgres(tx) => tx.commit().await.unwrap(),
        Held::Sqlite(mut conn) => {
            sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
        }
    }
}

async fn a_denial_the_store_cannot_record_is_refused_as_the_stores(backend: Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    // PostgreSQL gives a lock up after 300 ms; SQLite waits for its file's
    // lock until the store's time limit, 2 s.
    config.store_lock_timeout = Duration::from_millis(300);
    config.db_timeout = Duration::from_secs(2);
    let app = TestApp::spawn_with(config).await;
    let id = app.create_pg(&app.org, "a", &sentinel()).await;
    let resolve = format!("/integrations/credentials/{id}/resolve");
    let alice = key(&app, Role::Member, Some("alice")).await;
    let bob = key(&app, Role::Member, Some("bob")).await;
    let alices = create(&app, &alice, "alice's own", &sentinel()).await;
    let hidden = format!("/integrations/credentials/{alices}");

    let held = hold_audit_writes(&app, backend).await;
    // A member may not resolve (engine only): a denial to audit.
    let (while_held, problem) = app.oneshot(Method::POST, &resolve, &app.org.member, None).await;
    // Bob may not see alice's own credential: it does not exist for him.
    let (hidden_while_held, _) = app.oneshot(Method::GET, &hidden, &bob, None).await;
    release(held).await;
    let (after, denied) = app.oneshot(Method::POST, &resolve, &app.org.member, None).await;
    let (_, events) = app
        .oneshot(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(
        while_held,
        StatusCode::SERVICE_UNAVAILABLE,
        "no denial answered unaudited: {problem}"
    );
    assert_eq!(problem["code"], "store_unavailable");
    assert_eq!(hidden_while_held, StatusCode::NOT_FOUND, "as if it did not exist");
    assert_eq!(after, StatusCode::FORBIDDEN, "{denied}");
    assert_eq!(denied["code"], "forbidden");
    let denials: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "access.denied")
        .collect();
    assert_eq!(denials.len(), 1, "{events}");
    assert_eq!(denials[0]["detail"]["count"], 1, "the denial answered, once: {events}");
}
crate::both_backends!(a_denial_the_store_cannot_record_is_refused_as_the_stores);
