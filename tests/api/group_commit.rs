//! Resolves commit their use events in groups: many at once are each
//! recorded exactly once, and when a group's commit fails every request in
//! it fails too — none is answered without its audit event.

use axum::http::Method;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use crate::helpers::{sentinel, Backend, TestApp, TestDb};

async fn resolve(app: &TestApp, id: &str, run: usize) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/integrations/credentials/{id}/resolve"),
        &app.org.engine,
        Some(json!({"workflow_id": "wf-burst", "run_id": format!("run-{run}")})),
    )
    .await
}

async fn resolve_events(app: &TestApp) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM audit_events WHERE action = 'credential.resolve'")
        .fetch_one(&app.sql().await)
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

crate::both_backends! {
    async fn a_burst_of_resolves_records_each_use_exactly_once(backend: Backend) {
        let db = TestDb::new(backend).await;
        let app = TestApp::spawn(&db).await;
        let ids = [
            app.create_pg(&app.org, "a", &sentinel()).await,
            app.create_pg(&app.org, "b", &sentinel()).await,
        ];

        let answers = join_all((0..96).map(|n| resolve(&app, &ids[n % 2], n))).await;
        let (_, usage) = app.call(Method::GET, &format!("/integrations/credentials/{}/usage", ids[0]), &app.org.admin, None).await;
        let runs: i64 = sqlx::query("SELECT COUNT(DISTINCT run_id) FROM audit_events WHERE action = 'credential.resolve'")
            .fetch_one(&app.sql().await)
            .await
            .unwrap()
            .try_get(0)
            .unwrap();

        assert!(answers.iter().all(|(s, _)| *s == StatusCode::OK), "{:?}", answers.iter().map(|a| a.0).collect::<Vec<_>>());
        assert_eq!(resolve_events(&app).await, 96);
        assert_eq!(runs, 96, "each request's own event");
        assert_eq!(usage["uses_total"], 48);
        assert_eq!(usage["workflows"][0]["workflow_id"], "wf-burst");
    }
}

crate::both_backends! {
    async fn when_a_groups_commit_fails_every_request_in_it_fails_and_no_secret_is_returned(backend: Backend) {
        let db = TestDb::new(backend).await;
        let app = TestApp::spawn(&db).await;
        let secret = sentinel();
        let id = app.create_pg(&app.org, "db", &secret).await;
        let sql = app.sql().await;
        // The database refuses every use event, as a full disk would.
        match backend {
            Backend::Postgres => {
                sqlx::query("CREATE FUNCTION refuse_uses() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                             IF NEW.action = 'credential.resolve' THEN RAISE EXCEPTION 'disk full' USING ERRCODE = 'disk_full'; \
                             END IF; RETURN NEW; END $$").execute(&sql).await.unwrap();
                sqlx::query("CREATE TRIGGER refuse_uses BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_uses()")
                    .execute(&sql).await.unwrap();
            }
            Backend::Sqlite => {
                sqlx::query("CREATE TRIGGER refuse_uses BEFORE INSERT ON audit_events \
                             WHEN NEW.action = 'credential.resolve' BEGIN SELECT RAISE(ABORT, 'refused'); END")
                    .execute(&sql).await.unwrap();
            }
        }

        let refused = join_all((0..24).map(|n| resolve(&app, &id, n))).await;
        let recorded_while_refused = resolve_events(&app).await;
        sqlx::query("DROP TRIGGER refuse_uses ON audit_events").execute(&sql).await.ok();
        sqlx::query("DROP TRIGGER refuse_uses").execute(&sql).await.ok();
        let (after, resolved) = resolve(&app, &id, 99).await;

        for (status, body) in &refused {
            assert!(status.is_server_error(), "{status} {body}");
            if backend == Backend::Postgres {
                assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
                assert_eq!(body["code"], "store_unavailable");
            }
            assert!(!body.to_string().contains(&secret), "no secret without its audit event");
        }
        assert_eq!(recorded_while_refused, 0);
        assert_eq!(after, StatusCode::OK, "{resolved}");
        assert_eq!(resolved["fields"]["password"], json!(secret));
        assert_eq!(resolve_events(&app).await, 1);
    }
}
