//! What a person does in the pages, in a real headless Chromium; each
//! journey leaves screenshots under `target/ui-screenshots/`.

use std::time::{Duration, Instant};

use axum::http::Method;
use fantoccini::Locator;
use serde_json::{json, Value};

use super::browser::Browser;
use super::{create_bot, good_token, open_session, page_app, telegram, Opener, TOKEN_SECRET};
use crate::helpers::{captured_logs, Backend, TestDb};
use crate::oauth_server::{AuthServer, Flavor};

/// Asserts the secret typed or stored never reached a page, a log line.
fn assert_never_shown(pages: &[String]) {
    assert!(!pages.is_empty());
    for page in pages {
        assert!(!page.contains(TOKEN_SECRET), "a page showed the secret");
    }
    assert!(!captured_logs().contains(TOKEN_SECRET), "a log line carries the secret");
}

async fn rows(b: &Browser) -> usize {
    b.client
        .find_all(Locator::Css("table.credentials tbody tr"))
        .await
        .unwrap()
        .len()
}

async fn a_person_connects_a_telegram_bot_and_the_platform_receives_the_result(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let opener = Opener::start().await;
    let app = page_app(&db, &tg, &[format!("{}/", opener.origin)], |_| {}).await;
    let url = open_session(
        &app,
        &app.org.admin,
        json!({
            "user_id": "u-7", "purpose": "connect", "providers": ["telegram", "sftp"],
            "return_to": format!("{}/connected", opener.origin)}),
    )
    .await;
    opener.open(&url);
    let mut b = Browser::start(1280).await;

    // The platform opens credgate in a popup.
    b.goto(&format!("{}/", opener.origin)).await;
    let platform = b.client.window().await.unwrap();
    b.click("#open").await;
    let popup = b.switch_to_new_window(std::slice::from_ref(&platform)).await;
    b.wait_path("/connect").await;
    b.wait_for("#providers").await;
    let offered = b.client.find_all(Locator::Css("#providers li")).await.unwrap().len();
    b.type_into("#provider-search", "tele").await;
    let visible = b
        .js("return document.querySelectorAll('#providers li:not([hidden])').length")
        .await;
    b.screenshot("connect-1-grid").await;

    // A malformed token: the error sits beside its field.
    b.click("a[href='/connect/telegram']").await;
    b.wait_path("/connect/telegram").await;
    b.type_into("#f-bot_token", "not-a-token").await;
    b.click("#credential-form button[type=submit]").await;
    let field_error = b.wait_text("#f-bot_token-error", "Bot token").await;
    b.remember().await;
    b.screenshot("connect-2-field-error").await;

    // A good one: Test connection shows the bot, then Save.
    b.type_into("#f-name", "Alerts bot").await;
    b.type_into("#f-bot_token", &good_token()).await;
    b.click("#test-connection").await;
    let tested = b.wait_text("#test-result.passed", "✓").await;
    b.remember().await;
    b.screenshot("connect-3-tested").await;
    b.click("#credential-form button[type=submit]").await;

    // The end page tells the platform and closes.
    b.wait_closed(&popup).await;
    b.client.switch_to_window(platform).await.unwrap();
    let started = Instant::now();
    let received = loop {
        let got = b.js("return window.received").await;
        if got.as_array().is_some_and(|a| !a.is_empty()) || started.elapsed() > Duration::from_secs(10) {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    b.remember().await;
    b.screenshot("connect-4-platform-received").await;
    let pages = b.finish().await;
    let id = received[0]["data"]["credential_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (_, credential) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(offered, 2, "only the session's providers");
    assert_eq!(visible, json!(1), "the search box filters as you type");
    assert!(field_error.contains("wrong format"), "{field_error}");
    assert!(tested.contains("credgate_alerts_bot"), "{tested}");
    assert_eq!(received.as_array().unwrap().len(), 1, "{received}");
    assert_eq!(received[0]["origin"], json!(app.base), "posted by credgate");
    assert_eq!(received[0]["data"]["source"], "credgate");
    assert_eq!(received[0]["data"]["result"], "success");
    assert_eq!(credential["name"], "Alerts bot");
    assert_eq!(credential["owner"], "u-7");
    assert_eq!(credential["status"], "active");
    assert!(!credential.to_string().contains(TOKEN_SECRET));
    assert_never_shown(&pages);
}
crate::both_backends!(a_person_connects_a_telegram_bot_and_the_platform_receives_the_result);

#[test]
fn google_connects_in_a_popup_and_the_account_shows_in_manage() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let tg = telegram().await;
        let google = AuthServer::start(Flavor::Google).await;
        let app = page_app(&db, &tg, &[], |c| {
            c.provider_overrides.extend(google.overrides("google"))
        })
        .await;
        let connect = open_session(
            &app,
            &app.org.member,
            json!({"purpose": "connect", "providers": ["google"]}),
        )
        .await;
        let manage = open_session(&app, &app.org.member, json!({"purpose": "manage"})).await;
        let mut b = Browser::start(1280).await;

        b.goto(&connect).await;
        b.wait_path("/connect").await;
        b.click("a[href='/connect/google']").await;
        b.wait_path("/connect/google").await;
        b.screenshot("google-1-connect").await;
        // The provider opens in a popup whose result page tells this window
        // (the stand-in answers at once, so the popup may come and go
        // between two looks: what shows it was a popup is that this window
        // stayed on the page and moved on by the message).
        b.click("#connect-oauth").await;
        b.wait_path("/connect/done").await;
        let windows_after_connect = b.client.windows().await.unwrap().len();
        let done = b.wait_text(".notice", "Connected").await;
        b.screenshot("google-2-done").await;

        b.goto(&manage).await;
        b.wait_path("/manage").await;
        b.wait_for("table.credentials").await;
        let table = b.wait_text("table.credentials", "Sign in (OAuth)").await;
        b.screenshot("google-3-manage").await;
        b.click("table.credentials tbody tr td:nth-child(2) a").await;
        let facts = b.wait_text("#configuration", "user1@example.com").await;
        b.screenshot("google-4-detail").await;
        b.click("form.inline button[type=submit]").await;
        let refreshed = b.wait_text(".notice", "refreshed").await;
        b.click("#reauthorize").await;
        let reauthorized = b.wait_text(".notice", "Re-authorized").await;
        let back_on = b.client.current_url().await.unwrap();
        let windows_after_reauthorize = b.client.windows().await.unwrap().len();
        b.screenshot("google-5-reauthorized").await;
        b.finish().await;
        let (_, list) = app
            .call(Method::GET, "/integrations/credentials", &app.org.member, None)
            .await;

        assert!(done.contains("✓ Connected"), "{done}");
        assert_eq!(list["total"], 1);
        assert_eq!(list["items"][0]["provider"], "google");
        assert_eq!(list["items"][0]["owner"], "u-1");
        assert!(table.contains(list["items"][0]["name"].as_str().unwrap()), "{table}");
        assert!(table.contains("Active"));
        assert!(facts.contains("openid"), "scopes shown: {facts}");
        assert!(refreshed.contains("The access token was refreshed"));
        assert!(
            reauthorized.contains("the account is connected again"),
            "{reauthorized}"
        );
        assert_eq!(list["items"][0]["status"], "active");
        assert!(
            back_on.path().starts_with("/manage/credentials/")
                && back_on.query().is_some_and(|q| q.starts_with("result=success")),
            "{back_on}"
        );
        assert_eq!(
            (windows_after_connect, windows_after_reauthorize),
            (1, 1),
            "each popup closed itself"
        );
    });
}

async fn in_manage_a_person_filters_tests_deletes_three_and_reads_the_audit_log(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[], |_| {}).await;
    for name in ["Bot A", "Bot B", "Bot C", "Bot D"] {
        create_bot(&app, &app.org.member, name).await;
    }
    app.create_pg(&app.org, "Warehouse", "pw-1").await;
    let reporting = app.create_pg(&app.org, "Reporting", "pw-2").await;
    let url = open_session(&app, &app.org.member, json!({"purpose": "manage"})).await;
    let mut b = Browser::start(1280).await;

    b.goto(&url).await;
    b.wait_path("/manage").await;
    b.wait_for("table.credentials").await;
    let all = rows(&b).await;
    b.wait_for("#provider option[value='telegram']")
        .await
        .click()
        .await
        .unwrap();
    b.click(".filters button[type=submit]").await;
    b.wait_text(".count", "4 credentials").await;
    let filtered = rows(&b).await;
    b.click("table.credentials tbody tr:first-child [data-test-url]").await;
    let tested = b
        .wait_text("table.credentials tbody tr:first-child .probe.passed", "✓")
        .await;
    b.remember().await;
    b.screenshot("manage-1-filtered-tested").await;

    for n in 1..=3 {
        b.click(&format!("table.credentials tbody tr:nth-child({n}) input[name=ids]"))
            .await;
    }
    let button = b.wait_text("#delete-selected", "(3)").await;
    b.click("#delete-selected").await;
    let confirm_title = b.wait_text("h1", "Delete 3 credentials?").await;
    b.screenshot("manage-2-confirm-three").await;
    b.click("#confirm-delete").await;
    let deleted = b.wait_text(".notice", "3 credentials deleted").await;
    let left = rows(&b).await;
    b.click(&format!("a[href='/manage/credentials/{reporting}']")).await;
    let audit = b.wait_text("#audit", "credential.create").await;
    b.remember().await;
    b.screenshot("manage-3-detail-audit").await;
    let id = reporting;

    // Share it with the team for use, then edit it (every field again).
    b.wait_for("#team option[value='use']").await.click().await.unwrap();
    b.click("#sharing button[type=submit]").await;
    let shared = b.wait_text(".notice", "Sharing saved").await;
    b.click("a[href$='/edit']").await;
    b.wait_for("#credential-form").await;
    let prefilled = b
        .js("return document.getElementById('f-host').value + '|' + document.getElementById('f-password').value")
        .await;
    b.type_into("#f-name", "Reporting v2").await;
    b.type_into("#f-password", "SENTINELpageTOKEN_0123456789abcdefXYZ-pw")
        .await;
    b.click("#credential-form button[type=submit]").await;
    let saved = b.wait_text(".notice", "Saved").await;
    b.remember().await;
    b.screenshot("manage-4-edited").await;
    let pages = b.finish().await;
    let (_, list) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;
    let (_, edited) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(all, 6);
    assert_eq!(filtered, 4, "only Telegram");
    assert!(tested.contains("credgate_alerts_bot"), "{tested}");
    assert!(button.contains("Delete selected (3)"));
    assert!(confirm_title.contains("Delete 3 credentials?"));
    assert!(deleted.contains("3 credentials deleted"));
    assert_eq!(left, 3);
    assert_eq!(list["total"], 3);
    assert!(audit.contains("user:u-1"), "{audit}");
    assert!(shared.contains("Sharing saved"));
    assert_eq!(edited["sharing"]["team"], "use");
    assert_eq!(
        prefilled,
        json!("db.example.com|"),
        "non-secret values filled, secrets never"
    );
    assert!(saved.contains("Saved"));
    assert_eq!(edited["name"], "Reporting v2");
    assert_never_shown(&pages);
}
crate::both_backends!(in_manage_a_person_filters_tests_deletes_three_and_reads_the_audit_log);

#[test]
fn a_member_sees_only_what_sharing_allows() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let tg = telegram().await;
        let app = page_app(&db, &tg, &[], |_| {}).await;
        let other = credgate::api_tokens::create(
            &app.state.store,
            &app.org.id,
            credgate::model::Role::Member,
            credgate::api_tokens::NewKey {
                user_id: Some(&credgate::ids::UserId::parse("u-2").unwrap()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        create_bot(&app, &app.org.member, "Mine").await;
        let private = create_bot(&app, &other, "Their private bot").await;
        let shared = create_bot(&app, &other, "Their shared bot").await;
        let (status, _) = app
            .call(
                Method::PUT,
                &format!("/integrations/credentials/{shared}/sharing"),
                &other,
                Some(json!({"team": "use", "users": []})),
            )
            .await;
        assert_eq!(status, reqwest::StatusCode::OK);
        let url = open_session(&app, &app.org.admin, json!({"user_id": "u-1", "purpose": "manage"})).await;
        let mut b = Browser::start(1280).await;

        b.goto(&url).await;
        b.wait_path("/manage").await;
        let table = b.wait_text("table.credentials", "Mine").await;
        let checkboxes = b.client.find_all(Locator::Css("input[name=ids]")).await.unwrap().len();
        b.screenshot("sharing-1-list").await;
        b.goto(&format!("{}/manage/credentials/{shared}", app.base)).await;
        let detail = b.wait_text("main", "Their shared bot").await;
        let actions = b
            .client
            .find_all(Locator::Css(".actions a.button"))
            .await
            .unwrap()
            .len();
        b.screenshot("sharing-2-use-only").await;
        b.goto(&format!("{}/manage/credentials/{private}", app.base)).await;
        let hidden = b.wait_text("main", "does not exist").await;
        b.finish().await;

        assert!(
            table.contains("Their shared bot") && !table.contains("Their private bot"),
            "{table}"
        );
        assert!(table.contains("Team (use)"));
        assert_eq!(checkboxes, 1, "only their own may be selected for deletion");
        assert!(detail.contains("details are not shown to you"), "{detail}");
        assert_eq!(actions, 0, "no Edit or Delete on a credential shared for use");
        assert!(hidden.contains("do not have access"));
    });
}

#[test]
fn a_session_link_opened_twice_says_it_expired_or_was_used() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let tg = telegram().await;
        let app = page_app(&db, &tg, &[], |_| {}).await;
        let url = open_session(&app, &app.org.member, json!({"purpose": "connect"})).await;
        let mut b = Browser::start(360).await;

        b.goto(&url).await;
        b.wait_path("/connect").await;
        let first = b.wait_text("h1", "Connect an account").await;
        let width = b.js("return document.documentElement.scrollWidth").await;
        let viewport = b.js("return window.innerWidth").await;
        b.screenshot("session-1-narrow-grid").await;
        b.goto(&url).await;
        let second = b.wait_text("h1", "expired").await;
        let words = b.wait_text("main", "open the page again").await;
        b.screenshot("session-2-used-twice").await;
        b.finish().await;

        assert!(first.contains("Connect an account"));
        assert_eq!(viewport, json!(360));
        assert!(
            width.as_i64().unwrap() <= 360,
            "readable at 360 px without sideways scrolling: {width}"
        );
        assert!(second.contains("This link has expired or was already used"));
        assert!(words.contains("application that sent you here"));
    });
}

/// Page weight and time to interactive of `/manage` with 50 rows, printed
/// for the notes (`cargo test manage_with_fifty -- --nocapture`); the test
/// asserts what the page holds, not how fast it was.
#[test]
fn manage_with_fifty_rows_reports_its_weight_and_time_to_interactive() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let tg = telegram().await;
        let app = page_app(&db, &tg, &[], |_| {}).await;
        for n in 0..50 {
            create_bot(&app, &app.org.member, &format!("Bot {n:02}")).await;
        }
        let url = open_session(&app, &app.org.member, json!({"purpose": "manage"})).await;
        let mut b = Browser::start(1280).await;

        b.goto(&url).await;
        b.wait_path("/manage").await;
        b.wait_for("table.credentials").await;
        b.goto(&format!("{}/manage", app.base)).await;
        b.wait_for("#delete-selected").await;
        let timing: Value = b
            .js("const t = performance.getEntriesByType('navigation')[0]; \
            return {interactive: t.domInteractive, loaded: t.loadEventEnd, html: t.transferSize}")
            .await;
        let count = rows(&b).await;
        let unlabelled = b.js("return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea, button')) \
            .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()).length").await;
        let focusable = b
            .js("document.getElementById('q').focus(); return document.activeElement.id")
            .await;
        b.screenshot("manage-fifty-rows").await;
        let html = b.remember().await.len();
        b.finish().await;
        let js = app
            .client
            .get(format!("{}/pages/assets/app.js", app.base))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len();
        let css = app
            .client
            .get(format!("{}/pages/assets/app.css", app.base))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap()
            .len();

        eprintln!(
            "manage with 50 rows: html {html} B, js {js} B, css {css} B, total {} B; dom interactive {} ms, load end {} ms",
            html + js + css,
            timing["interactive"],
            timing["loaded"]
        );
        assert_eq!(count, 50);
        assert_eq!(unlabelled, json!(0), "every control has a label");
        assert_eq!(focusable, json!("q"));
        assert!(timing["interactive"].as_f64().unwrap() > 0.0);
    });
}

async fn in_manage_a_person_sees_what_expires_filters_what_needs_attention_and_reconnects_it(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[], |_| {}).await;
    let day = 86_400;
    let ends = chrono::DateTime::from_timestamp(app.clock.now() + 3 * day - 3600, 0)
        .unwrap()
        .to_rfc3339();
    let key = |name: &str, expires_at: Option<&str>| {
        let mut body = json!({"name": name, "provider": "http", "auth_type": "api_key",
            "fields": {"base_url": "https://api.example.com", "scheme": "bearer", "token": TOKEN_SECRET}});
        if let Some(t) = expires_at {
            body["expires_at"] = json!(t);
        }
        body
    };
    let (_, ending) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &app.org.member,
            Some(key("Billing API", Some(&ends))),
        )
        .await;
    app.call(
        Method::POST,
        "/integrations/credentials",
        &app.org.member,
        Some(key("Search API", None)),
    )
    .await;
    let id = ending["id"].as_str().unwrap().to_owned();
    let url = open_session(&app, &app.org.member, json!({"purpose": "manage"})).await;
    let mut b = Browser::start(1280).await;

    b.goto(&url).await;
    b.wait_path("/manage").await;
    b.wait_for("table.credentials").await;
    let all = rows(&b).await;
    let expiring = b.wait_text(&format!("tr[data-id='{id}']"), "Expires in 3 days").await;
    b.wait_for("#health option[value='attention']")
        .await
        .click()
        .await
        .unwrap();
    b.click(".filters button[type=submit]").await;
    b.wait_text(".count", "1 credential").await;
    let attention = rows(&b).await;
    b.remember().await;
    b.screenshot("manage-5-needs-attention").await;
    b.click(&format!("tr[data-id='{id}'] button.reconnect")).await;
    // The provider's form, in place, for this credential.
    b.wait_path("/connect/http").await;
    let title = b.wait_text("h1", "Reconnect").await;
    let shown_end = b.js("return document.querySelector('#expires_on').value").await;
    b.remember().await;
    b.screenshot("manage-6-reconnect").await;
    // The new key, with its new end date.
    let new_end = chrono::DateTime::from_timestamp(app.clock.now() + 400 * day, 0).unwrap();
    b.type_into("#f-token", TOKEN_SECRET).await;
    b.js(&format!(
        "document.querySelector('#expires_on').value = '{}'; return true",
        new_end.format("%Y-%m-%d")
    ))
    .await;
    b.click("#credential-form button[type=submit]").await;
    b.wait_path("/connect/done").await;
    let pages = b.finish().await;
    let (_, after) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.member,
            None,
        )
        .await;

    assert_eq!(all, 2);
    assert!(expiring.contains("Reconnect"), "{expiring}");
    assert_eq!(attention, 1, "only the credential that expires");
    assert!(title.contains("Reconnect"), "{title}");
    assert_eq!(shown_end, json!(ends[..10]), "the reconnect form shows the end it has");
    assert_eq!(
        after["secret_expires_at"],
        json!(format!("{}T00:00:00Z", new_end.format("%Y-%m-%d"))),
        "{after}"
    );
    assert_eq!(after["health"], "ok", "reconnected with a new end, it is healthy again");
    assert_never_shown(&pages);
}
crate::both_backends!(in_manage_a_person_sees_what_expires_filters_what_needs_attention_and_reconnects_it);
