//! Deleting an organization: marked deleted with its data keys destroyed at
//! once, then its rows removed in small batches (resumed by the worker when
//! the command stops halfway); writes running in it meanwhile never make it
//! deadlock, and other organizations' writes go on.

use reqwest::StatusCode;

use crate::both_backends;
use crate::helpers::{test_config, TestApp, TestDb};

/// Rows of `org` left in every table that holds an organization's rows.
async fn rows_of(app: &TestApp, org: &str) -> i64 {
    let sql = app.sql().await;
    let mut total = 0;
    for table in [
        "use_outcomes",
        "audit_events",
        "outbox",
        "idempotency_keys",
        "credentials",
        "named_secrets",
        "oauth_apps",
        "webhook_endpoints",
        "webhook_deliveries",
        "api_keys",
        "page_sessions",
        "oauth_states",
        "org_limits",
        "credential_counts",
        "listing_versions",
        "org_keys",
        "credential_grants",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE org_id = $1"))
            .bind(org)
            .fetch_one(&sql)
            .await
            .unwrap();
        total += n;
    }
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM organizations WHERE id = $1")
        .bind(org)
        .fetch_one(&sql)
        .await
        .unwrap();
    total + n
}

async fn deleting_an_organization_while_it_creates_never_deadlocks(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let doomed = app.new_org("Doomed").await;
    app.state
        .store
        .set_org_limit(&doomed.id, "postgresql", 100_000)
        .await
        .unwrap();
    for n in 0..20 {
        app.create_pg(&doomed, &format!("c{n}"), "pw").await;
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    let writer = |lane: usize| {
        let (app, doomed, stop) = (&app, &doomed, &stop);
        async move {
            let mut answers = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && n < 200 {
                let body = crate::helpers::pg_body(&format!("w{lane}-{n}"), "pw");
                answers.push(app.as_(&doomed.admin).post("/integrations/credentials", body).await.0);
                n += 1;
            }
            answers
        }
    };
    let deleting = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let deleted = app.state.vault.delete_org(&doomed.id).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        deleted
    };

    let unused = credgate::api_tokens::create(
        &app.state.store,
        &doomed.id,
        credgate::model::Role::Admin,
        Default::default(),
    )
    .await
    .unwrap();
    let (deleted, a, b, c, d) = tokio::join!(deleting, writer(0), writer(1), writer(2), writer(3));
    let (after, _) = app.as_(&unused).get("/integrations/credentials").await;
    let (others, _) = app.as_(&app.org.admin).get("/integrations/credentials").await;

    assert!(deleted.is_ok(), "no deadlock: {deleted:?}");
    let answers: Vec<StatusCode> = [a, b, c, d].concat();
    assert!(answers.contains(&StatusCode::CREATED), "the writes were running");
    assert!(
        answers
            .iter()
            .all(|s| [StatusCode::CREATED, StatusCode::UNAUTHORIZED, StatusCode::NOT_FOUND].contains(s)),
        "a write meeting the deletion is refused cleanly, never a 500: {answers:?}"
    );
    assert_eq!(
        after,
        StatusCode::UNAUTHORIZED,
        "its keys went with it (a key cached before stops within 5 s)"
    );
    assert_eq!(others, StatusCode::OK);
    assert_eq!(rows_of(&app, &doomed.id).await, 0, "nothing of it is left");
}
both_backends!(deleting_an_organization_while_it_creates_never_deadlocks);

async fn an_interrupted_deletion_is_finished_by_the_worker_and_shreds_at_once(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    let app = TestApp::spawn_with(config.clone()).await;
    let doomed = app.new_org("Doomed").await;
    let receiver = wiremock::MockServer::builder().start().await;
    let (hooked, _) = app
        .as_(&doomed.admin)
        .post(
            "/integrations/webhooks",
            serde_json::json!({"url": format!("{}/hook", receiver.uri())}),
        )
        .await;
    assert_eq!(hooked, StatusCode::CREATED);
    for n in 0..5 {
        app.create_pg(&doomed, &format!("c{n}"), "pw").await;
    }
    // Gateway calls' uses, with their outcomes kept beside them.
    let called = app.create_pg(&doomed, "called", "pw").await;
    let used = credgate::store::UseRecord {
        event: credgate::store::AuditEvent::success(
            &doomed.id,
            &crate::helpers::cid(&called),
            "credential.proxy",
            "engine",
        ),
        usage: Default::default(),
        read_at: None,
    };
    let ids = crate::group_commit::ids_of(app.state.store.record_uses(&vec![used; 3]).await.unwrap());
    let outcomes: Vec<_> = ids
        .iter()
        .map(|&event_id| credgate::store::UseOutcome {
            event_id,
            org_id: doomed.id.clone(),
            detail: None,
            status: Some(200),
            error: None,
            latency_ms: 1,
        })
        .collect();
    app.state.store.record_outcomes(&outcomes).await.unwrap();
    let outcomes: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM use_outcomes WHERE org_id = $1")
        .bind(&doomed.id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    let before = rows_of(&app, &doomed.id).await;

    let unused = credgate::api_tokens::create(
        &app.state.store,
        &doomed.id,
        credgate::model::Role::Admin,
        Default::default(),
    )
    .await
    .unwrap();
    // The command marks it and removes one small batch, then stops.
    app.state.store.mark_org_deleted(&doomed.id).await.unwrap();
    let first = app.state.store.purge_deleted_org(&doomed.id, 3).await.unwrap();
    let shredded: Vec<String> = sqlx::query_scalar("SELECT wrapped_key FROM org_keys WHERE org_id = $1")
        .bind(&doomed.id)
        .fetch_all(&app.sql().await)
        .await
        .unwrap();
    let (refused, _) = app.as_(&unused).get("/integrations/credentials").await;
    drop(app);
    // A replica starts again (every data key it needs still opens) and
    // its worker's housekeeping finishes the removal.
    let again = TestApp::spawn_with(config).await;
    let ready = reqwest::get(format!("{}/readyz", again.base)).await.unwrap().status();
    let mut passes = 0;
    while !again.state.store.deleted_orgs().await.unwrap().is_empty() && passes < 10 {
        credgate::oauth::worker::housekeeping(&again.state).await.unwrap();
        passes += 1;
    }

    assert_eq!(outcomes, 3);
    assert!(before > 20, "{before}");
    assert_eq!(first, 3, "a batch is small");
    assert!(
        !shredded.is_empty() && shredded.iter().all(String::is_empty),
        "its data keys were destroyed at once"
    );
    assert_eq!(refused, StatusCode::UNAUTHORIZED);
    assert_eq!(ready, StatusCode::OK);
    assert_eq!(passes, 1);
    assert_eq!(rows_of(&again, &doomed.id).await, 0);
    let (others, _) = again.as_(&again.org.admin).get("/integrations/credentials").await;
    assert_eq!(others, StatusCode::OK);
}
both_backends!(an_interrupted_deletion_is_finished_by_the_worker_and_shreds_at_once);

/// On PostgreSQL an event's organization is checked by a trigger once per
/// statement (migration 0026), not by a foreign key per row: an insert and
/// its organization's deletion that meet still leave no event behind,
/// whichever comes first.
#[test]
fn an_event_meeting_its_organizations_deletion_is_never_left_behind() {
    crate::helpers::run_test(async {
        use std::time::Duration;
        let db = TestDb::new(crate::helpers::Backend::Postgres).await;
        let app = TestApp::spawn(&db).await;
        let sql = app.sql().await;
        for org in ["deleted-first", "inserted-first"] {
            sqlx::query("INSERT INTO organizations (id, name, key_version, created_at) VALUES ($1, $1, 1, 0)")
                .bind(org)
                .execute(&sql)
                .await
                .unwrap();
        }
        let event = |org: &'static str| {
            let sql = sql.clone();
            async move {
                sqlx::query(
                    "INSERT INTO audit_events (org_id, action, outcome, actor, at) \
                     VALUES ($1, 'credential.resolve', 'success', 'engine', 0)",
                )
                .bind(org)
                .execute(&sql)
                .await
            }
        };
        let left = |org: &'static str| {
            let sql = sql.clone();
            async move {
                let n: i64 = sqlx::query_scalar(
                    "SELECT (SELECT COUNT(*) FROM audit_events WHERE org_id = $1) \
                     + (SELECT COUNT(*) FROM use_outcomes WHERE org_id = $1)",
                )
                .bind(org)
                .fetch_one(&sql)
                .await
                .unwrap();
                n
            }
        };

        // The deletion first: the insert waits for it, then is refused.
        let mut deleting = sql.begin().await.unwrap();
        sqlx::query("DELETE FROM organizations WHERE id = 'deleted-first'")
            .execute(&mut *deleting)
            .await
            .unwrap();
        let late = tokio::spawn(event("deleted-first"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let late_waited = !late.is_finished();
        deleting.commit().await.unwrap();
        let late = late.await.unwrap();

        // The insert first: the deletion waits for it, then takes its rows.
        let mut inserting = sql.begin().await.unwrap();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO audit_events (org_id, action, outcome, actor, at) \
             VALUES ('inserted-first', 'credential.proxy', 'success', 'engine', 0) RETURNING id",
        )
        .fetch_one(&mut *inserting)
        .await
        .unwrap();
        sqlx::query("INSERT INTO use_outcomes (event_id, org_id, outcome, detail) VALUES ($1, 'inserted-first', 'success', '{}')")
            .bind(id)
            .execute(&mut *inserting)
            .await
            .unwrap();
        let deletion = {
            let sql = sql.clone();
            tokio::spawn(async move {
                sqlx::query("DELETE FROM organizations WHERE id = 'inserted-first'")
                    .execute(&sql)
                    .await
                    .map(|r| r.rows_affected())
            })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deletion_waited = !deletion.is_finished();
        inserting.commit().await.unwrap();
        let deleted = deletion.await.unwrap();

        assert!(late_waited, "the insert waits for the deletion to end");
        let refused = late.unwrap_err().to_string();
        assert!(refused.contains("does not exist"), "{refused}");
        assert_eq!(left("deleted-first").await, 0);
        assert!(deletion_waited, "the deletion waits for the insert to end");
        assert_eq!(deleted.unwrap(), 1);
        assert_eq!(
            left("inserted-first").await,
            0,
            "the events went with their organization"
        );
        assert!(event("no-such-organization").await.is_err());
    });
}
