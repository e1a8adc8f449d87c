//! Credential health: the ends credgate knows (an API key's end date, a
//! refresh token's stated or declared lifetime), `health` computed from
//! them, the status and failures, and `?health=` on the listing; with the
//! test clock, no sleeping through days.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{TestApp, TestDb};

const DAY: i64 = 86_400;

fn rfc3339(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339()
}

async fn create_key(app: &TestApp, name: &str, expires_at: Option<String>) -> (StatusCode, Value) {
    let mut body = json!({"name": name, "provider": "http", "auth_type": "api_key",
        "fields": {"base_url": "http://127.0.0.1:9", "scheme": "bearer", "token": "t"}});
    if let Some(t) = expires_at {
        body["expires_at"] = json!(t);
    }
    app.call(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
        .await
}

async fn get(app: &TestApp, id: &str) -> Value {
    let (status, view) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    view
}

/// The names listed with `?health=`.
async fn listed(app: &TestApp, health: &str) -> Vec<String> {
    let (status, page) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials?health={health}"),
            &app.org.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut names: Vec<String> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["health"], health, "{c}");
            c["name"].as_str().unwrap().to_owned()
        })
        .collect();
    names.sort();
    names
}

async fn an_api_keys_end_date_makes_it_expiring_then_needs_reauth(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let now = app.clock.now();
    let (created, ending) = create_key(&app, "ending", Some(rfc3339(now + 20 * DAY))).await;
    let id = ending["id"].as_str().unwrap().to_owned();
    let (_, _) = create_key(&app, "lasting", None).await;
    let (bad, refused) = create_key(&app, "bad", Some("next tuesday".into())).await;

    let fresh = get(&app, &id).await;
    let ok_at_first = listed(&app, "ok").await;
    app.clock.advance(7 * DAY);
    let warned = get(&app, &id).await;
    let expiring = listed(&app, "expiring").await;
    let ok_then = listed(&app, "ok").await;
    app.clock.advance(14 * DAY);
    let ended = get(&app, &id).await;
    let needs_reauth = listed(&app, "needs_reauth").await;
    let later = rfc3339(app.clock.now() + 100 * DAY);
    let (patched, renewed) = app
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            Some(json!({"expires_at": later})),
        )
        .await;
    let (bad_patch, bad_patch_body) = app
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            Some(json!({"expires_at": "2027-13-45"})),
        )
        .await;
    let (_, cleared) = app
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            Some(json!({"expires_at": null})),
        )
        .await;
    let (bad_filter, bad_filter_body) = app
        .call(
            Method::GET,
            "/integrations/credentials?health=bad",
            &app.org.admin,
            None,
        )
        .await;
    let (_, all) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;

    assert_eq!(created, StatusCode::CREATED, "{ending}");
    assert_eq!(ending["health"], "ok");
    assert_eq!(
        ending["secret_expires_at"],
        json!(rfc3339(now + 20 * DAY).replace("+00:00", "Z"))
    );
    assert_eq!(bad, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused["errors"][0]["field"], "expires_at", "{refused}");
    assert_eq!(fresh["health"], "ok");
    assert_eq!(ok_at_first, ["ending", "lasting"]);
    assert_eq!(warned["health"], "expiring", "within 14 days of its end: {warned}");
    assert_eq!(expiring, ["ending"]);
    assert_eq!(ok_then, ["lasting"]);
    assert_eq!(ended["health"], "needs_reauth", "its end has passed: {ended}");
    assert_eq!(
        ended["status"], "active",
        "the status says what credgate saw; health what a person should do"
    );
    assert_eq!(needs_reauth, ["ending"]);
    assert_eq!(patched, StatusCode::OK, "{renewed}");
    assert_eq!(renewed["health"], "ok");
    assert_eq!(bad_patch, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_patch_body["errors"][0]["field"], "expires_at");
    assert!(cleared.get("secret_expires_at").is_none(), "{cleared}");
    assert_eq!(bad_filter, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_filter_body["errors"][0]["field"], "health");
    assert_eq!(
        all["items"].as_array().unwrap().len(),
        2,
        "the refused create stored nothing"
    );
}
both_backends!(an_api_keys_end_date_makes_it_expiring_then_needs_reauth);

async fn a_credential_whose_test_fails_is_failing(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let (_, made) = create_key(&app, "tested", None).await;
    let id = made["id"].as_str().unwrap().to_owned();
    // Its test calls its base URL: a loopback address the egress guard refuses.
    let (_, tested) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.admin,
            None,
        )
        .await;

    let view = get(&app, &id).await;
    let failing = listed(&app, "failing").await;
    let ok = listed(&app, "ok").await;

    assert_eq!(tested["ok"], false, "{tested}");
    assert_eq!(view["status"], "error");
    assert_eq!(view["health"], "failing");
    assert_eq!(failing, ["tested"]);
    assert!(ok.is_empty());
}
both_backends!(a_credential_whose_test_fails_is_failing);

async fn a_refresh_tokens_stated_or_declared_end_is_kept_and_each_refresh_renews_it(backend: crate::helpers::Backend) {
    use crate::oauth::{connect, oauth_app};
    use crate::oauth_server::{AuthServer, Flavor};
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&ms, "microsoft"), (&google, "google")], |_| {}).await;
    let start = app.clock.now();
    // Microsoft's file declares 90 days after inactivity.
    let microsoft = connect(&app, "microsoft", "").await["credential_id"].clone();
    // Google's answer states it (as GitHub apps do): 30 days.
    google.with(|i| i.refresh_token_expires_in = Some((30 * DAY) as u64));
    let stated = connect(&app, "google", "").await["credential_id"].clone();

    let connected = get(&app, &microsoft).await;
    let stated_view = get(&app, &stated).await;
    app.clock.advance(20 * DAY);
    let before_refresh = get(&app, &stated).await;
    let step = credgate::oauth::worker::try_refresh_due(&app.state, 10).await.unwrap();
    let refreshed = get(&app, &microsoft).await;
    let stated_refreshed = get(&app, &stated).await;

    let at = |v: &Value, key: &str| {
        chrono::DateTime::parse_from_rfc3339(v[key].as_str().unwrap_or_else(|| panic!("no {key}: {v}")))
            .unwrap()
            .timestamp()
    };
    let near = |t: i64, want: i64| (want - 5..=want + 5).contains(&t);
    assert!(
        near(at(&connected, "refresh_expires_at"), start + 90 * DAY),
        "{connected}"
    );
    assert_eq!(connected["health"], "ok");
    assert!(
        near(at(&stated_view, "refresh_expires_at"), start + 30 * DAY),
        "{stated_view}"
    );
    assert_eq!(before_refresh["health"], "expiring", "10 days left: {before_refresh}");
    assert_eq!(step.refreshed, 2, "both were due (their access tokens expired)");
    assert!(
        near(at(&refreshed, "refresh_expires_at"), start + 110 * DAY),
        "a refresh renews an inactivity lifetime: {refreshed}"
    );
    assert!(
        near(at(&stated_refreshed, "refresh_expires_at"), start + 50 * DAY),
        "the new answer states it again: {stated_refreshed}"
    );
    assert_eq!(stated_refreshed["health"], "ok");
}
both_backends!(a_refresh_tokens_stated_or_declared_end_is_kept_and_each_refresh_renews_it);

async fn a_grant_whose_access_token_never_expires_is_refreshed_to_keep_its_refresh_token_alive(
    backend: crate::helpers::Backend,
) {
    use crate::oauth::{connect, oauth_app};
    use crate::oauth_server::{AuthServer, Flavor};
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let start = app.clock.now();
    // No expiry on the access token; the refresh token lapses 30 days after
    // it was issued, and each refresh issues one for 30 days more.
    google.with(|i| {
        i.expires_in = 0;
        i.refresh_token_expires_in = Some((30 * DAY) as u64);
    });
    let id = connect(&app, "google", "").await["credential_id"].clone();

    let connected = get(&app, &id).await;
    let early = credgate::oauth::worker::try_refresh_due(&app.state, 10).await.unwrap();
    app.clock.advance(16 * DAY);
    let kept = credgate::oauth::worker::try_refresh_due(&app.state, 10).await.unwrap();
    let renewed = get(&app, &id).await;

    let at = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v["refresh_expires_at"].as_str().unwrap_or_else(|| panic!("{v}")))
            .unwrap()
            .timestamp()
    };
    assert_eq!(connected["expires_at"], Value::Null, "{connected}");
    assert!((start + 30 * DAY - 5..=start + 30 * DAY + 5).contains(&at(&connected)));
    assert_eq!(early.claimed, 0, "nothing to do at first");
    assert_eq!(
        kept.refreshed, 1,
        "refreshed halfway to its end, though its access token never expires"
    );
    assert!(
        (start + 46 * DAY - 5..=start + 46 * DAY + 5).contains(&at(&renewed)),
        "the new refresh token's end: {renewed}"
    );
    assert_eq!(renewed["health"], "ok");
}
both_backends!(a_grant_whose_access_token_never_expires_is_refreshed_to_keep_its_refresh_token_alive);

/// The organization's events of `kind`: (credential, detail), by event id.
async fn events(app: &TestApp, kind: &str) -> std::collections::BTreeMap<i64, (String, Value)> {
    let (status, page) = app
        .call(Method::GET, "/integrations/events", &app.org.admin, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| {
            (
                e["id"].as_i64().unwrap(),
                (
                    e["credential_id"].as_str().unwrap_or_default().to_owned(),
                    e["payload"]["detail"].clone(),
                ),
            )
        })
        .collect()
}

async fn each_threshold_is_notified_once_whichever_replica_sweeps(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let first = TestApp::spawn(&db).await;
    let mut config = first.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = TestApp::spawn_with_clock(config, first.clock.clone()).await;
    let now = first.clock.now();
    let (_, ending) = create_key(&first, "ending", Some(rfc3339(now + 20 * DAY))).await;
    let id = ending["id"].as_str().unwrap().to_owned();
    let (_, _) = create_key(&first, "lasting", None).await;
    let sweep = || async {
        // Both replicas at once, twice.
        for _ in 0..2 {
            let (a, b) = tokio::join!(
                credgate::oauth::worker::housekeeping(&first.state),
                credgate::oauth::worker::housekeeping(&second.state)
            );
            a.unwrap();
            b.unwrap();
        }
    };

    // Housekeeping drops events older than 7 days: what was seen is kept.
    let mut seen = std::collections::BTreeMap::new();
    sweep().await;
    seen.extend(events(&first, "credential.expiring").await);
    let at_20_days = seen.clone();
    first.clock.advance(7 * DAY);
    sweep().await;
    seen.extend(events(&first, "credential.expiring").await);
    let at_13_days = seen.clone();
    first.clock.advance(11 * DAY);
    sweep().await;
    seen.extend(events(&first, "credential.expiring").await);
    let at_2_days = seen.clone();
    first.clock.advance(DAY + DAY / 2);
    sweep().await;
    seen.extend(events(&first, "credential.expiring").await);
    let at_half_a_day = seen.clone();
    first.clock.advance(DAY);
    sweep().await;
    let ended: Vec<(String, Value)> = events(&first, "credential.needs_reauth").await.into_values().collect();
    // A new end date: its thresholds count again.
    let later = rfc3339(first.clock.now() + 10 * DAY);
    first
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &first.org.admin,
            Some(json!({"expires_at": later})),
        )
        .await;
    sweep().await;
    seen.extend(events(&first, "credential.expiring").await);
    let renewed = seen;

    let days = |list: &std::collections::BTreeMap<i64, (String, Value)>| -> Vec<i64> {
        let mut d: Vec<i64> = list
            .values()
            .map(|(c, detail)| {
                assert_eq!(c, &id, "only the credential with an end");
                detail["days"].as_i64().unwrap()
            })
            .collect();
        d.sort_unstable();
        d
    };
    assert!(at_20_days.is_empty(), "{at_20_days:?}");
    assert_eq!(days(&at_13_days), [14]);
    assert_eq!(days(&at_2_days), [3, 14]);
    assert_eq!(days(&at_half_a_day), [1, 3, 14]);
    assert_eq!(ended.len(), 1, "{ended:?}");
    assert_eq!(ended[0].1["reason"], "ended");
    assert_eq!(days(&renewed), [1, 3, 14, 14], "the new end is 10 days away");
}
both_backends!(each_threshold_is_notified_once_whichever_replica_sweeps);

async fn a_refused_refresh_notifies_needs_reauth_once(backend: crate::helpers::Backend) {
    use crate::oauth::{connect, oauth_app};
    use crate::oauth_server::{AuthServer, Flavor};
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "microsoft")], |_| {}).await;
    let id = connect(&app, "microsoft", "").await["credential_id"].clone();
    ms.revoke_everything();

    app.clock.advance(2 * 3600);
    let first = credgate::oauth::worker::try_refresh_due(&app.state, 10).await.unwrap();
    app.clock.advance(2 * 3600);
    let again = credgate::oauth::worker::try_refresh_due(&app.state, 10).await.unwrap();
    let view = get(&app, &id).await;
    let notified: Vec<(String, Value)> = events(&app, "credential.needs_reauth").await.into_values().collect();

    assert_eq!(first.failed, 1, "{first:?}");
    assert_eq!(again.claimed, 0, "a dead grant is not claimed again");
    assert_eq!(view["health"], "needs_reauth");
    assert_eq!(notified.len(), 1, "{notified:?}");
    assert_eq!(notified[0].0, id);
    assert_eq!(notified[0].1["reason"], "refresh_refused");
}
both_backends!(a_refused_refresh_notifies_needs_reauth_once);

async fn an_organizations_app_whose_secret_expires_is_notified_once_per_threshold(backend: crate::helpers::Backend) {
    use crate::oauth::oauth_app;
    use crate::oauth_server::{AuthServer, Flavor};
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let secret = crate::helpers::sentinel();
    let put = |ends: i64| {
        let body = json!({"client_id": "org-client", "client_secret": secret.clone(),
            "client_secret_expires_at": rfc3339(ends)});
        app.call(
            Method::PUT,
            "/integrations/oauth-apps/google",
            &app.org.admin,
            Some(body),
        )
    };
    let sweep = || async {
        for _ in 0..2 {
            credgate::oauth::worker::housekeeping(&app.state).await.unwrap();
        }
    };
    let mut seen = std::collections::BTreeMap::new();

    let (status, _) = put(app.clock.now() + 10 * DAY).await;
    sweep().await;
    seen.extend(events(&app, "oauth_app.secret_expiring").await);
    let first = seen.clone();
    app.clock.advance(8 * DAY);
    sweep().await;
    seen.extend(events(&app, "oauth_app.secret_expiring").await);
    let second = seen.clone();
    // A new secret with a new end: its thresholds count again.
    put(app.clock.now() + 5 * DAY).await;
    sweep().await;
    seen.extend(events(&app, "oauth_app.secret_expiring").await);
    let (_, page) = app
        .call(Method::GET, "/integrations/events", &app.org.admin, None)
        .await;

    let days = |m: &std::collections::BTreeMap<i64, (String, Value)>| -> Vec<i64> {
        m.values().map(|(_, d)| d["days"].as_i64().unwrap()).collect()
    };
    assert_eq!(status, StatusCode::OK);
    assert_eq!(days(&first), [14]);
    assert_eq!(days(&second), [14, 3]);
    assert_eq!(days(&seen), [14, 3, 14]);
    assert!(seen.values().all(|(_, d)| d["client_id"] == "org-client"));
    assert!(!page.to_string().contains(&secret), "no event carries the secret");
}
both_backends!(an_organizations_app_whose_secret_expires_is_notified_once_per_threshold);

/// GitHub's `/user`, which names the token's end in a header.
async fn github_stand_in(ends: String) -> String {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/user",
        get(move || {
            let ends = ends.clone();
            async move {
                (
                    [("github-authentication-token-expiration", ends)],
                    axum::Json(json!({"login": "octocat", "name": "Mona", "email": null})),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn a_test_reads_the_tokens_end_where_the_service_tells_it(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ends = app_time_in(5 * DAY);
    let base = github_stand_in(ends.format("%Y-%m-%d %H:%M:%S UTC").to_string()).await;
    let mut config = crate::helpers::test_config(&db);
    config.egress_allow = "127.0.0.0/8".into();
    config
        .provider_overrides
        .insert("CREDGATE_PROVIDER_GITHUB_API_BASE_URL".into(), base);
    let app = TestApp::spawn_with(config).await;
    let token = format!("ghp_{}", "a".repeat(36));
    let (created, made) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &app.org.admin,
            Some(json!({"name": "GitHub", "provider": "github", "auth_type": "api_key", "fields": {"token": token}})),
        )
        .await;
    let id = made["id"].as_str().unwrap().to_owned();

    let before = get(&app, &id).await;
    let (_, tested) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/test"),
            &app.org.admin,
            None,
        )
        .await;
    let after = get(&app, &id).await;

    assert_eq!(created, StatusCode::CREATED, "{made}");
    assert!(before.get("secret_expires_at").is_none());
    assert_eq!(tested["ok"], true, "{tested}");
    assert_eq!(
        after["secret_expires_at"],
        json!(ends.format("%Y-%m-%dT%H:%M:%SZ").to_string()),
        "{after}"
    );
    assert_eq!(after["health"], "expiring");
}
both_backends!(a_test_reads_the_tokens_end_where_the_service_tells_it);

/// Now plus `secs`, to the second (the test clock starts at the wall clock).
fn app_time_in(secs: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(chrono::Utc::now().timestamp() + secs, 0).unwrap()
}
