//! Secret writes that meet: each race is made to happen (a stand-in that
//! holds a refresh at the token endpoint, two replicas, a moved clock), and
//! no write may undo a newer one or lose a rotated refresh token.

use std::sync::Arc;

use credgate::oauth::worker::try_refresh_due;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{TestApp, TestDb};
use crate::oauth::{connect, oauth_app};
use crate::oauth_server::{Answer, AuthServer, Flavor, Gate};
use crate::refresh::resolve;

fn gate(server: &AuthServer) -> Arc<Gate> {
    let gate = Arc::new(Gate::default());
    server.with(|i| i.refresh_gate = Some(gate.clone()));
    gate
}

async fn status_of(app: &TestApp, id: &str) -> String {
    let (_, body) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    body["status"].as_str().unwrap_or_default().to_owned()
}

/// `POST …/refresh` in the background (the stand-in's gate holds it).
fn spawn_refresh(app: &TestApp, id: &str) -> tokio::task::JoinHandle<StatusCode> {
    let url = format!("{}/integrations/credentials/{id}/refresh", app.base);
    let (client, key) = (app.client.clone(), app.org.admin.clone());
    tokio::spawn(async move { client.post(url).bearer_auth(key).send().await.unwrap().status() })
}

async fn a_patch_during_a_refresh_is_a_conflict_and_the_rotated_token_survives(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    let gate = gate(&ms);

    let refresh = spawn_refresh(&app, &id);
    gate.arrivals(1).await;
    let (patched, problem) = app
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            Some(json!({"fields": {}})),
        )
        .await;
    gate.release(1, Answer::Normal);
    let refreshed = refresh.await.unwrap();
    // The next refresh uses the token the first one stored: no reuse.
    gate.release(2, Answer::Normal);
    let (again, _) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/refresh"),
            &app.org.admin,
            None,
        )
        .await;
    let (resolved, body) = resolve(&app, &id).await;

    assert_eq!(patched, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "conflict");
    assert_eq!(refreshed, StatusCode::OK);
    assert_eq!(again, StatusCode::OK);
    assert_eq!(
        ms.with(|i| i.reuse_detected),
        0,
        "a rotated refresh token was never used twice"
    );
    assert_eq!(resolved, StatusCode::OK);
    assert!(ms.access_valid(body["access_token"].as_str().unwrap()));
    assert_eq!(status_of(&app, &id).await, "active");
}
both_backends!(a_patch_during_a_refresh_is_a_conflict_and_the_rotated_token_survives);

async fn a_refresh_in_flight_never_overwrites_a_reauthorization_that_finished_first(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    let gate = gate(&ms);

    let refresh = spawn_refresh(&app, &id);
    gate.arrivals(1).await;
    // Meanwhile the person re-authorizes; the old grant is revoked.
    ms.revoke_everything();
    let reauth = connect(&app, "sharepoint", &format!("&credential_id={id}")).await;
    gate.release(1, Answer::Normal);
    let held = refresh.await.unwrap();
    let (resolved, body) = resolve(&app, &id).await;

    assert_eq!(reauth["result"], "success");
    assert_eq!(
        held,
        StatusCode::OK,
        "the refresh reports the credential as it now stands"
    );
    assert_eq!(
        status_of(&app, &id).await,
        "active",
        "the old grant's failure did not mark the new one needs_reauth"
    );
    assert_eq!(resolved, StatusCode::OK);
    assert!(
        ms.access_valid(body["access_token"].as_str().unwrap()),
        "the re-authorization's token is the one stored"
    );
}
both_backends!(a_refresh_in_flight_never_overwrites_a_reauthorization_that_finished_first);

async fn a_stale_workers_failure_never_marks_a_credential_another_replica_refreshed(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let first = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let mut config = first.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = TestApp::spawn_with_clock(config, first.clock.clone()).await;
    let id = connect(&first, "google", "").await["credential_id"].clone();
    let gate = gate(&google);
    first.clock.advance(3599 - 300);

    let stale = {
        let ctx = first.state.ctx.clone();
        tokio::spawn(async move { try_refresh_due(&ctx, 10).await })
    };
    gate.arrivals(1).await;
    // The first worker's lease runs out while it waits at the provider.
    first.clock.advance(61);
    let fresh = {
        let ctx = second.state.ctx.clone();
        tokio::spawn(async move { try_refresh_due(&ctx, 10).await })
    };
    gate.arrivals(2).await;
    gate.release(2, Answer::Normal);
    let fresh = fresh.await.unwrap().unwrap();
    gate.release(1, Answer::InvalidGrant);
    let _ = stale.await.unwrap();
    let (resolved, body) = resolve(&first, &id).await;

    assert_eq!(fresh.claimed, 1, "the second replica took over the expired lease");
    assert_eq!(fresh.refreshed, 1);
    assert_eq!(status_of(&first, &id).await, "active");
    assert_eq!(resolved, StatusCode::OK);
    assert!(google.access_valid(body["access_token"].as_str().unwrap()));
}
both_backends!(a_stale_workers_failure_never_marks_a_credential_another_replica_refreshed);

async fn rotate_org_while_writers_commit_leaves_nothing_under_the_old_key(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(
            app.create_pg(&app.org, &format!("c{n}"), &crate::helpers::sentinel())
                .await,
        );
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, base, key, ids, stop) = (
            app.client.clone(),
            app.base.clone(),
            app.org.admin.clone(),
            ids.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
                let mut statuses = Vec::new();
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    n += 1;
                    let res = if n % 3 == 0 {
                        client.post(format!("{base}/integrations/credentials")).bearer_auth(&key)
                            .json(&crate::helpers::pg_body(&format!("w{w}-{n}"), "pw")).send().await.unwrap()
                    } else {
                        let id = &ids[(w + n) % ids.len()];
                        client.patch(format!("{base}/integrations/credentials/{id}")).bearer_auth(&key)
                            .json(&json!({"fields": {"host": "db.example.com", "database": "d", "username": "u", "password": format!("p{n}")}}))
                            .send().await.unwrap()
                    };
                    statuses.push(res.status());
                }
                statuses
            }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let mut rotations = Vec::new();
    for _ in 0..3 {
        rotations.push(app.state.vault.rotate_org(&app.org.id).await.map(|r| r.version));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut statuses = Vec::new();
    for w in writers {
        statuses.extend(w.await.unwrap());
    }
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE org_id = $1 AND key_version < 4")
        .bind(&app.org.id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM org_keys WHERE org_id = $1")
        .bind(&app.org.id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    assert!(rotations.iter().all(|r| r.is_ok()), "{rotations:?}");
    assert_eq!(rotations.last().unwrap().as_ref().unwrap(), &4);
    let written = statuses.iter().filter(|s| s.is_success()).count();
    assert!(written > 10, "the writers wrote during the rotations: {written}");
    // 409s are writers meeting each other (or the quota), never the rotation.
    assert!(
        statuses.iter().all(|s| s.is_success() || *s == StatusCode::CONFLICT),
        "no writer failed: {statuses:?}"
    );
    assert_eq!(left, 0, "every credential is under the newest key");
    assert_eq!(keys, 1, "the old keys are gone");
    for id in &ids {
        assert_eq!(resolve(&app, id).await.0, StatusCode::OK);
    }
}
both_backends!(rotate_org_while_writers_commit_leaves_nothing_under_the_old_key);

async fn reauthorizing_in_place_with_another_account_is_refused(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let id = connect(&app, "google", "").await["credential_id"].clone();
    let (_, before) = resolve(&app, &id).await;
    google.with(|i| i.user = crate::oauth_server::User::new(2));

    let result = connect(&app, "google", &format!("&credential_id={id}")).await;
    let (_, after) = resolve(&app, &id).await;
    let (_, cred) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(result["result"], "error");
    assert_eq!(result["code"], "account_mismatch");
    assert_eq!(
        after["access_token"], before["access_token"],
        "nothing of the other account was stored"
    );
    assert_eq!(cred["account"]["email"], "user1@example.com");
}
both_backends!(reauthorizing_in_place_with_another_account_is_refused);

async fn refresh_now_always_asks_the_provider_and_concurrent_calls_share_one_request(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    let path = format!("/integrations/credentials/{id}/refresh");

    let (first, _) = app.call(Method::POST, &path, &app.org.admin, None).await;
    let (second, _) = app.call(Method::POST, &path, &app.org.admin, None).await;
    let after_two = ms.with(|i| i.refresh_grants);
    // The stand-in holds the first provider call until all five callers
    // are waiting for it.
    let gate = gate(&ms);
    let calls: Vec<_> = (0..5).map(|_| spawn_refresh(&app, &id)).collect();
    gate.arrivals(1).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let arrived_while_held = ms.with(|i| i.refresh_grants) - after_two;
    gate.release(1, Answer::Normal);
    // Should a second provider call come anyway, it is let through (the
    // assertion below reports it) rather than left hanging.
    for n in 2..=5 {
        gate.release(n, Answer::Normal);
    }
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap());
    }

    assert_eq!((first, second), (StatusCode::OK, StatusCode::OK));
    assert_eq!(after_two, 2, "two refreshes within seconds both asked the provider");
    assert_eq!(
        arrived_while_held, 0,
        "the held call is not counted until it is answered"
    );
    assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{statuses:?}");
    assert_eq!(
        ms.with(|i| i.refresh_grants) - after_two,
        1,
        "five concurrent calls shared one provider call"
    );
    assert_eq!(ms.with(|i| i.reuse_detected), 0);
}
both_backends!(refresh_now_always_asks_the_provider_and_concurrent_calls_share_one_request);

async fn a_refresh_that_lost_to_a_reauthorization_revokes_the_rotated_token_it_obtained(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    // A rotating provider with a revocation endpoint (RFC 7009).
    let revocation = (
        "CREDGATE_PROVIDER_SHAREPOINT_REVOCATION_URL".to_owned(),
        format!("{}/revoke", ms.base),
    );
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |c| {
        c.provider_overrides.insert(revocation.0, revocation.1);
    })
    .await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    let gate = gate(&ms);

    let refresh = spawn_refresh(&app, &id);
    gate.arrivals(1).await;
    // The person re-authorizes while the refresh waits at the provider;
    // the old grant stays valid, so the held refresh succeeds there.
    let reauth = connect(&app, "sharepoint", &format!("&credential_id={id}")).await;
    let issued_before = ms.with(|i| i.issued.len());
    gate.release(1, Answer::Normal);
    let held = refresh.await.unwrap();
    let obtained: Vec<String> = ms.with(|i| i.issued[issued_before..].to_vec());
    let mut revoked = Vec::new();
    for _ in 0..100 {
        revoked = ms.with(|i| i.revoked.clone());
        if !revoked.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (resolved, body) = resolve(&app, &id).await;
    let stored = body["access_token"].as_str().unwrap_or_default().to_owned();

    assert_eq!(reauth["result"], "success");
    assert_eq!(
        held,
        StatusCode::OK,
        "the refresh reports the credential as it now stands"
    );
    assert_eq!(
        obtained.len(),
        2,
        "the held refresh got a new access and refresh token: {}",
        obtained.len()
    );
    assert_eq!(revoked.len(), 1, "one token was revoked: {revoked:?}");
    assert!(
        obtained.contains(&revoked[0]),
        "the revoked token is one the lost refresh obtained"
    );
    assert_eq!(resolved, StatusCode::OK);
    assert!(
        !obtained.contains(&stored),
        "the lost refresh's access token is not the one stored"
    );
    assert!(
        ms.access_valid(&stored),
        "the re-authorization's token is stored and valid"
    );
    assert_eq!(status_of(&app, &id).await, "active");
    assert_eq!(ms.with(|i| i.reuse_detected), 0);
}
both_backends!(a_refresh_that_lost_to_a_reauthorization_revokes_the_rotated_token_it_obtained);
