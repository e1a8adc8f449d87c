//! A PostgreSQL cluster stopped while resolves and creates stream in: every
//! answer is quick and clean (2xx, or 503 `store_unavailable` with
//! Retry-After, never a 500), `/readyz` says so within a second, and after
//! the restart requests succeed with nothing half-written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::OwnCluster;
use crate::helpers::{pg_body, test_config, TestApp, TestDb};

/// One answer of the stream.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    code: String,
    retry_after: bool,
    took: Duration,
    /// The name a create asked for.
    created: Option<String>,
}

/// Lane `lane` sends resolves (even lanes) or creates (odd) until `stop`.
async fn lane(app: &TestApp, lane: usize, resolve: &str, stop: &AtomicBool) -> Vec<Answer> {
    let mut answers = Vec::new();
    for n in 0.. {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let (request, name) = if lane % 2 == 0 {
            (
                app.client
                    .post(format!("{}{resolve}", app.base))
                    .bearer_auth(&app.org.engine),
                None,
            )
        } else {
            let name = format!("lane{lane}-{n}");
            let request = app
                .client
                .post(format!("{}/integrations/credentials", app.base))
                .bearer_auth(&app.org.admin)
                .json(&pg_body(&name, "pw"));
            (request, Some(name))
        };
        let started = Instant::now();
        let res = request.timeout(Duration::from_secs(20)).send().await.unwrap();
        let (status, retry_after) = (res.status(), res.headers().contains_key("retry-after"));
        let body: Value = res.json().await.unwrap_or(Value::Null);
        answers.push(Answer {
            status,
            code: body["code"].as_str().unwrap_or_default().to_owned(),
            retry_after,
            took: started.elapsed(),
            created: name.filter(|_| status == StatusCode::CREATED),
        });
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    answers
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .bind(&app.org.id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap()
}

#[test]
fn a_postgres_outage_under_a_stream_of_requests_is_quick_503s_and_leaves_nothing_half_written() {
    crate::helpers::run_test(async {
        let cluster = Arc::new(OwnCluster::start());
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let mut config = test_config(&db);
        config.database_url = cluster.url();
        let app = TestApp::spawn_with(config).await;
        app.state
            .store
            .set_org_limit(&app.org.id, "postgresql", 100_000)
            .await
            .unwrap();
        let id = app.create_pg(&app.org, "a", "pw").await;
        let resolve = format!("/integrations/credentials/{id}/resolve");
        let stop = AtomicBool::new(false);

        let control = async {
            tokio::time::sleep(Duration::from_millis(800)).await;
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.down()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1100)).await; // past /readyz's memory
            let started = Instant::now();
            let ready = app
                .client
                .get(format!("{}/readyz", app.base))
                .send()
                .await
                .unwrap()
                .status();
            let ready_took = started.elapsed();
            tokio::time::sleep(Duration::from_secs(4)).await; // past the key cache too
            let c = cluster.clone();
            tokio::task::spawn_blocking(move || c.up()).await.unwrap();
            tokio::time::sleep(Duration::from_secs(3)).await; // requests succeed again
            stop.store(true, Ordering::SeqCst);
            (ready, ready_took)
        };
        let (a, b, c, d, (ready, ready_took)) = tokio::join!(
            lane(&app, 0, &resolve, &stop),
            lane(&app, 1, &resolve, &stop),
            lane(&app, 2, &resolve, &stop),
            lane(&app, 3, &resolve, &stop),
            control
        );
        let lanes = [a, b, c, d];
        let logs = crate::helpers::captured_logs();
        let answers: Vec<&Answer> = lanes.iter().flatten().collect();
        let created: Vec<&String> = answers.iter().filter_map(|a| a.created.as_ref()).collect();
        let mut present = Vec::new();
        for name in &created {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE org_id = $1 AND name = $2")
                .bind(&app.org.id)
                .bind(name.as_str())
                .fetch_one(&app.sql().await)
                .await
                .unwrap();
            present.push(n);
        }
        let duplicates = count(
            &app,
            "SELECT COUNT(*) FROM (SELECT name FROM credentials WHERE org_id = $1 GROUP BY name HAVING COUNT(*) > 1) d",
        )
        .await;
        let without_audit = count(
            &app,
            "SELECT COUNT(*) FROM credentials c WHERE c.org_id = $1 AND NOT EXISTS \
             (SELECT 1 FROM audit_events e WHERE e.credential_id = c.id AND e.action = 'credential.create')",
        )
        .await;
        let without_event = count(
            &app,
            "SELECT COUNT(*) FROM credentials c WHERE c.org_id = $1 AND NOT EXISTS \
             (SELECT 1 FROM outbox o WHERE o.credential_id = c.id)",
        )
        .await;

        let unclean: Vec<&&Answer> = answers
            .iter()
            .filter(|a| {
                !(a.status.is_success()
                    || (a.status == StatusCode::SERVICE_UNAVAILABLE && a.code == "store_unavailable" && a.retry_after))
            })
            .collect();
        assert!(
            unclean.is_empty(),
            "only 2xx or 503 store_unavailable with Retry-After: {unclean:?}"
        );
        assert!(!logs.contains("\"status\":500"), "no 500 was answered");
        let slowest = answers.iter().map(|a| a.took).max().unwrap();
        assert!(
            slowest < Duration::from_millis(2500),
            "every answer within 2.5 s; slowest {slowest:?}"
        );
        let unavailable = answers
            .iter()
            .filter(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
            .count();
        assert!(unavailable > 0, "the outage was felt");
        assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
        assert!(ready_took < Duration::from_secs(1), "/readyz took {ready_took:?}");
        for answers in &lanes {
            let last = answers.last().unwrap();
            assert!(last.status.is_success(), "requests succeed again: {last:?}");
        }
        assert!(
            created.len() > 2,
            "creates succeeded before and after: {}",
            created.len()
        );
        assert!(
            present.iter().all(|n| *n == 1),
            "every 201 is stored exactly once: {present:?}"
        );
        assert_eq!(duplicates, 0);
        assert_eq!(without_audit, 0, "no credential without its audit event");
        assert_eq!(without_event, 0, "no credential without its notification");
        eprintln!(
            "outage: {} answers, {unavailable} were 503, slowest {slowest:?}, /readyz {ready_took:?}",
            answers.len()
        );
    });
}
