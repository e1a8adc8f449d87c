//! Unknown bearer tokens: limited per client address (an address over its
//! budget costs no store lookup), remembered briefly, and never a reason to
//! hold back a valid key; last use written at most once a minute per key.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::{Method, StatusCode};

use crate::helpers::{test_config, TestApp, TestDb};

const LOOKUPS: &str = "credgate_api_key_lookups_total";

fn from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

/// `GET /integrations/credentials` with `token`: status and whether Retry-After came.
async fn list_with(client: &reqwest::Client, app: &TestApp, token: &str) -> (StatusCode, bool) {
    let res = client
        .get(format!("{}/integrations/credentials", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (res.status(), res.headers().contains_key("retry-after"))
}

fn random_token() -> String {
    format!("cgk_{}", uuid::Uuid::new_v4().simple())
}

async fn an_address_over_its_failure_budget_gets_429_without_a_store_lookup(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.auth_failures_per_sec = 1; // bursts of two
    let app = TestApp::spawn_with(config).await;
    let guesser = from([127, 0, 0, 1]);
    let mut spent = Vec::new();
    for _ in 0..3 {
        spent.push(list_with(&guesser, &app, &random_token()).await.0);
    }
    let lookups_before = app.metric(LOOKUPS).await;

    let started = Instant::now();
    let answers: Vec<(StatusCode, bool)> = futures::stream::iter(0..200)
        .map(|_| {
            let (guesser, app) = (&guesser, &app);
            async move { list_with(guesser, app, &random_token()).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let took = started.elapsed();
    let lookups_after = app.metric(LOOKUPS).await;
    let other = from([127, 0, 0, 2]);
    let (other_bad, _) = list_with(&other, &app, "cgk_wrong").await;
    let (other_good, _) = list_with(&other, &app, &app.org.admin).await;

    assert_eq!(
        spent,
        [
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert!(
        answers.iter().all(|a| *a == (StatusCode::TOO_MANY_REQUESTS, true)),
        "every new token is 429 with Retry-After: {answers:?}"
    );
    assert_eq!(
        lookups_after, lookups_before,
        "200 guesses in {took:?} asked the store nothing"
    );
    assert_eq!(
        other_bad,
        StatusCode::UNAUTHORIZED,
        "another address has its own budget"
    );
    assert_eq!(other_good, StatusCode::OK);
}
crate::both_backends!(an_address_over_its_failure_budget_gets_429_without_a_store_lookup);

async fn an_unknown_token_repeated_within_its_window_costs_one_lookup(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.auth_failures_per_sec = 0;
    let app = TestApp::spawn_with(config).await;
    let client = reqwest::Client::new();
    // Shaped as this installation issues them: worth a lookup.
    let token = credgate::api_tokens::TokenFormat::load(&app.state.store)
        .await
        .unwrap()
        .mint();
    let before = app.metric(LOOKUPS).await;

    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(list_with(&client, &app, &token).await.0);
    }
    let within = app.metric(LOOKUPS).await;
    tokio::time::sleep(Duration::from_millis(2100)).await; // past the 2 s window
    statuses.push(list_with(&client, &app, &token).await.0);
    let after = app.metric(LOOKUPS).await;

    assert!(statuses.iter().all(|s| *s == StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert_eq!(within - before, 1, "ten tries of one unknown token, one lookup");
    assert_eq!(after - before, 2, "after the window the store is asked again");
}
crate::both_backends!(an_unknown_token_repeated_within_its_window_costs_one_lookup);

async fn an_api_keys_last_use_is_written_at_most_once_a_minute(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let sql = app.sql().await;
    let key_id: String = sqlx::query_scalar("SELECT id FROM api_keys WHERE org_id = $1 AND role = 'admin'")
        .bind(&app.org.id)
        .fetch_one(&sql)
        .await
        .unwrap();
    let last_used = || {
        let (sql, key_id) = (sql.clone(), key_id.clone());
        async move {
            sqlx::query_scalar::<_, Option<i64>>("SELECT last_used_at FROM api_keys WHERE id = $1")
                .bind(key_id)
                .fetch_one(&sql)
                .await
                .unwrap()
        }
    };
    // The write is off the request's path: wait for it to land (or not).
    let settle = || async {
        let mut seen = last_used().await;
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            seen = last_used().await;
        }
        seen
    };
    let never = last_used().await;

    let first_use = app.clock.now();
    app.call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;
    let first = settle().await;
    app.clock.advance(30);
    for _ in 0..5 {
        app.call(Method::GET, "/integrations/credentials", &app.org.admin, None)
            .await;
    }
    let half_a_minute_on = settle().await;
    app.clock.advance(31);
    let second_use = app.clock.now();
    app.call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;
    let a_minute_on = settle().await;

    assert_eq!(never, None);
    let first = first.expect("the first use is recorded");
    assert!((first_use..first_use + 2).contains(&first), "{first} vs {first_use}");
    assert_eq!(half_a_minute_on, Some(first), "uses within the minute write nothing");
    let later = a_minute_on.expect("recorded");
    assert!(
        (second_use..second_use + 2).contains(&later),
        "a minute on, written again: {later} vs {second_use}"
    );
}
crate::both_backends!(an_api_keys_last_use_is_written_at_most_once_a_minute);

#[test]
fn failed_authentications_are_limited_per_client_address_and_proxies_must_be_trusted() {
    crate::helpers::run_test(async {
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let mut config = test_config(&db);
        config.trusted_proxies = "127.0.0.3/32".into();
        let app = TestApp::spawn_with(config).await;
        let from = |ip: [u8; 4]| {
            reqwest::Client::builder()
                .local_address(std::net::IpAddr::from(ip))
                .build()
                .unwrap()
        };
        let url = format!("{}/integrations/credentials", app.base);
        let attempt = |client: reqwest::Client, token: String, forwarded: Option<&'static str>| {
            let url = url.clone();
            async move {
                let mut req = client.get(url).bearer_auth(token);
                if let Some(f) = forwarded {
                    req = req.header("x-forwarded-for", f);
                }
                req.send().await.unwrap().status()
            }
        };

        // A key verified before the guessing starts is cached and answered
        // from the cache: never held back by the address's failures.
        let warm = attempt(from([127, 0, 0, 1]), app.org.admin.clone(), None).await;
        let mut guessing = Vec::new();
        for n in 0..40 {
            guessing.push(attempt(from([127, 0, 0, 1]), format!("cgk_guess{n}"), None).await);
        }
        let valid_key_same_address = attempt(from([127, 0, 0, 1]), app.org.admin.clone(), None).await;
        let other_address = attempt(from([127, 0, 0, 2]), "cgk_wrong".into(), None).await;
        // An untrusted peer cannot pick its address with X-Forwarded-For.
        let spoofed = attempt(from([127, 0, 0, 1]), "cgk_wrong".into(), Some("198.51.100.7")).await;
        // Behind the trusted proxy, each forwarded client has its own budget.
        let mut behind_proxy = Vec::new();
        for n in 0..40 {
            behind_proxy.push(attempt(from([127, 0, 0, 3]), format!("cgk_p{n}"), Some("198.51.100.7")).await);
        }
        let other_client_behind_proxy = attempt(from([127, 0, 0, 3]), "cgk_x".into(), Some("198.51.100.8")).await;

        assert_eq!(warm, StatusCode::OK);
        assert_eq!(guessing[0], StatusCode::UNAUTHORIZED);
        assert!(guessing.contains(&StatusCode::TOO_MANY_REQUESTS), "{guessing:?}");
        assert_eq!(
            valid_key_same_address,
            StatusCode::OK,
            "a verified key is never held back by failures"
        );
        assert_eq!(other_address, StatusCode::UNAUTHORIZED);
        assert_eq!(
            spoofed,
            StatusCode::TOO_MANY_REQUESTS,
            "the header from an untrusted peer is ignored"
        );
        assert!(
            behind_proxy.contains(&StatusCode::TOO_MANY_REQUESTS),
            "{behind_proxy:?}"
        );
        assert_eq!(other_client_behind_proxy, StatusCode::UNAUTHORIZED);
    });
}
