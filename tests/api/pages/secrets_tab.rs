//! The Secrets tab of `/manage`, in a real headless Chromium: add a secret
//! by name, replace its value, delete it after a confirmation naming it —
//! and the typed values never reach a page or a log line.

use axum::http::Method;
use fantoccini::Locator;
use reqwest::StatusCode;
use serde_json::json;

use super::browser::Browser;
use super::sessions::cookie_and_csrf;
use super::{open_session, page_app, telegram};
use crate::helpers::{captured_logs, sentinel, TestDb};

async fn rows(b: &Browser) -> usize {
    b.client
        .find_all(Locator::Css("table.secrets tbody tr"))
        .await
        .unwrap()
        .len()
}

async fn in_the_secrets_tab_a_person_adds_replaces_and_deletes_a_secret(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[], |_| {}).await;
    let (first, second) = (sentinel(), sentinel());
    let url = open_session(&app, &app.org.member, json!({"purpose": "manage"})).await;
    let mut b = Browser::start(1280).await;

    // From the credentials to the Secrets tab.
    b.goto(&url).await;
    b.wait_path("/manage").await;
    b.click("nav.tabs a[href='/manage/secrets']").await;
    b.wait_path("/manage/secrets").await;
    let empty = b.wait_text("main", "No secrets yet").await;
    b.remember().await;
    b.screenshot("secrets-1-empty").await;

    // Add one.
    b.type_into("#s-name", "SMTP_PASSWORD").await;
    b.type_into("#s-value", &first).await;
    b.click("#save-secret").await;
    let added = b.wait_text(".notice", "added").await;
    let listed = b.wait_text("table.secrets", "SMTP_PASSWORD").await;
    let value_after_add = b.js("return document.getElementById('s-value').value").await;
    b.remember().await;
    b.screenshot("secrets-2-added").await;

    // Replace its value from its row.
    b.click("a[aria-label='Replace SMTP_PASSWORD']").await;
    b.wait_for("#s-name[value='SMTP_PASSWORD']").await;
    b.remember().await;
    b.type_into("#s-value", &second).await;
    b.click("#save-secret").await;
    let replaced = b.wait_text(".notice", "replaced").await;
    let rows_after_replace = rows(&b).await;
    b.remember().await;
    b.screenshot("secrets-3-replaced").await;
    let (_, resolved) = app
        .call(
            Method::POST,
            "/integrations/secrets/resolve",
            &app.org.engine,
            Some(json!({"names": ["SMTP_PASSWORD"]})),
        )
        .await;

    // Delete it, after a confirmation that names it.
    b.click("a[aria-label='Delete SMTP_PASSWORD']").await;
    b.wait_path("/manage/secrets/SMTP_PASSWORD/delete").await;
    let confirmation = b.wait_text("main", "SMTP_PASSWORD").await;
    b.remember().await;
    b.screenshot("secrets-4-confirm").await;
    b.click("#confirm-delete").await;
    let deleted = b.wait_text(".notice", "deleted").await;
    let rows_after_delete = rows(&b).await;
    b.remember().await;
    b.screenshot("secrets-5-deleted").await;
    let pages = b.finish().await;
    let (_, listed_after) = app
        .call(Method::GET, "/integrations/secrets", &app.org.admin, None)
        .await;
    let actors: Vec<String> =
        sqlx::query_scalar("SELECT actor FROM audit_events WHERE action LIKE 'secret.%' ORDER BY id")
            .fetch_all(&app.sql().await)
            .await
            .unwrap();

    assert!(empty.contains("No secrets yet"));
    assert!(added.contains("Secret SMTP_PASSWORD added"), "{added}");
    assert!(listed.contains("SMTP_PASSWORD"));
    assert_eq!(value_after_add, json!(""), "the value input is never filled");
    assert!(replaced.contains("Secret SMTP_PASSWORD replaced"), "{replaced}");
    assert_eq!(rows_after_replace, 1, "replaced, not added");
    assert_eq!(
        resolved["secrets"]["SMTP_PASSWORD"],
        json!(second),
        "the new value is stored"
    );
    assert!(
        confirmation.contains("Delete the secret SMTP_PASSWORD?"),
        "{confirmation}"
    );
    assert!(deleted.contains("Secret SMTP_PASSWORD deleted"), "{deleted}");
    assert_eq!(rows_after_delete, 0);
    assert_eq!(listed_after, json!({"items": []}));
    assert_eq!(
        actors,
        ["user:u-1", "user:u-1", "user:u-1", "user:u-1"],
        "put, put, resolve (engine key of u-1), delete"
    );
    assert!(pages.len() >= 6);
    for page in &pages {
        assert!(
            !page.contains(&first) && !page.contains(&second),
            "a page showed a typed value"
        );
    }
    let logs = captured_logs();
    assert!(
        !logs.contains(&first) && !logs.contains(&second),
        "a log line carries a typed value"
    );
}
crate::both_backends!(in_the_secrets_tab_a_person_adds_replaces_and_deletes_a_secret);

async fn secrets_tab_writes_need_the_csrf_token_and_never_echo_a_value(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[], |_| {}).await;
    let value = sentinel();
    let url = open_session(&app, &app.org.member, json!({"purpose": "manage"})).await;
    let (cookie, csrf) = cookie_and_csrf(&app, &url, "/manage/secrets").await;
    let post = |path: &str, form: Vec<(&str, String)>| {
        app.client
            .post(format!("{}{path}", app.base))
            .header("cookie", &cookie)
            .form(&form)
            .send()
    };

    let forged = post(
        "/manage/secrets",
        vec![("name", "FORGED".into()), ("value", value.clone())],
    )
    .await
    .unwrap();
    let bad = post(
        "/manage/secrets",
        vec![
            ("csrf", csrf.clone()),
            ("name", "not valid".into()),
            ("value", value.clone()),
        ],
    )
    .await
    .unwrap();
    let (bad_status, bad_page) = (bad.status(), bad.text().await.unwrap());
    let saved = post(
        "/manage/secrets",
        vec![
            ("csrf", csrf.clone()),
            ("name", "GOOD".into()),
            ("value", value.clone()),
        ],
    )
    .await
    .unwrap();
    let forged_delete = post("/manage/secrets/GOOD/delete", vec![("csrf", "wrong".into())])
        .await
        .unwrap();
    let missing = post("/manage/secrets/NOT_THERE/delete", vec![("csrf", csrf.clone())])
        .await
        .unwrap();
    let (_, listed) = app
        .call(Method::GET, "/integrations/secrets", &app.org.admin, None)
        .await;

    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(bad_status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        bad_page.contains(r#"id="s-name-error""#),
        "the error sits beside its field"
    );
    assert!(
        !bad_page.contains(&value) && !bad_page.contains("not valid"),
        "nothing typed is echoed"
    );
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert_eq!(saved.headers()["location"], "/manage/secrets?created=GOOD");
    assert_eq!(forged_delete.status(), StatusCode::FORBIDDEN);
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["GOOD"], "only the checked write happened");
    assert_eq!(listed["items"][0]["created_by"], "user:u-1", "as the session's user");
    assert!(!captured_logs().contains(&value));
}
crate::both_backends!(secrets_tab_writes_need_the_csrf_token_and_never_echo_a_value);
