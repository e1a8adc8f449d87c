//! Ownership no flow can cross, and no secret in the wrong place: a connect
//! updates only its own owner's credential, a removed user's flows land
//! nowhere, a link is spent only under its own page, `use` sees no facts,
//! no command prints a token it was given, and a valid key is never locked
//! out by its neighbours.

use std::collections::HashMap;

use credgate::model::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{master_keys, sentinel, test_config, TestApp, TestDb};
use crate::oauth::{consent, oauth_app, RETURN_TO};
use crate::oauth_server::{AuthServer, Flavor};
use crate::sharing::{create, key, share};

fn query_of(url: &str) -> HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

/// `authorize` (JSON) with `key`; returns the provider URL.
async fn authorize_as(app: &TestApp, key: &str, extra: &str) -> String {
    let return_to: String = url::form_urlencoded::byte_serialize(RETURN_TO.as_bytes()).collect();
    let res = app
        .client
        .get(format!(
            "{}/integrations/google/authorize?return_to={return_to}{extra}",
            app.base
        ))
        .bearer_auth(key)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["authorize_url"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Follows the provider's redirect into the callback; returns the query
/// credgate sent the browser back to `return_to` with.
async fn land(app: &TestApp, back: &str) -> HashMap<String, String> {
    let res = app.client.get(back).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(RETURN_TO), "{location}");
    query_of(&location)
}

/// The whole connect flow with `key`; returns the redirect's query.
async fn connect_as(app: &TestApp, key: &str) -> HashMap<String, String> {
    let url = authorize_as(app, key, "").await;
    let back = consent(app, &url).await;
    land(app, &back).await
}

/// The access token an engine key without a user gets for `id`, acting for `user`.
async fn token_for(app: &TestApp, id: &str, user: &str) -> String {
    let engine = key(app, Role::Engine, None).await;
    let (status, body) = app
        .as_(&engine)
        .post(
            &format!("/integrations/credentials/{id}/resolve"),
            json!({"user_id": user}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// The actions and actors of a credential's audit events, oldest first.
async fn audit_of(app: &TestApp, id: &str) -> Vec<(String, String)> {
    let (_, events) = app
        .as_(&app.org.admin)
        .get(&format!("/integrations/credentials/{id}/audit"))
        .await;
    let mut seen: Vec<(String, String)> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_owned(),
                e["actor"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.reverse();
    seen
}

async fn another_members_connect_of_the_same_account_gets_a_credential_of_its_own(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let alice = key(&app, Role::Member, Some("alice")).await;
    let bob = key(&app, Role::Member, Some("bob")).await;
    let org_key = key(&app, Role::Member, None).await;

    let alices = connect_as(&app, &alice).await["credential_id"].clone();
    let alices_token = token_for(&app, &alices, "alice").await;
    let bobs = connect_as(&app, &bob).await;
    let orgs = connect_as(&app, &org_key).await;
    let alices_again = connect_as(&app, &alice).await["credential_id"].clone();
    let (_, bobs_list) = app.as_(&bob).get("/integrations/credentials?owner=me").await;
    let (_, alices_view) = app
        .as_(&alice)
        .get(&format!("/integrations/credentials/{alices}"))
        .await;

    assert_eq!(bobs["result"], "success");
    let bobs = bobs["credential_id"].clone();
    assert_ne!(bobs, alices, "Bob's connect made a credential of his own");
    assert_ne!(
        orgs["credential_id"], alices,
        "a key without a user connects an organization credential"
    );
    assert_ne!(orgs["credential_id"], bobs);
    assert_eq!(
        alices_again, alices,
        "the same owner connecting again updates its own credential"
    );
    assert!(
        !audit_of(&app, &alices)
            .await
            .iter()
            .any(|(_, actor)| actor == "user:bob"),
        "Bob's connect never touched Alice's credential"
    );
    let listed: Vec<&Value> = bobs_list["items"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 1, "{bobs_list}");
    assert_eq!(listed[0]["id"], json!(bobs));
    assert_eq!(listed[0]["owner"], json!("bob"));
    assert_eq!(alices_view["owner"], json!("alice"));
    let alices_now = token_for(&app, &alices, "alice").await;
    let bobs_token = token_for(&app, &bobs, "bob").await;
    assert_ne!(
        alices_now, bobs_token,
        "the engine resolving for Alice never gets Bob's token"
    );
    assert_ne!(alices_token, bobs_token);
}
both_backends!(another_members_connect_of_the_same_account_gets_a_credential_of_its_own);

async fn a_connect_never_reauthorizes_another_owners_credential_without_manage(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let alice = key(&app, Role::Member, Some("alice")).await;
    let bob = key(&app, Role::Member, Some("bob")).await;
    let alices = connect_as(&app, &alice).await["credential_id"].clone();
    share(
        &app,
        &alice,
        &alices,
        json!(null),
        json!([{"user_id": "bob", "access": "view"}]),
    )
    .await;

    let res = app
        .client
        .get(format!(
            "{}/integrations/google/authorize?credential_id={alices}",
            app.base
        ))
        .bearer_auth(&bob)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    let status = res.status();
    share(
        &app,
        &alice,
        &alices,
        json!(null),
        json!([{"user_id": "bob", "access": "manage"}]),
    )
    .await;
    let url = authorize_as(&app, &bob, &format!("&credential_id={alices}")).await;
    let back = consent(&app, &url).await;
    let in_place = land(&app, &back).await;

    assert_eq!(status, StatusCode::FORBIDDEN, "view is not enough to re-authorize");
    assert_eq!(
        in_place["credential_id"], alices,
        "with manage, re-authorizing in place is allowed"
    );
    assert!(audit_of(&app, &alices)
        .await
        .contains(&("credential.reconnect".into(), "user:bob".into())));
}
both_backends!(a_connect_never_reauthorizes_another_owners_credential_without_manage);

/// `credgate user remove` of dave, his credentials handed to the organization.
fn remove_dave(app: &TestApp) -> std::process::Output {
    let org = app.org.id.clone();
    cli(
        app,
        &[
            "user",
            "remove",
            "--org",
            &org,
            "--user",
            "dave",
            "--transfer-to",
            "org",
        ],
    )
}

/// `credgate …` on the test's database, with its master keys.
fn cli(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_credgate"))
        .args(args)
        .env("CREDGATE_DATABASE_URL", &app.config.database_url)
        .env("CREDGATE_MASTER_KEYS", master_keys(&app.config))
        .env(
            "CREDGATE_PROVIDERS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
        )
        .output()
        .unwrap()
}

async fn a_removed_users_pending_connect_stores_nothing(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let dave = key(&app, Role::Member, Some("dave")).await;
    let url = authorize_as(&app, &dave, "").await;
    let back = consent(&app, &url).await;

    let removed = remove_dave(&app);
    let result = land(&app, &back).await;
    let (_, all) = app.as_(&app.org.admin).get("/integrations/credentials").await;
    let dave_owns: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE owner = 'dave'")
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert_eq!(result["result"], "error");
    assert_eq!(result["code"], "user_removed", "{result:?}");
    assert!(!result.contains_key("credential_id"));
    assert_eq!(all["total"], json!(0), "{all}");
    assert_eq!(dave_owns, 0);
}
both_backends!(a_removed_users_pending_connect_stores_nothing);

async fn a_user_removed_while_their_callback_waits_for_the_provider_gets_nothing_stored(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let dave = key(&app, Role::Member, Some("dave")).await;
    let url = authorize_as(&app, &dave, "").await;
    let back = consent(&app, &url).await;
    google.with(|i| i.token_delay = Some(std::time::Duration::from_secs(5)));

    // The callback has taken its state and waits for the code exchange
    // when the user is removed.
    let landing = {
        let (client, back) = (app.client.clone(), back.clone());
        tokio::spawn(async move { client.get(back).send().await.unwrap() })
    };
    while google.with(|i| i.token_requests) == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let removed = remove_dave(&app);
    let exchange_still_held = google.with(|i| i.issued.iter().filter(|t| t.starts_with("ya29")).count()) == 0;
    let res = landing.await.unwrap();
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let result = query_of(&location);
    let (_, all) = app.as_(&app.org.admin).get("/integrations/credentials").await;

    assert!(removed.status.success(), "{}", String::from_utf8_lossy(&removed.stderr));
    assert!(exchange_still_held, "the removal ran while the exchange was held");
    assert_eq!(result["result"], "error");
    assert_eq!(result["code"], "user_removed", "{result:?}");
    assert_eq!(all["total"], json!(0), "nothing stored, nothing to hand on: {all}");
    let mut revoked = false;
    for _ in 0..500 {
        revoked = google.with(|i| !i.revoked.is_empty());
        if revoked {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(revoked, "the tokens it got are revoked at the provider");
}
both_backends!(a_user_removed_while_their_callback_waits_for_the_provider_gets_nothing_stored);

/// Opens `url` (a session link, or a page with `cookie`); returns the status,
/// the cookie it set (`name=value`) and the body.
async fn open(app: &TestApp, url: &str, cookie: Option<&str>) -> (StatusCode, Option<String>, String) {
    let mut req = app.client.get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.unwrap();
    let status = res.status();
    let set = res
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    (status, set, res.text().await.unwrap())
}

/// A page session's URL, opened with `key` for `body`.
async fn session(app: &TestApp, key: &str, body: Value) -> String {
    let (status, created) = app.as_(key).post("/integrations/sessions", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["url"].as_str().unwrap().to_owned()
}

async fn a_link_opened_under_the_wrong_page_is_not_spent(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let url = session(&app, &app.org.admin, json!({"user_id": "u-7", "purpose": "connect"})).await;
    let wrong = url.replacen("/connect?", "/manage?", 1);

    let (_, wrong_cookie, _) = open(&app, &wrong, None).await;
    let (status, right_cookie, _) = open(&app, &url, None).await;
    let (_, again, _) = open(&app, &url, None).await;

    assert!(wrong_cookie.is_none(), "a connect link opens no manage page");
    assert_eq!(status, StatusCode::OK);
    assert!(
        right_cookie.is_some_and(|c| c.starts_with("credgate_connect=")),
        "still opens as /connect"
    );
    assert!(again.is_none(), "and then only once");
}
both_backends!(a_link_opened_under_the_wrong_page_is_not_spent);

async fn use_sees_whether_a_test_passed_but_no_host_or_message(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let alice = key(&app, Role::Member, Some("alice")).await;
    let bob = key(&app, Role::Member, Some("bob")).await;
    let id = create(&app, &alice, "Alice's warehouse", "pw").await;
    share(
        &app,
        &alice,
        &id,
        json!(null),
        json!([{"user_id": "bob", "access": "use"}]),
    )
    .await;
    let test = |k: String| {
        let app = &app;
        let id = id.clone();
        async move {
            app.call(Method::POST, &format!("/integrations/credentials/{id}/test"), &k, None)
                .await
        }
    };

    let (owner_status, owners) = test(alice.clone()).await;
    let (user_status, users) = test(bob.clone()).await;
    let page = session(&app, &app.org.admin, json!({"user_id": "bob", "purpose": "manage"})).await;
    let (_, cookie, _) = open(&app, &page, None).await;
    let (_, _, manage) = open(&app, &format!("{}/manage", app.base), cookie.as_deref()).await;
    let owner_page = session(&app, &app.org.admin, json!({"user_id": "alice", "purpose": "manage"})).await;
    let (_, cookie, _) = open(&app, &owner_page, None).await;
    let (_, _, owners_manage) = open(&app, &format!("{}/manage", app.base), cookie.as_deref()).await;

    assert_eq!(owner_status, StatusCode::OK);
    assert_eq!(owners["ok"], json!(false));
    let message = owners["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("db.example.com"),
        "the owner sees the reason: {owners}"
    );
    assert_eq!(user_status, StatusCode::OK);
    let mut keys: Vec<&String> = users.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["error", "latency_ms", "ok"], "{users}");
    assert_eq!(users["ok"], json!(false));
    assert_eq!(users["error"], json!({"code": owners["error"]["code"]}));
    assert!(!users.to_string().contains("db.example.com"));
    let escaped = maud::html! { (message) }.into_string();
    assert!(
        manage.contains("Alice&#39;s warehouse") || manage.contains("Alice's warehouse"),
        "Bob sees the row"
    );
    assert!(!manage.contains(&escaped), "the last error's text needs view");
    assert!(!manage.contains("db.example.com"));
    assert!(owners_manage.contains(&escaped), "the owner's page still shows it");
}
both_backends!(use_sees_whether_a_test_passed_but_no_host_or_message);

/// `credgate api-key list --org …`: (id, the rest of the line) per key.
fn key_ids(app: &TestApp) -> Vec<String> {
    let out = cli(app, &["api-key", "list", "--org", &app.org.id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

async fn no_command_prints_a_token_it_was_given_and_a_token_revokes_its_own_key(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let leaked = key(&app, Role::Member, Some("erin")).await;
    let before = key_ids(&app);

    let as_id = cli(&app, &["api-key", "revoke", "--id", &leaked]);
    let stray = cli(&app, &["api-key", "revoke", &leaked]);
    let by_token = cli(&app, &["api-key", "revoke", "--token", &leaked]);
    let twice = cli(&app, &["api-key", "revoke", "--token", &leaked]);
    let (status, _) = app.as_(&leaked).get("/integrations/credentials").await;
    let after = key_ids(&app);

    let all = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    assert!(!as_id.status.success());
    assert!(!all(&as_id).contains(&leaked), "{}", all(&as_id));
    assert!(!all(&as_id).contains(&leaked[4..20]), "not even a part of it");
    assert!(!stray.status.success());
    assert!(
        !all(&stray).contains(&leaked[4..20]),
        "nor clap's error: {}",
        all(&stray)
    );
    assert!(by_token.status.success(), "{}", all(&by_token));
    assert!(!all(&by_token).contains(&leaked));
    assert!(!twice.status.success());
    assert!(!all(&twice).contains(&leaked));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(before, after, "revoked keys are still listed");
    let listing = String::from_utf8(cli(&app, &["api-key", "list", "--org", &app.org.id]).stdout).unwrap();
    assert_eq!(
        listing.lines().filter(|l| l.contains("revoked")).count(),
        1,
        "{listing}"
    );
}
both_backends!(no_command_prints_a_token_it_was_given_and_a_token_revokes_its_own_key);

async fn a_page_session_opened_with_a_key_ends_when_that_key_is_revoked(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let carol = key(&app, Role::Member, Some("carol")).await;
    let admin_for_carol = key(&app, Role::Admin, None).await;
    let url = session(&app, &carol, json!({"purpose": "manage"})).await;
    let kept = session(&app, &admin_for_carol, json!({"user_id": "carol", "purpose": "manage"})).await;
    let (_, cookie, _) = open(&app, &url, None).await;
    let (_, kept_cookie, _) = open(&app, &kept, None).await;
    let page = format!("{}/manage", app.base);
    let (before, _, _) = open(&app, &page, cookie.as_deref()).await;

    let revoked = cli(&app, &["api-key", "revoke", "--token", &carol]);
    let (after, _, body) = open(&app, &page, cookie.as_deref()).await;
    let (other, _, _) = open(&app, &page, kept_cookie.as_deref()).await;

    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    assert_eq!(before, StatusCode::OK);
    assert_ne!(after, StatusCode::OK, "{body}");
    assert!(!body.contains("Your credentials"));
    assert_eq!(other, StatusCode::OK, "a session another key opened stays");
}
both_backends!(a_page_session_opened_with_a_key_ends_when_that_key_is_revoked);

async fn answers_that_carry_a_secret_are_never_cached(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let secret = sentinel();
    let id = app.create_pg(&app.org, "warehouse", &secret).await;
    app.as_(&app.org.admin)
        .put("/integrations/secrets/API_TOKEN", json!({"value": secret}))
        .await;
    let post = |path: String, body: Value| {
        let app = &app;
        async move {
            app.client
                .post(format!("{}{path}", app.base))
                .bearer_auth(&app.org.engine)
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    };

    let resolved = post(format!("/integrations/credentials/{id}/resolve"), json!({})).await;
    let named = post("/integrations/secrets/resolve".into(), json!({"names": ["API_TOKEN"]})).await;

    for res in [resolved, named] {
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers().get("cache-control").map(|v| v.to_str().unwrap()),
            Some("no-store")
        );
        assert!(res.text().await.unwrap().contains(&secret));
    }
}
both_backends!(answers_that_carry_a_secret_are_never_cached);

fn from(ip: [u8; 4]) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(std::net::IpAddr::from(ip))
        .build()
        .unwrap()
}

async fn list_with(client: &reqwest::Client, app: &TestApp, token: &str) -> StatusCode {
    client
        .get(format!("{}/integrations/credentials", app.base))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
}

/// A random token shaped like a real one: `cgk_` and 51 url-safe characters.
fn lookalike() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let tail: String = (0..51).map(|_| ALPHABET[rng.gen_range(0..64)] as char).collect();
    format!("cgk_{tail}")
}

async fn a_valid_key_is_never_refused_for_what_other_tokens_from_its_address_did(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.auth_failures_per_sec = 1;
    let app = TestApp::spawn_with(config).await;
    let shared = from([127, 0, 0, 1]);
    let lookups = "credgate_api_key_lookups_total";
    let before = app.metric(lookups).await;

    let mut noisy = Vec::new();
    for _ in 0..60 {
        noisy.push(list_with(&shared, &app, &lookalike()).await);
    }
    let after_noise = app.metric(lookups).await;
    let fresh = key(&app, Role::Member, Some("neighbour")).await;
    let valid = list_with(&shared, &app, &fresh).await;
    let legacy_shaped = list_with(&shared, &app, &format!("cgk_{}", &lookalike()[4..47])).await;

    assert!(
        noisy.contains(&StatusCode::TOO_MANY_REQUESTS),
        "the noisy client is slowed down: {noisy:?}"
    );
    assert_eq!(
        valid,
        StatusCode::OK,
        "a valid key, never seen before, from the same address"
    );
    assert_eq!(after_noise, before, "random tokens cost no lookup at all");
    assert_eq!(legacy_shaped, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        app.metric(lookups).await,
        before + 1,
        "only the valid key was looked up"
    );
}
both_backends!(a_valid_key_is_never_refused_for_what_other_tokens_from_its_address_did);
