//! The refresh worker through a PostgreSQL outage: a refresh the provider
//! answered while the database was away keeps its (rotated) token, and a
//! credential that came due meanwhile is refreshed once the database is
//! back; no lease is left behind and no refresh token is used twice.

use std::sync::Arc;
use std::time::Duration;

use credgate::oauth::worker::{run_worker, try_refresh_due};
use reqwest::Method;

use super::OwnCluster;
use crate::helpers::{TestApp, TestDb};
use crate::oauth::{connect, oauth_app};
use crate::oauth_server::{Answer, AuthServer, Flavor, Gate};

/// A Microsoft-flavoured stand-in (it rotates refresh tokens and revokes the
/// family on reuse) and a connected credential on a cluster the test owns.
async fn arrange(cluster: &OwnCluster, db: &TestDb) -> (AuthServer, TestApp, String) {
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let url = cluster.url();
    let app = oauth_app(db, &[(&ms, "sharepoint")], |c| c.database_url = url).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    (ms, app, id)
}

async fn lease_of(app: &TestApp, id: &str) -> Option<i64> {
    app.refresh_state(id).await.2
}

async fn blocking(cluster: &Arc<OwnCluster>, f: fn(&OwnCluster)) {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || f(&c)).await.unwrap();
}

#[test]
fn a_refresh_answered_while_the_database_is_down_keeps_the_rotated_token() {
    crate::helpers::run_test(async {
        let cluster = Arc::new(OwnCluster::start());
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let (ms, app, id) = arrange(&cluster, &db).await;
        let gate = Arc::new(Gate::default());
        ms.with(|i| i.refresh_gate = Some(gate.clone()));
        app.make_due(&id).await;
        let ctx = app.state.ctx.clone();
        let step = tokio::spawn(async move { try_refresh_due(&ctx, 10).await });
        gate.arrivals(1).await; // the lease is taken, the provider asked

        blocking(&cluster, OwnCluster::down).await;
        gate.release(1, Answer::Normal); // rotated: the old refresh token is spent
        tokio::time::sleep(Duration::from_secs(3)).await;
        blocking(&cluster, OwnCluster::up).await;
        let step = tokio::time::timeout(Duration::from_secs(60), step)
            .await
            .unwrap()
            .unwrap();
        let lease = lease_of(&app, &id).await;
        ms.with(|i| i.refresh_gate = None);
        app.make_due(&id).await;
        let next = try_refresh_due(&app.state, 10).await.unwrap();
        let (grants, reused) = ms.with(|i| (i.refresh_grants, i.reuse_detected));
        let (_, resolved) = app
            .call(
                Method::POST,
                &format!("/integrations/credentials/{id}/resolve"),
                &app.org.engine,
                None,
            )
            .await;

        assert_eq!(step.unwrap().refreshed, 1, "the write waited for the database");
        assert_eq!(lease, None, "the lease was released with the write");
        assert_eq!(next.refreshed, 1, "the next refresh used the rotated token");
        assert_eq!((grants, reused), (2, 0), "no refresh token was used twice");
        assert!(
            ms.access_valid(resolved["access_token"].as_str().unwrap()),
            "{resolved}"
        );
    });
}

#[test]
fn a_credential_due_during_an_outage_is_refreshed_once_the_database_is_back() {
    crate::helpers::run_test(async {
        let cluster = Arc::new(OwnCluster::start());
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let (ms, app, id) = arrange(&cluster, &db).await;
        app.make_due(&id).await;
        blocking(&cluster, OwnCluster::down).await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let worker = tokio::spawn(run_worker(app.state.ctx.clone(), stop_rx));

        tokio::time::sleep(Duration::from_secs(5)).await; // steps fail, the loop backs off
        let grants_during = ms.with(|i| i.refresh_grants);
        blocking(&cluster, OwnCluster::up).await;
        let mut refreshed = false;
        for _ in 0..300 {
            if ms.with(|i| i.refresh_grants) >= 1 && lease_of(&app, &id).await.is_none() {
                refreshed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop_tx.send(true);
        worker.await.unwrap();
        let (grants, reused) = ms.with(|i| (i.refresh_grants, i.reuse_detected));
        let failures = crate::helpers::captured_logs()
            .matches("token refresh step failed")
            .count();
        let (_, resolved) = app
            .call(
                Method::POST,
                &format!("/integrations/credentials/{id}/resolve"),
                &app.org.engine,
                None,
            )
            .await;

        assert_eq!(
            grants_during, 0,
            "nothing reached the provider while the database was away"
        );
        assert!(failures >= 1, "the worker's steps failed cleanly meanwhile");
        assert!(refreshed, "refreshed after the database came back, its lease released");
        assert_eq!((grants, reused), (1, 0), "one refresh, with the stored token");
        assert!(
            ms.access_valid(resolved["access_token"].as_str().unwrap()),
            "{resolved}"
        );
    });
}
