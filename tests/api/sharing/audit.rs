//! What denials leave in a credential's audit log (one row per key,
//! credential and minute, counted exactly), and that a stored detail that
//! does not parse is an error rather than a missing detail.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{create, denials, share, People};
use crate::both_backends;
use crate::helpers::{captured_logs, to_a_minute_start, TestApp, TestDb};

async fn a_level_denial_is_audited_on_the_credential_it_concerns_whether_404_or_403(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let people = People::new(&app).await;
    let hidden = create(&app, &people.alice, "hidden", "pw").await;
    let used = create(&app, &people.alice, "used", "pw").await;
    share(&app, &people.alice, &used, json!("use"), json!([])).await;

    let (no_access, _) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{hidden}"),
            &people.bob,
            None,
        )
        .await;
    let (use_only, _) = app
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{used}"),
            &people.bob,
            Some(json!({"name": "mine"})),
        )
        .await;
    let on_hidden = denials(&app, &people.alice, &hidden).await;
    let on_used = denials(&app, &people.alice, &used).await;

    assert_eq!(no_access, StatusCode::NOT_FOUND);
    assert_eq!(use_only, StatusCode::FORBIDDEN);
    assert_eq!(on_hidden.len(), 1, "{on_hidden:?}");
    assert_eq!(on_hidden[0]["actor"], "user:bob");
    assert_eq!(on_hidden[0]["outcome"], "denied");
    assert_eq!(
        on_hidden[0]["detail"],
        json!({"role": "member", "needed": "use", "count": 1})
    );
    assert_eq!(on_used.len(), 1, "{on_used:?}");
    assert_eq!(
        on_used[0]["detail"],
        json!({"role": "member", "needed": "manage", "count": 1})
    );
}
both_backends!(a_level_denial_is_audited_on_the_credential_it_concerns_whether_404_or_403);

async fn concurrent_denials_count_exactly_in_one_row_and_another_credential_gets_its_own(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let people = People::new(&app).await;
    let first = create(&app, &people.alice, "first", "pw").await;
    let second = create(&app, &people.alice, "second", "pw").await;
    let url = |id: &str| format!("{}/integrations/credentials/{id}", app.base);
    to_a_minute_start(&app.clock);

    let requests = (0..20).map(|_| app.client.get(url(&first)).bearer_auth(&people.bob).send());
    let statuses: Vec<StatusCode> = futures::future::join_all(requests)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    let (other, _) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{second}"),
            &people.bob,
            None,
        )
        .await;
    let on_first = denials(&app, &people.alice, &first).await;
    let on_second = denials(&app, &people.alice, &second).await;
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'access.denied'")
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    assert!(statuses.iter().all(|s| *s == StatusCode::NOT_FOUND), "{statuses:?}");
    assert_eq!(other, StatusCode::NOT_FOUND);
    assert_eq!(on_first.len(), 1, "{on_first:?}");
    assert_eq!(on_first[0]["detail"]["count"], 20, "every concurrent denial is counted");
    assert_eq!(on_second.len(), 1, "the same minute, another credential: its own row");
    assert_eq!(on_second[0]["detail"]["count"], 1);
    assert_eq!(rows, 2, "one row per key, credential and minute");
}
both_backends!(concurrent_denials_count_exactly_in_one_row_and_another_credential_gets_its_own);

async fn a_malformed_audit_detail_is_an_error_that_is_logged_not_a_missing_detail(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let id = app.create_pg(&app.org, "db", "pw").await;
    sqlx::query("UPDATE audit_events SET detail = $1 WHERE credential_id = $2")
        .bind("{\"name\": ")
        .bind(&id)
        .execute(&app.sql().await)
        .await
        .unwrap();

    let (status, problem) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{problem}");
    assert!(!problem.to_string().contains("\"name\": "), "{problem}");
    let logs = captured_logs();
    let logged = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|l| {
            l["level"] == "ERROR"
                && l["fields"]["message"] == "a stored audit event column is malformed"
                && l["fields"]["column"] == "detail"
        });
    assert!(logged, "the malformed column is logged as an error");
}
both_backends!(a_malformed_audit_detail_is_an_error_that_is_logged_not_a_missing_detail);
