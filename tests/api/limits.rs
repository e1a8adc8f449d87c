//! Quotas and rate limits.

use std::collections::HashMap;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{pg_body, sentinel, test_config, TestApp, TestDb};

async fn concurrent_creates_on_two_instances_admit_exactly_the_limit(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let first = TestApp::spawn(&db).await;
    let mut config = first.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = TestApp::spawn_with(config).await;
    let org = first.org.clone();

    let mut tasks = Vec::new();
    for i in 0..80 {
        let app = if i % 2 == 0 { &first } else { &second };
        let (client, url, key) = (
            app.client.clone(),
            format!("{}/integrations/credentials", app.base),
            org.admin.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .bearer_auth(key)
                .json(&pg_body(&format!("c{i}"), "pw"))
                .send()
                .await
                .unwrap();
            let status = res.status();
            let body: serde_json::Value = res.json().await.unwrap();
            (status, body["code"].clone())
        }));
    }
    let mut counts: HashMap<StatusCode, usize> = HashMap::new();
    for t in tasks {
        let (status, code) = t.await.unwrap();
        if status == StatusCode::CONFLICT {
            assert_eq!(code, json!("quota_exceeded"));
        }
        *counts.entry(status).or_default() += 1;
    }
    let (_, listed) = first
        .call(Method::GET, "/integrations/credentials?per_page=1", &org.admin, None)
        .await;

    assert_eq!(counts.get(&StatusCode::CREATED), Some(&50), "{counts:?}");
    assert_eq!(counts.get(&StatusCode::CONFLICT), Some(&30), "{counts:?}");
    assert_eq!(listed["total"], json!(50));
}
both_backends!(concurrent_creates_on_two_instances_admit_exactly_the_limit);

async fn a_per_organization_limit_override_applies_to_that_organization_only(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let other = app.new_org("Other").await;
    app.state
        .store
        .set_org_limit(&app.org.id, "postgresql", 2)
        .await
        .unwrap();

    app.create_pg(&app.org, "a", &sentinel()).await;
    app.create_pg(&app.org, "b", &sentinel()).await;
    let (third, problem) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &app.org.admin,
            Some(pg_body("c", "pw")),
        )
        .await;
    let (other_org, _) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &other.admin,
            Some(pg_body("c", "pw")),
        )
        .await;

    assert_eq!(third, StatusCode::CONFLICT);
    assert_eq!(problem["code"], json!("quota_exceeded"));
    assert!(problem["detail"].as_str().unwrap().contains("postgresql"));
    assert_eq!(other_org, StatusCode::CREATED);
}
both_backends!(a_per_organization_limit_override_applies_to_that_organization_only);

async fn an_organization_over_its_rate_gets_429_with_retry_after(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.rate_limit_per_org = 1;
    let app = TestApp::spawn_with(config).await;

    let mut last = None;
    for _ in 0..3 {
        last = Some(
            app.client
                .get(format!("{}/integrations/credentials", app.base))
                .bearer_auth(&app.org.admin)
                .send()
                .await
                .unwrap(),
        );
    }
    let res = last.unwrap();

    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], json!("rate_limited"));
}
both_backends!(an_organization_over_its_rate_gets_429_with_retry_after);

#[tokio::test]
async fn the_unauthenticated_callback_is_rate_limited_per_client_address() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;

    let mut statuses = Vec::new();
    for _ in 0..(credgate::http::ratelimit::UNAUTHENTICATED_PER_SEC * 2 + 5) {
        let res = app
            .client
            .get(format!("{}/integrations/google/callback?state=x&code=y", app.base))
            .send()
            .await
            .unwrap();
        statuses.push((res.status(), res.headers().get("retry-after").cloned()));
    }

    assert_eq!(
        statuses[0].0,
        StatusCode::OK,
        "an invalid state is a page, not an error status"
    );
    let limited: Vec<_> = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    // Another client address is not held back by the first one's burst.
    let other = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    let elsewhere = other
        .get(format!("{}/integrations/google/callback?state=x&code=y", app.base))
        .send()
        .await
        .unwrap()
        .status();
    let mut first_again = Vec::new();
    for _ in 0..credgate::http::ratelimit::UNAUTHENTICATED_PER_SEC * 2 {
        let status = app
            .client
            .get(format!("{}/integrations/google/callback?state=x&code=y", app.base))
            .send()
            .await
            .unwrap()
            .status();
        first_again.push(status);
    }

    assert!(!limited.is_empty(), "the burst is bounded");
    assert!(limited.iter().all(|(_, retry)| retry.is_some()));
    assert_eq!(elsewhere, StatusCode::OK, "the limit is per client address");
    assert!(
        first_again.contains(&StatusCode::TOO_MANY_REQUESTS),
        "the first address is still limited"
    );
}

async fn deleting_frees_a_place_under_the_limit_and_a_refused_create_takes_none(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.max_per_provider = 2;
    let app = TestApp::spawn_with(config).await;
    let create = |name: &str| {
        let app = &app;
        let body = pg_body(name, &sentinel());
        async move {
            app.call(Method::POST, "/integrations/credentials", &app.org.member, Some(body))
                .await
        }
    };

    let (_, first) = create("a").await;
    create("b").await;
    let (full, _) = create("c").await;
    let (again_full, _) = create("c").await;
    let id = first["id"].as_str().unwrap();
    let (deleted, _) = app
        .call(
            Method::DELETE,
            &format!("/integrations/credentials/{id}"),
            &app.org.member,
            None,
        )
        .await;
    let (after_delete, _) = create("d").await;
    let (full_again, _) = create("e").await;

    assert_eq!((full, again_full), (StatusCode::CONFLICT, StatusCode::CONFLICT));
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(
        after_delete,
        StatusCode::CREATED,
        "the deleted credential's place is free again"
    );
    assert_eq!(full_again, StatusCode::CONFLICT, "and only that one");
}
both_backends!(deleting_frees_a_place_under_the_limit_and_a_refused_create_takes_none);
