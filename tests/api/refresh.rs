//! Token refresh: on demand, in the background, across replicas, without
//! ever reusing a rotated refresh token.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use credgate::oauth::worker::{try_refresh_due, Step};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{TestApp, TestDb};
use crate::oauth::{connect, oauth_app};
use crate::oauth_server::{AuthServer, Flavor, User};

pub async fn resolve(app: &TestApp, id: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/integrations/credentials/{id}/resolve"),
        &app.org.engine,
        None,
    )
    .await
}

async fn refresh_state(app: &TestApp, id: &str) -> (i64, Option<i64>, Option<i64>) {
    app.refresh_state(id).await
}

/// Time passes: the credential's scheduled refresh time arrives.
async fn make_due(app: &TestApp, id: &str) {
    let (_, after, _) = refresh_state(app, id).await;
    app.clock.advance(after.map_or(0, |t| t - app.clock.now() + 1).max(0));
}

pub async fn stored_refresh_token(app: &TestApp, id: &str) -> String {
    use secrecy::ExposeSecret;
    let row = app
        .state
        .store
        .credential(&app.org.id, &crate::helpers::cid(id))
        .await
        .unwrap()
        .unwrap();
    let groups = app
        .state
        .vault
        .open(&row.org_id, &row.id, &row.secret_ct, row.key_version)
        .await
        .unwrap();
    groups["tokens"]
        .get("refresh_token")
        .unwrap()
        .expose_secret()
        .to_owned()
}

async fn resolve_refreshes_a_token_that_expires_soon_and_stores_the_rotated_refresh_token(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    ms.with(|i| i.expires_in = 120);
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    let rt_before = stored_refresh_token(&app, &id).await;

    let (status, body) = resolve(&app, &id).await;
    let rt_after = stored_refresh_token(&app, &id).await;
    let (again, second) = resolve(&app, &id).await;
    let (_, events) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        ms.with(|i| i.refresh_grants),
        2,
        "120 s < the 300 s margin: each resolve refreshes"
    );
    assert_ne!(rt_before, rt_after, "the rotated refresh token was stored");
    assert!(ms.access_valid(body["access_token"].as_str().unwrap()));
    assert_eq!(again, StatusCode::OK);
    assert_ne!(body["access_token"], second["access_token"]);
    assert_eq!(ms.with(|i| i.reuse_detected), 0);
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..4],
        [
            "credential.resolve",
            "credential.refresh",
            "credential.resolve",
            "credential.refresh"
        ]
    );
}
both_backends!(resolve_refreshes_a_token_that_expires_soon_and_stores_the_rotated_refresh_token);

async fn concurrent_resolves_on_two_replicas_never_reuse_a_rotated_token(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    // Tokens live 3 s and are refreshed when under 2 s: a new lifetime every second.
    ms.with(|i| i.expires_in = 3);
    let first = oauth_app(&db, &[(&ms, "sharepoint")], |c| c.resolve_margin_secs = 2).await;
    let mut config = first.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = TestApp::spawn_with(config).await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        ms.with(|i| i.user = User::new(n));
        ids.push(connect(&first, "sharepoint", "").await["credential_id"].clone());
    }
    let grants_before = ms.with(|i| i.refresh_grants);

    let started = Instant::now();
    let run_for = Duration::from_secs(4);
    let mut tasks = Vec::new();
    for worker in 0..16 {
        let app = if worker % 2 == 0 { &first } else { &second };
        let (client, base, key, ids) = (
            app.client.clone(),
            app.base.clone(),
            first.org.engine.clone(),
            ids.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = worker;
            while started.elapsed() < run_for {
                let id = &ids[n % ids.len()];
                n += 1;
                let res = client
                    .post(format!("{base}/integrations/credentials/{id}/resolve"))
                    .bearer_auth(&key)
                    .send()
                    .await
                    .unwrap();
                let status = res.status();
                let body: Value = res.json().await.unwrap();
                seen.push((
                    status,
                    body["access_token"].as_str().unwrap_or("").to_owned(),
                    body["expires_at"].clone(),
                ));
            }
            seen
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.extend(t.await.unwrap());
    }
    let grants = ms.with(|i| i.refresh_grants) - grants_before;

    assert!(results.len() > 100, "only {} resolves ran", results.len());
    assert!(results.iter().all(|(s, _, _)| *s == StatusCode::OK), "a resolve failed");
    assert_eq!(
        ms.with(|i| i.reuse_detected),
        0,
        "a rotated refresh token was used twice"
    );
    let tokens: HashSet<&String> = results.iter().map(|(_, t, _)| t).collect();
    assert!(
        tokens.iter().all(|t| ms.access_valid(t)),
        "every resolved token is one the provider issued"
    );
    // About one exchange per credential per lifetime (1 s): 3 credentials × 4 s, plus slack.
    assert!(
        (6..=24).contains(&grants),
        "{grants} token requests for 3 credentials over 4 lifetimes"
    );
    for id in &ids {
        let (status, _) = resolve(&first, id).await;
        assert_eq!(status, StatusCode::OK, "the grant is still alive after the run");
    }
}
both_backends!(concurrent_resolves_on_two_replicas_never_reuse_a_rotated_token);

#[tokio::test]
async fn concurrent_resolves_in_one_process_cause_exactly_one_token_request() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    ms.with(|i| i.expires_in = 120);
    let app = Arc::new(oauth_app(&db, &[(&ms, "sharepoint")], |c| c.resolve_margin_secs = 60).await);
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();
    // 100 s pass: 20 s are left, within the 60 s margin.
    app.clock.advance(100);

    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (app, id) = (app.clone(), id.clone());
        tasks.push(tokio::spawn(async move { resolve(&app, &id).await }));
    }
    let mut tokens = HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        tokens.insert(body["access_token"].as_str().unwrap().to_owned());
    }

    assert_eq!(ms.with(|i| i.refresh_grants), 1);
    assert_eq!(tokens.len(), 1, "every caller got the one fresh token");
}

async fn a_revoked_grant_needs_reauth_until_the_account_is_reconnected(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    ms.with(|i| i.expires_in = 120);
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();

    ms.revoke_everything();
    let (status, problem) = resolve(&app, &id).await;
    let grants_after_failure = ms.with(|i| i.refresh_grants);
    let (again, _) = resolve(&app, &id).await;
    let step = try_refresh_due(&app.state, 100).await.unwrap();
    let grants_before_reconnect = ms.with(|i| i.refresh_grants);
    let (_, got) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    let reconnected = connect(&app, "sharepoint", &format!("&credential_id={id}")).await;
    let (after, body) = resolve(&app, &id).await;

    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(problem["code"], json!("needs_reauth"));
    assert!(
        problem["detail"].as_str().unwrap().contains("re-authorize"),
        "{problem}"
    );
    assert_eq!(again, StatusCode::CONFLICT);
    assert_eq!(
        grants_before_reconnect, grants_after_failure,
        "no retry of a dead grant"
    );
    assert_eq!(step, Step::default(), "the worker leaves it alone");
    assert_eq!(got["status"], json!("needs_reauth"));
    assert_eq!(got["last_error"]["code"], json!("needs_reauth"));
    assert_eq!(reconnected["credential_id"], id);
    assert_eq!(after, StatusCode::OK);
    assert!(ms.access_valid(body["access_token"].as_str().unwrap()));
}
both_backends!(a_revoked_grant_needs_reauth_until_the_account_is_reconnected);

async fn a_refresh_without_a_new_refresh_token_keeps_the_old_one(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    google.with(|i| i.expires_in = 100);
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let id = connect(&app, "google", "").await["credential_id"].clone();
    let before = stored_refresh_token(&app, &id).await;

    let (first, _) = resolve(&app, &id).await;
    let (second, _) = resolve(&app, &id).await;
    let after = stored_refresh_token(&app, &id).await;

    assert_eq!((first, second), (StatusCode::OK, StatusCode::OK));
    assert_eq!(google.with(|i| i.refresh_grants), 2);
    assert_eq!(before, after);
}
both_backends!(a_refresh_without_a_new_refresh_token_keeps_the_old_one);

async fn provider_errors_back_off_and_the_token_stays_usable_until_it_expires(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    // 20 s tokens: refreshed at about half their life, 10 s before expiry.
    ms.with(|i| i.expires_in = 20);
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |c| c.resolve_margin_secs = 5).await;
    let id = connect(&app, "sharepoint", "").await["credential_id"].clone();

    ms.with(|i| i.token_status = Some(StatusCode::TOO_MANY_REQUESTS));
    make_due(&app, &id).await;
    let failed = try_refresh_due(&app.state, 10).await.unwrap();
    let after_first = app.clock.now();
    let (failures, refresh_after, lease) = refresh_state(&app, &id).await;
    let immediately_again = try_refresh_due(&app.state, 10).await.unwrap();
    let (still_usable, _) = resolve(&app, &id).await;
    let (_, got) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    // The token expires while credgate backs off.
    app.clock.advance(11);
    let expired = app
        .client
        .post(format!("{}/integrations/credentials/{id}/resolve", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let grants_while_backing_off = ms.with(|i| i.refresh_grants);
    ms.with(|i| i.token_status = Some(StatusCode::SERVICE_UNAVAILABLE));
    make_due(&app, &id).await;
    let second_failure = try_refresh_due(&app.state, 10).await.unwrap();
    let after_second = app.clock.now();
    let (failures2, refresh_after2, _) = refresh_state(&app, &id).await;
    let (_, expired_view) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    ms.with(|i| i.token_status = None);
    make_due(&app, &id).await;
    let recovered = try_refresh_due(&app.state, 10).await.unwrap();
    let (_, healed) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(
        failed,
        Step {
            claimed: 1,
            refreshed: 0,
            failed: 1
        }
    );
    assert_eq!(failures, 1);
    assert!(refresh_after.unwrap() >= after_first + 29, "backs off at least 30 s");
    assert_eq!(lease, None, "the lease is released");
    assert_eq!(immediately_again.claimed, 0, "no retry storm");
    assert_eq!(still_usable, StatusCode::OK, "the old token still works");
    assert_eq!(got["status"], json!("active"));
    assert_eq!(got["last_error"]["code"], json!("provider_unavailable"));
    assert_eq!(expired.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(expired.headers().contains_key("retry-after"));
    assert_eq!(
        ms.with(|i| i.refresh_grants) - grants_while_backing_off,
        1,
        "resolve did not ask while backing off"
    );
    assert_eq!(second_failure.failed, 1);
    assert_eq!(failures2, 2);
    assert!(refresh_after2.unwrap() >= after_second + 59, "the backoff grows");
    assert_eq!(expired_view["status"], json!("expired"));
    assert_eq!(recovered.refreshed, 1);
    assert_eq!(healed["status"], json!("active"));
    assert!(healed.get("last_error").is_none());
}
both_backends!(provider_errors_back_off_and_the_token_stays_usable_until_it_expires);

async fn the_worker_refreshes_only_what_is_due(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    ms.with(|i| i.expires_in = 4000);
    let later = connect(&app, "sharepoint", "").await["credential_id"].clone();
    ms.with(|i| {
        i.user = User::new(2);
        i.expires_in = 1000
    });
    let soon = connect(&app, "sharepoint", "").await["credential_id"].clone();
    ms.with(|i| i.expires_in = 4000);
    let none_due_yet = try_refresh_due(&app.state, 100).await.unwrap();
    // Time passes: `soon` (1000 s, refreshed 500–600 s in) comes due.
    app.clock.advance(601);

    let step = try_refresh_due(&app.state, 100).await.unwrap();
    let (_, refreshed) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{soon}"),
            &app.org.admin,
            None,
        )
        .await;
    let (_, untouched) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{later}"),
            &app.org.admin,
            None,
        )
        .await;
    let next = try_refresh_due(&app.state, 100).await.unwrap();
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let now = app.clock.now();
    assert_eq!(none_due_yet.claimed, 0);
    assert_eq!(
        step,
        Step {
            claimed: 1,
            refreshed: 1,
            failed: 0
        }
    );
    assert_eq!(ms.with(|i| i.refresh_grants), 1);
    let expires = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v["expires_at"].as_str().unwrap())
            .unwrap()
            .timestamp()
    };
    assert!(expires(&refreshed) > now + 3900, "refreshed to a new 4000 s token");
    assert!(
        expires(&untouched) > now + 3300 && expires(&untouched) < now + 3400,
        "untouched"
    );
    let (_, after, _) = refresh_state(&app, &soon).await;
    assert!(
        after.unwrap() > now,
        "the next refresh is scheduled, jittered, before expiry"
    );
    assert_eq!(next.claimed, 0);
    assert!(
        metrics.contains(r#"credgate_token_refresh_attempts_total{provider="sharepoint",outcome="success"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("credgate_token_refresh_backlog"));
}
both_backends!(the_worker_refreshes_only_what_is_due);

async fn a_refresh_that_fails_on_a_store_error_gives_its_lease_back(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let id = connect(&app, "google", "").await["credential_id"].clone();
    make_due(&app, &id).await;
    let set_fields = |fields: String| {
        let (app, id) = (&app, &id);
        async move {
            sqlx::query("UPDATE credentials SET fields = $1 WHERE id = $2")
                .bind(fields)
                .bind(id)
                .execute(&app.sql().await)
                .await
                .unwrap();
        }
    };
    let fields: String = sqlx::query_scalar("SELECT fields FROM credentials WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    // The worker claims the credential, then cannot read it.
    set_fields("{\"tenant\": ".into()).await;

    let failed = try_refresh_due(&app.state, 10).await;
    let (_, _, lease) = refresh_state(&app, &id).await;
    set_fields(fields).await;
    let next_tick = try_refresh_due(&app.state, 10).await.unwrap();

    assert!(failed.is_err(), "the store error is reported");
    assert_eq!(lease, None, "the lease is given back, not held until it runs out");
    assert_eq!(
        next_tick,
        Step {
            claimed: 1,
            refreshed: 1,
            failed: 0
        },
        "the next step retries at once"
    );
}
both_backends!(a_refresh_that_fails_on_a_store_error_gives_its_lease_back);

async fn an_interrupted_refresh_is_picked_up_after_its_lease_expires(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    google.with(|i| i.expires_in = 100);
    let app = Arc::new(oauth_app(&db, &[(&google, "google")], |_| {}).await);
    let id = connect(&app, "google", "").await["credential_id"].clone();
    google.with(|i| i.token_delay = Some(Duration::from_secs(5)));
    make_due(&app, &id).await;

    let task = {
        let app = app.clone();
        tokio::spawn(async move { try_refresh_due(&app.state, 10).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    task.abort();
    let (_, _, lease) = refresh_state(&app, &id).await;
    google.with(|i| i.token_delay = None);
    let while_leased = try_refresh_due(&app.state, 10).await.unwrap();
    let leased_at = app.clock.now();
    app.clock.advance(credgate::oauth::LEASE_SECS + 1);
    let after_expiry = try_refresh_due(&app.state, 10).await.unwrap();

    assert!(lease.unwrap() > leased_at, "the aborted refresh left its lease");
    assert_eq!(while_leased.claimed, 0, "a live lease is respected");
    assert_eq!(
        after_expiry,
        Step {
            claimed: 1,
            refreshed: 1,
            failed: 0
        }
    );
}
both_backends!(an_interrupted_refresh_is_picked_up_after_its_lease_expires);
