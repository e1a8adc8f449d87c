//! The database that committed but whose answer never arrived: credgate
//! reads what the store holds before it acts again, so a write that landed
//! is a success and nothing is revoked or marked on that path.

use reqwest::{Method, StatusCode};

use super::fault_proxy::{FaultProxy, Withhold};
use crate::helpers::{Backend, TestApp, TestDb};
use crate::idempotency::create_with_key;
use crate::oauth::{connect, oauth_app};
use crate::oauth_server::{AuthServer, Flavor};
use crate::refresh::stored_refresh_token;

/// An app whose PostgreSQL store is behind a fault proxy (with `db_timeout`
/// as each store operation's limit, when given).
async fn behind_a_proxy(db: &TestDb, db_timeout: Option<std::time::Duration>) -> (FaultProxy, TestApp) {
    let proxy = FaultProxy::start(&db.url).await;
    let mut config = crate::helpers::test_config(db);
    config.database_url = proxy.url.clone();
    if let Some(limit) = db_timeout {
        config.db_timeout = limit;
    }
    (proxy, TestApp::spawn_with(config).await)
}

/// A PostgreSQL store behind a fault proxy, and a Microsoft stand-in that
/// rotates refresh tokens and revokes what it is asked to; one credential
/// connected.
async fn rotating(db: &TestDb) -> (FaultProxy, AuthServer, TestApp, String) {
    let proxy = FaultProxy::start(&db.url).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let revocation = format!("{}/revoke", ms.base);
    let app = oauth_app(db, &[(&ms, "sharepoint")], |c| {
        c.database_url = proxy.url.clone();
        c.provider_overrides
            .insert("CREDGATE_PROVIDER_SHAREPOINT_REVOCATION_URL".into(), revocation);
    })
    .await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    (proxy, ms, app, id)
}

#[test]
fn a_refresh_whose_commit_answer_is_lost_keeps_the_token_it_stored() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Postgres).await;
        let (proxy, ms, app, id) = rotating(&db).await;
        let path = format!("/integrations/credentials/{id}/refresh");

        proxy.withhold_commit_after("UPDATE credentials SET secret_ct", Withhold::Close);
        let (first, body) = app.call(Method::POST, &path, &app.org.admin, None).await;
        let stored = stored_refresh_token(&app, &id).await;
        // Give a background revocation time to reach the provider.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (second, after) = app.call(Method::POST, &path, &app.org.admin, None).await;

        assert_eq!(proxy.fired(), 1, "the refresh's COMMIT answer was withheld");
        assert_eq!(first, StatusCode::OK, "{body}");
        assert!(
            !ms.with(|i| i.revoked.contains(&stored)),
            "the refresh token it had stored was revoked"
        );
        assert_eq!(second, StatusCode::OK, "{after}");
        assert_eq!(after["status"], "active");
        assert_eq!(ms.with(|i| i.reuse_detected), 0);
    });
}

#[test]
fn a_create_whose_commit_answer_is_lost_is_made_once() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Postgres).await;
        let (proxy, app) = behind_a_proxy(&db, None).await;
        let body = crate::helpers::pg_body("lost answer", "pw");

        proxy.withhold_commit_after("INSERT INTO credentials", Withhold::Close);
        let (first, _, created) = create_with_key(&app, &app.org.admin, "retry-me", &body).await;
        let (again, replayed, answered) = create_with_key(&app, &app.org.admin, "retry-me", &body).await;
        let (_, list) = app.as_(&app.org.admin).get("/integrations/credentials").await;

        assert_eq!(proxy.fired(), 1, "the create's COMMIT answer was withheld");
        assert_eq!(
            first,
            StatusCode::CREATED,
            "the store was read before answering: {created}"
        );
        assert_eq!(again, StatusCode::CREATED);
        assert!(replayed);
        assert_eq!(answered["id"], created["id"]);
        assert_eq!(list["total"], 1, "{list}");
    });
}

#[test]
fn a_database_that_stops_answering_gives_quick_503s_not_hung_requests() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Postgres).await;
        let (proxy, app) = behind_a_proxy(&db, Some(std::time::Duration::from_secs(1))).await;
        let id = app.create_pg(&app.org, "before", "pw").await;
        let bounded = |path: String, body: Option<serde_json::Value>, key: String| {
            let app = &app;
            async move {
                let started = std::time::Instant::now();
                let sent = app
                    .client
                    .request(
                        if body.is_some() { Method::POST } else { Method::GET },
                        format!("{}{path}", app.base),
                    )
                    .bearer_auth(key)
                    .json(&body.unwrap_or(serde_json::Value::Null))
                    .send();
                match tokio::time::timeout(std::time::Duration::from_secs(30), sent).await {
                    Ok(res) => {
                        let res = res.unwrap();
                        let retry = res.headers().contains_key("retry-after");
                        let status = res.status();
                        let body: serde_json::Value = res.json().await.unwrap_or_default();
                        Some((status, retry, body["code"].clone(), started.elapsed()))
                    }
                    Err(_) => None,
                }
            }
        };

        proxy.fall_silent();
        let create = bounded(
            "/integrations/credentials".into(),
            Some(crate::helpers::pg_body("during", "pw")),
            app.org.admin.clone(),
        )
        .await;
        let resolve = bounded(
            format!("/integrations/credentials/{id}/resolve"),
            Some(serde_json::json!({})),
            app.org.engine.clone(),
        )
        .await;
        proxy.heal();
        let mut after = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..50 {
            after = app
                .as_(&app.org.admin)
                .post("/integrations/credentials", crate::helpers::pg_body("after", "pw"))
                .await
                .0;
            if after == StatusCode::CREATED {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }

        for answer in [create, resolve] {
            let (status, retry, code, took) = answer.expect("answered within 30 s, not hung");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(retry, "with Retry-After");
            assert_eq!(code, "store_unavailable");
            assert!(took < std::time::Duration::from_secs(10), "quick: {took:?}");
        }
        assert_eq!(
            after,
            StatusCode::CREATED,
            "once the database answers again, so does credgate"
        );
    });
}

#[test]
fn the_workers_refresh_whose_commit_answer_is_lost_keeps_the_token_it_stored() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Postgres).await;
        let (proxy, ms, app, id) = rotating(&db).await;
        app.make_due(&id).await;

        proxy.withhold_commit_after("UPDATE credentials SET secret_ct", Withhold::Close);
        let step = credgate::oauth::worker::try_refresh_due(&app.state, 10).await;
        let stored = stored_refresh_token(&app, &id).await;
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (again, after) = app
            .call(
                Method::POST,
                &format!("/integrations/credentials/{id}/refresh"),
                &app.org.admin,
                None,
            )
            .await;

        assert_eq!(proxy.fired(), 1, "the worker's COMMIT answer was withheld");
        assert!(step.is_ok(), "{step:?}");
        assert!(
            !ms.with(|i| i.revoked.contains(&stored)),
            "the stored refresh token was revoked"
        );
        assert_eq!(again, StatusCode::OK, "{after}");
        assert_eq!(ms.with(|i| i.reuse_detected), 0);
    });
}

#[test]
fn connections_left_with_a_dead_peer_do_not_keep_the_pool_from_recovering() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Postgres).await;
        let (proxy, app) = behind_a_proxy(&db, Some(std::time::Duration::from_secs(1))).await;
        let format = credgate::api_tokens::TokenFormat::load(&app.state.store).await.unwrap();
        let tokens: Vec<String> = (0..24).map(|_| format.mint()).collect();
        let warm: Vec<String> = (0..48).map(|_| format.mint()).collect();
        // The pool grows to its 16 connections.
        futures::future::join_all(warm.iter().map(|token| {
            let app = &app;
            async move { app.as_(token).get("/integrations/credentials").await }
        }))
        .await;

        // Every pooled connection is taken by a lookup the database never
        // answers; then the database answers new connections again, while
        // the old ones stay open and silent, as connections to a dead peer.
        proxy.fall_silent();
        let stuck = futures::future::join_all(tokens.iter().map(|token| {
            let app = &app;
            async move { app.as_(token).get("/integrations/credentials").await }
        }))
        .await;
        proxy.heal_new_connections();
        let started = std::time::Instant::now();
        let mut recovered = None;
        while started.elapsed() < std::time::Duration::from_secs(20) {
            let (status, _) = app
                .as_(&app.org.admin)
                .post("/integrations/credentials", crate::helpers::pg_body("after", "pw"))
                .await;
            if status == StatusCode::CREATED {
                recovered = Some(started.elapsed());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }

        assert!(
            stuck.iter().all(|(s, _)| *s == StatusCode::SERVICE_UNAVAILABLE),
            "{stuck:?}"
        );
        assert!(
            recovered.is_some(),
            "the pool's connections to the dead peer were closed, new ones made"
        );
    });
}
