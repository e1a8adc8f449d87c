//! Hosted-page sessions over plain HTTP: who may open one, the one-time
//! link, the cookie, CSRF, expiry — on both databases.

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::{good_token, page_app, telegram, TOKEN_SECRET};
use crate::helpers::{captured_logs, TestApp, TestDb};

const RETURN: &str = "https://app.example.com/settings/";

/// Opens the link; returns the cookie pair (`name=value`) it set, and the response.
async fn enter(app: &TestApp, url: &str) -> (Option<String>, reqwest::Response) {
    let res = app.client.get(url).send().await.unwrap();
    let cookie = res
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    (cookie, res)
}

async fn session_url(app: &TestApp, body: Value) -> String {
    super::open_session(app, &app.org.admin, body).await
}

async fn sessions_are_opened_by_admins_for_anyone_and_by_members_for_themselves(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[RETURN.into()], |_| {}).await;
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
    let private = crate::pages::create_bot(&app, &other, "u-2's bot").await;
    let post = |key: String, body: Value| {
        let app = &app;
        async move { app.call(Method::POST, "/integrations/sessions", &key, Some(body)).await }
    };

    let (admin, created) = post(app.org.admin.clone(), json!({"user_id": "u-9", "purpose": "manage"})).await;
    let (own, _) = post(
        app.org.member.clone(),
        json!({"purpose": "connect", "providers": ["telegram"]}),
    )
    .await;
    let (for_other, _) = post(app.org.member.clone(), json!({"user_id": "u-9", "purpose": "connect"})).await;
    let (engine, _) = post(app.org.engine.clone(), json!({"purpose": "connect"})).await;
    let (long, too_long) = post(app.org.admin.clone(), json!({"purpose": "connect", "expires_in": 7200})).await;
    let (evil, evil_return) = post(
        app.org.admin.clone(),
        json!({"purpose": "connect", "return_to": "https://app.example.com.evil.net/settings/"}),
    )
    .await;
    let (unknown, unknown_provider) = post(
        app.org.admin.clone(),
        json!({"purpose": "connect", "providers": ["nope"]}),
    )
    .await;
    let (purpose, bad_purpose) = post(app.org.admin.clone(), json!({"purpose": "delete"})).await;
    let (hidden, _) = post(
        app.org.admin.clone(),
        json!({"purpose": "connect", "credential_id": private}),
    )
    .await;
    let (shared_for_owner, _) = post(
        app.org.admin.clone(),
        json!({"user_id": "u-2", "purpose": "manage", "credential_id": private}),
    )
    .await;

    assert_eq!(admin, StatusCode::CREATED, "{created}");
    let url = created["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{}/manage?session=cgs_", app.base)), "{url}");
    assert!(created["expires_at"].is_string());
    assert_eq!(own, StatusCode::CREATED);
    assert_eq!(
        for_other,
        StatusCode::FORBIDDEN,
        "a member opens sessions only for itself"
    );
    assert_eq!(engine, StatusCode::FORBIDDEN);
    assert_eq!(long, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(too_long["errors"][0]["field"], "expires_in");
    assert_eq!(evil, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(evil_return["errors"][0]["field"], "return_to");
    assert_eq!(unknown, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown_provider["errors"][0]["field"], "providers");
    assert_eq!(purpose, StatusCode::UNPROCESSABLE_ENTITY, "{bad_purpose}");
    assert_eq!(
        hidden,
        StatusCode::NOT_FOUND,
        "u-1 may not re-enter u-2's personal credential"
    );
    assert_eq!(shared_for_owner, StatusCode::CREATED);
}
crate::both_backends!(sessions_are_opened_by_admins_for_anyone_and_by_members_for_themselves);

async fn a_link_opens_once_into_a_strict_http_only_cookie_and_its_token_is_never_logged(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[RETURN.into()], |_| {}).await;
    let url = session_url(&app, json!({"user_id": "u-3", "purpose": "connect"})).await;
    let token = url.split("session=").nth(1).unwrap().to_owned();

    let (cookie, first) = enter(&app, &url).await;
    let set_cookie = first.headers()["set-cookie"].to_str().unwrap().to_owned();
    let csp = first.headers()["content-security-policy"].to_str().unwrap().to_owned();
    let referrer = first.headers()["referrer-policy"].to_str().unwrap().to_owned();
    let first_body = first.text().await.unwrap();
    let (again_cookie, again) = enter(&app, &url).await;
    let again_status = again.status();
    let again_body = again.text().await.unwrap();
    let cookie = cookie.unwrap();
    let grid = app
        .client
        .get(format!("{}/connect", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let grid_status = grid.status();
    let grid_body = grid.text().await.unwrap();
    let manage = app
        .client
        .get(format!("{}/manage", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();

    assert!(
        set_cookie.contains("HttpOnly") && set_cookie.contains("SameSite=Strict"),
        "{set_cookie}"
    );
    assert!(set_cookie.contains("Path=/connect"), "{set_cookie}");
    assert!(!set_cookie.contains("Secure"), "plain http here");
    assert!(!set_cookie.contains(&token));
    assert_eq!(referrer, "no-referrer");
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors https://app.example.com"), "{csp}");
    assert!(!first_body.contains(&token), "the page does not repeat the token");
    assert!(first_body.contains(r#"data-next="/connect""#));
    assert_eq!(again_cookie, None);
    assert_eq!(again_status, StatusCode::FORBIDDEN);
    assert!(again_body.contains("expired or was already used"), "{again_body}");
    assert_eq!(grid_status, StatusCode::OK);
    assert!(grid_body.contains("Telegram Bot") && grid_body.contains("u-3"));
    assert_eq!(
        manage.status(),
        StatusCode::FORBIDDEN,
        "a connect cookie does not open /manage"
    );
    let logs = captured_logs();
    assert!(logs.contains("page session created"), "the test sees the logs");
    assert!(!logs.contains(&token), "the link's token never reaches a log line");
    assert!(!logs.contains(cookie.split('=').nth(1).unwrap()), "nor the cookie");
}
crate::both_backends!(a_link_opens_once_into_a_strict_http_only_cookie_and_its_token_is_never_logged);

/// A session's cookie and CSRF token, from its link and first page.
pub(crate) async fn cookie_and_csrf(app: &TestApp, url: &str, page: &str) -> (String, String) {
    let (cookie, _) = enter(app, url).await;
    let cookie = cookie.unwrap();
    let body = app
        .client
        .get(format!("{}{page}", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = body
        .split(r#"name="csrf-token" content=""#)
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_owned();
    (cookie, csrf)
}

async fn page_writes_need_the_sessions_csrf_token_and_act_as_its_user(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[RETURN.into()], |_| {}).await;
    let url = session_url(
        &app,
        json!({"user_id": "u-4", "purpose": "connect", "providers": ["telegram"]}),
    )
    .await;
    let (cookie, csrf) = cookie_and_csrf(&app, &url, "/connect").await;
    let save = |csrf: &str, origin: Option<&str>| {
        let mut req = app
            .client
            .post(format!("{}/connect/telegram", app.base))
            .header("cookie", &cookie)
            .form(&[
                ("csrf", csrf),
                ("auth_type", "api_key"),
                ("name", "Ops bot"),
                ("f.bot_token", &good_token()),
            ]);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };

    let missing = save("", None).await.unwrap();
    let wrong = save("not-the-token", None).await.unwrap();
    let foreign = save(&csrf, Some("https://evil.example")).await.unwrap();
    let (_, none_yet) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;
    let saved = save(&csrf, Some(&app.base)).await.unwrap();
    let location = saved.headers()["location"].to_str().unwrap().to_owned();
    let id = location.split("credential_id=").nth(1).unwrap().to_owned();
    let (_, credential) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    let (_, audit) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;
    let invalid = app
        .client
        .post(format!("{}/connect/telegram", app.base))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("auth_type", "api_key"),
            ("name", ""),
            ("f.bot_token", "nope"),
        ])
        .send()
        .await
        .unwrap();
    let invalid_status = invalid.status();
    let invalid_page = invalid.text().await.unwrap();

    for refused in [&missing, &wrong, &foreign] {
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(none_yet["total"], 0, "nothing was written by a refused request");
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert!(location.starts_with("/connect/done?result=success&credential_id="));
    assert_eq!(credential["owner"], "u-4", "the page acts as the session's user");
    assert_eq!(credential["created_by"], "user:u-4");
    assert_eq!(audit[0]["actor"], "user:u-4", "and is audited as them");
    assert!(!credential.to_string().contains(TOKEN_SECRET));
    assert_eq!(invalid_status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        invalid_page.contains(r#"id="f-bot_token-error""#),
        "the error sits beside its field"
    );
    assert!(invalid_page.contains(r#"id="f-name-error""#));
    assert!(!invalid_page.contains("nope"), "a typed secret is never echoed back");
}
crate::both_backends!(page_writes_need_the_sessions_csrf_token_and_act_as_its_user);

async fn an_expired_or_ended_session_says_so_in_words(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[RETURN.into()], |_| {}).await;
    let short = session_url(&app, json!({"user_id": "u-5", "purpose": "manage", "expires_in": 60})).await;
    let (cookie, _) = cookie_and_csrf(&app, &short, "/manage").await;
    let removed = session_url(&app, json!({"user_id": "u-6", "purpose": "manage"})).await;
    let (removed_cookie, _) = cookie_and_csrf(&app, &removed, "/manage").await;
    let unopened = session_url(&app, json!({"user_id": "u-5", "purpose": "manage", "expires_in": 60})).await;

    app.clock.advance(61);
    let after_expiry = app
        .client
        .get(format!("{}/manage", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let (no_cookie, late_link) = enter(&app, &unopened).await;
    credgate::credentials::remove_user(
        &app.state.store,
        &app.org.id,
        &credgate::ids::UserId::parse("u-6").unwrap(),
        None,
        "test",
    )
    .await
    .unwrap();
    let after_removal = app
        .client
        .get(format!("{}/manage", app.base))
        .header("cookie", &removed_cookie)
        .send()
        .await
        .unwrap();

    assert_eq!(after_expiry.status(), StatusCode::FORBIDDEN);
    assert!(after_expiry
        .text()
        .await
        .unwrap()
        .contains("open the page again from there"));
    assert_eq!(no_cookie, None);
    assert!(late_link.text().await.unwrap().contains("expired or was already used"));
    assert_eq!(
        after_removal.status(),
        StatusCode::FORBIDDEN,
        "a removed user's sessions end"
    );
}
crate::both_backends!(an_expired_or_ended_session_says_so_in_words);

async fn page_errors_are_sentences_a_person_can_act_on(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[RETURN.into()], |c| c.max_per_provider = 1).await;
    let mut no_egress = app.config.clone();
    no_egress.egress_allow = String::new();
    let closed = crate::helpers::TestApp::spawn_with(no_egress).await;
    let url = session_url(&app, json!({"user_id": "u-8", "purpose": "connect"})).await;
    let (cookie, csrf) = cookie_and_csrf(&app, &url, "/connect").await;
    let closed_url = crate::pages::open_session(
        &closed,
        &closed.org.admin,
        json!({"user_id": "u-8", "purpose": "connect"}),
    )
    .await;
    let (closed_cookie, closed_csrf) = cookie_and_csrf(&closed, &closed_url, "/connect").await;
    let test = |app: &TestApp, cookie: &str, csrf: &str, token: &str| {
        app.client
            .post(format!("{}/connect/telegram/test", app.base))
            .header("cookie", cookie)
            .header("x-csrf-token", csrf)
            .form(&[("auth_type", "api_key"), ("name", "x"), ("f.bot_token", token)])
            .send()
    };
    let save = |name: &str| {
        app.client
            .post(format!("{}/connect/telegram", app.base))
            .header("cookie", &cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("auth_type", "api_key"),
                ("name", name),
                ("f.bot_token", &good_token()),
            ])
            .send()
    };

    let refused: Value = test(&app, &cookie, &csrf, "123456:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shape: Value = test(&app, &cookie, &csrf, "nope").await.unwrap().json().await.unwrap();
    let denied: Value = test(&closed, &closed_cookie, &closed_csrf, &good_token())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = save("One").await.unwrap();
    let over = save("Two").await.unwrap();
    let over_status = over.status();
    let over_page = over.text().await.unwrap();
    let unconfigured = app
        .client
        .get(format!("{}/connect/google/oauth?csrf={csrf}", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let unconfigured_status = unconfigured.status();
    let unconfigured_page = unconfigured.text().await.unwrap();
    let (api_status, api_problem) = app
        .call(Method::GET, "/integrations/google/authorize", &app.org.member, None)
        .await;

    assert_eq!(refused["ok"], false);
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .starts_with("The server refused these credentials"),
        "{refused}"
    );
    assert_eq!(shape["errors"][0]["field"], "fields.bot_token", "{shape}");
    assert!(
        denied["message"]
            .as_str()
            .unwrap()
            .contains("not allowed to reach that address"),
        "{denied}"
    );
    assert_eq!(first.status(), StatusCode::SEE_OTHER);
    assert_eq!(over_status, StatusCode::CONFLICT);
    assert!(
        over_page.contains("credentials, and its limit is") && over_page.contains("Delete one you no longer need"),
        "{over_page}"
    );
    assert_eq!(unconfigured_status, StatusCode::CONFLICT);
    assert!(
        unconfigured_page.contains("is not set up on this credgate yet"),
        "{unconfigured_page}"
    );
    assert_eq!(api_status, StatusCode::CONFLICT);
    assert_eq!(api_problem["code"], "provider_not_configured");
    assert!(
        api_problem["detail"]
            .as_str()
            .unwrap()
            .contains("CREDGATE_PROVIDER_GOOGLE_CLIENT_ID"),
        "the detail says what to do: {api_problem}"
    );
    for page in [&over_page, &unconfigured_page] {
        assert!(!page.contains(TOKEN_SECRET));
    }
}
crate::both_backends!(page_errors_are_sentences_a_person_can_act_on);

async fn a_connect_session_for_a_credential_re_enters_it_in_place(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[RETURN.into()], |_| {}).await;
    let id = crate::pages::create_bot(&app, &app.org.member, "Old name").await;
    let url = session_url(
        &app,
        json!({"user_id": "u-1", "purpose": "connect", "credential_id": id}),
    )
    .await;
    let (cookie, csrf) = cookie_and_csrf(&app, &url, "/connect/telegram").await;
    let grid = app
        .client
        .get(format!("{}/connect", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let form = app
        .client
        .get(format!("{}/connect/telegram", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let saved = app
        .client
        .post(format!("{}/connect/telegram", app.base))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("auth_type", "api_key"),
            ("name", "New name"),
            ("f.bot_token", &good_token()),
        ])
        .send()
        .await
        .unwrap();
    let (_, list) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;

    assert_eq!(
        grid.headers()["location"],
        "/connect/telegram",
        "straight to its provider"
    );
    assert!(form.contains("Reconnect Telegram Bot") && form.contains(r#"value="Old name""#));
    assert!(form.contains("Enter every value again"));
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        saved.headers()["location"].to_str().unwrap(),
        format!("/connect/done?result=success&credential_id={id}")
    );
    assert_eq!(list["total"], 1, "updated in place, not added");
    assert_eq!(list["items"][0]["name"], "New name");
}
crate::both_backends!(a_connect_session_for_a_credential_re_enters_it_in_place);

async fn a_custom_credential_is_entered_as_rows_of_names_and_secret_values(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[RETURN.into()], |_| {}).await;
    let url = session_url(
        &app,
        json!({"user_id": "u-1", "purpose": "connect", "providers": ["custom"]}),
    )
    .await;
    let (cookie, csrf) = cookie_and_csrf(&app, &url, "/connect/custom").await;
    let form = app
        .client
        .get(format!("{}/connect/custom", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();

    let saved = app
        .client
        .post(format!("{}/connect/custom", app.base))
        .header("cookie", &cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("auth_type", "api_key"),
            ("name", "ERP"),
            ("kv.name.0", "API_KEY"),
            ("kv.value.0", TOKEN_SECRET),
            ("kv.name.1", "region"),
            ("kv.value.1", "eu"),
            ("kv.public.1", "true"),
            ("kv.name.2", ""),
            ("kv.value.2", ""),
        ])
        .send()
        .await
        .unwrap();
    let (_, list) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;
    let id = list["items"][0]["id"].as_str().unwrap().to_owned();
    let (_, credential) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;

    assert!(form.contains(r#"name="kv.name.0""#) && form.contains(r#"type="password" name="kv.value.0""#));
    assert!(!form.contains("Test connection"), "custom credentials have no test");
    assert_eq!(saved.status(), StatusCode::SEE_OTHER);
    assert_eq!(credential["fields"], json!({"region": "eu"}));
    assert_eq!(credential["secret_fields"], json!(["API_KEY"]));
    assert!(!credential.to_string().contains(TOKEN_SECRET));
}
crate::both_backends!(a_custom_credential_is_entered_as_rows_of_names_and_secret_values);

async fn guessing_links_or_cookies_is_slowed_to_429_like_guessing_api_keys(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let tg = telegram().await;
    let app = page_app(&db, &tg, &[RETURN.into()], |_| {}).await;

    let mut statuses = Vec::new();
    for n in 0..30 {
        let res = if n % 2 == 0 {
            app.client
                .get(format!("{}/manage", app.base))
                .header("cookie", format!("credgate_manage=guess{n}"))
                .send()
                .await
                .unwrap()
        } else {
            app.client
                .get(format!("{}/connect?session=cgs_guess{n}", app.base))
                .send()
                .await
                .unwrap()
        };
        statuses.push((res.status(), res.text().await.unwrap()));
    }

    assert_eq!(
        statuses[0].0,
        StatusCode::FORBIDDEN,
        "the first guesses are told the link expired"
    );
    let limited: Vec<&String> = statuses
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .map(|(_, b)| b)
        .collect();
    assert!(
        limited.len() >= 10,
        "{:?}",
        statuses.iter().map(|s| s.0).collect::<Vec<_>>()
    );
    assert!(limited[0].contains("Too many links that do not open"));
}
crate::both_backends!(guessing_links_or_cookies_is_slowed_to_429_like_guessing_api_keys);
