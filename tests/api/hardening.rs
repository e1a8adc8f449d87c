//! What someone hostile or careless cannot do: grow memory through metric
//! labels, fill the audit log with denials, let an OAuth token lapse by a
//! failed test, stop the worker with a panic, pile up pending OAuth states,
//! grow SQLite's heap without bound.
//! (Connections: `connections.rs`; unknown keys: `auth_limits.rs`.)

use reqwest::{Method, StatusCode};

use crate::helpers::{TestApp, TestDb};

async fn metrics_len(app: &TestApp) -> usize {
    app.client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .len()
}

#[test]
fn odd_methods_and_paths_leave_the_metrics_the_same_size() {
    crate::helpers::run_test(async {
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        let odd = |n: usize| {
            let method = Method::from_bytes(format!("X{}{n}", "ABC".repeat(300)).as_bytes()).unwrap();
            let path = format!("/nowhere/{n}/{}", "p".repeat(n % 500));
            (method, path)
        };
        let send = |(method, path): (Method, String)| {
            let req = app.client.request(method, format!("{}{path}", app.base));
            async move { req.send().await.unwrap().status() }
        };
        // Warm up: the first odd request of each kind adds its label set once,
        // and the counters reach four digits.
        let first = send(odd(0)).await;
        for n in 1..1000 {
            send(odd(n)).await;
            send((Method::GET, format!("/nowhere/{n}"))).await;
        }
        metrics_len(&app).await; // `/metrics` itself is a route with its own labels
        let before = metrics_len(&app).await;

        let mut statuses = Vec::new();
        for n in 1000..=5000 {
            statuses.push(send(odd(n)).await);
            statuses.push(send((Method::GET, format!("/nowhere/{n}"))).await);
        }
        let after = metrics_len(&app).await;

        assert_eq!(
            first,
            StatusCode::METHOD_NOT_ALLOWED,
            "a method credgate does not know is refused before routing"
        );
        assert!(statuses.iter().all(|s| s.is_client_error()), "{statuses:?}");
        // Only counter digits may change (four or five digits), never lines.
        assert!(after <= before + 200, "/metrics grew from {before} to {after} bytes");
    });
}

async fn denied_requests_are_audited_as_one_row_per_key_per_credential_per_minute_with_a_count(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let id = app.create_pg(&app.org, "a", "pw").await;
    crate::helpers::to_a_minute_start(&app.clock);
    for _ in 0..25 {
        app.call(
            reqwest::Method::POST,
            &format!("/integrations/credentials/{id}/resolve"),
            &app.org.member,
            None,
        )
        .await;
    }
    let rows: Vec<(String,)> = sqlx::query_as("SELECT detail FROM audit_events WHERE action = 'access.denied'")
        .fetch_all(&app.sql().await)
        .await
        .unwrap();
    app.clock.advance(60);
    app.call(
        reqwest::Method::POST,
        &format!("/integrations/credentials/{id}/resolve"),
        &app.org.member,
        None,
    )
    .await;
    let later: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'access.denied'")
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    assert_eq!(rows.len(), 1, "{rows:?}");
    let detail: serde_json::Value = serde_json::from_str(&rows[0].0).unwrap();
    assert_eq!(detail["count"], 25);
    assert_eq!(later, 2, "a new minute, a new row");
}
crate::both_backends!(denied_requests_are_audited_as_one_row_per_key_per_credential_per_minute_with_a_count);

async fn a_failed_test_of_an_oauth_credential_never_stops_its_refreshes(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Google).await;
    let app = crate::oauth::oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let id = crate::oauth::connect(&app, "google", "").await["credential_id"].clone();
    google.with(|i| i.identity_status = Some(StatusCode::SERVICE_UNAVAILABLE));
    let (_, tested) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.admin,
            None,
        )
        .await;
    let (_, after_test) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    google.with(|i| i.identity_status = None);
    let (_, after, _) = app.refresh_state(&id).await;
    app.clock.advance(after.unwrap() - app.clock.now() + 1);

    let step = credgate::oauth::worker::try_refresh_due(&app.state, 10).await.unwrap();

    assert_eq!(tested["ok"], false);
    assert_eq!(after_test["status"], "error");
    assert_eq!(
        step.refreshed, 1,
        "an `error` from a test is no reason to let the token lapse"
    );
}
crate::both_backends!(a_failed_test_of_an_oauth_credential_never_stops_its_refreshes);

#[test]
fn the_worker_survives_a_panicking_step_and_readiness_fails_when_it_is_stuck() {
    crate::helpers::run_test(async {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        let ctx = app.state.ctx.clone();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let stop_tx = Arc::new(stop_tx);
        let stopper = stop_tx.clone();
        credgate::oauth::worker::run_loop(&ctx, stop_rx, move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let stopper = stopper.clone();
            async move {
                if n == 0 {
                    panic!("a bug in one step");
                }
                let _ = stopper.send(true);
                Ok(credgate::oauth::worker::Step::default())
            }
        })
        .await;
        let survived = calls.load(Ordering::SeqCst);

        let ready = |app: &TestApp| app.client.get(format!("{}/readyz", app.base)).send();
        let (_stop_tx2, stop_rx2) = tokio::sync::watch::channel(false);
        let stuck_ctx = ctx.clone();
        let stuck =
            tokio::spawn(
                async move { credgate::oauth::worker::run_loop(&stuck_ctx, stop_rx2, std::future::pending).await },
            );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let while_fresh = ready(&app).await.unwrap().status();
        app.clock.advance(credgate::oauth::worker::STUCK_AFTER_SECS + 1);
        let when_stuck = ready(&app).await.unwrap();
        let stuck_status = when_stuck.status();
        let body = when_stuck.text().await.unwrap();
        stuck.abort();

        assert_eq!(survived, 2, "the loop went on after the panic");
        assert_eq!(while_fresh, StatusCode::OK);
        assert_eq!(stuck_status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(body.contains("worker"), "{body}");
    });
}

async fn expired_oauth_states_are_purged_and_pending_ones_are_capped(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Google).await;
    let cap = 50;
    let app = crate::oauth::oauth_app(&db, &[(&google, "google")], |c| c.max_pending_oauth = cap as i64).await;
    let authorize = || {
        app.client
            .get(format!("{}/integrations/google/authorize", app.base))
            .bearer_auth(&app.org.member)
            .header("accept", "application/json")
            .send()
    };
    for _ in 0..cap {
        assert_eq!(authorize().await.unwrap().status(), StatusCode::OK);
    }
    let over = authorize().await.unwrap();
    let over_status = over.status();
    let over_body: serde_json::Value = over.json().await.unwrap();
    let other_org = app.new_org("Other").await;
    let other = app
        .client
        .get(format!("{}/integrations/google/authorize", app.base))
        .bearer_auth(&other_org.member)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .status();

    app.clock.advance(credgate::oauth::STATE_TTL_SECS + 1);
    let purged = credgate::oauth::worker::housekeeping(&app.state).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oauth_states")
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    let after_purge = authorize().await.unwrap().status();

    assert_eq!(over_status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over_body["code"], "rate_limited");
    assert_eq!(other, StatusCode::OK, "the cap is per organization");
    assert_eq!(purged, cap as u64 + 1);
    assert_eq!(left, 0);
    assert_eq!(after_purge, StatusCode::OK);
}
crate::both_backends!(expired_oauth_states_are_purged_and_pending_ones_are_capped);

#[test]
fn the_pending_oauth_state_cap_is_a_thousand_by_default() {
    let config = credgate::config::Config::for_database("sqlite://x.db");

    assert_eq!(config.max_pending_oauth, 1000);
    assert_eq!(credgate::config::MAX_PENDING_OAUTH_PER_ORG, 1000);
}

async fn concurrent_authorizes_never_pass_the_pending_state_cap(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = crate::oauth_server::AuthServer::start(crate::oauth_server::Flavor::Google).await;
    let cap = 20;
    let app = crate::oauth::oauth_app(&db, &[(&google, "google")], |c| c.max_pending_oauth = cap).await;
    let authorize = || {
        app.client
            .get(format!("{}/integrations/google/authorize", app.base))
            .bearer_auth(&app.org.member)
            .header("accept", "application/json")
            .send()
    };
    for _ in 0..cap - 5 {
        assert_eq!(authorize().await.unwrap().status(), StatusCode::OK);
    }

    // Sixty at once around the cap: five places left.
    let answers = futures::future::join_all((0..60).map(|_| authorize())).await;
    let statuses: Vec<StatusCode> = answers.into_iter().map(|a| a.unwrap().status()).collect();
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM oauth_states WHERE org_id = $1")
        .bind(&app.org.id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let limited = statuses.iter().filter(|s| **s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!((ok, limited), (5, 55), "{statuses:?}");
    assert_eq!(stored, cap, "exactly the cap is stored");
}
crate::both_backends!(concurrent_authorizes_never_pass_the_pending_state_cap);

/// SQLite's heap is bounded for the whole process (page caches and
/// prepared statements of every connection), so many connections and many
/// listing shapes do not each grow the server's memory.
#[test]
fn sqlites_heap_in_the_server_process_has_a_limit() {
    crate::helpers::run_test(async {
        use sqlx::Row;
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        app.create_pg(&app.org, "db", "pw").await;

        let limit: i64 = sqlx::query("PRAGMA soft_heap_limit")
            .fetch_one(&app.sql().await)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();

        assert_eq!(limit, credgate::store::SQLITE_HEAP_LIMIT);
    })
}
