//! An organization's own OAuth app (bring your own client): its connections,
//! refreshes and revocations go through it; a credential keeps the app that
//! connected it; the secret is sealed, re-sealed by `rotate-org`, and never
//! shown.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{captured_logs, sentinel, TestApp, TestDb};
use crate::oauth::{authorize, callback, connect, consent, oauth_app, RETURN_TO};
use crate::oauth_server::{AuthServer, Flavor};

fn query_of(url: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(url).unwrap().query_pairs().into_owned().collect()
}

/// Registers client `id` with `secret` at the stand-in and as the org's app.
async fn own_app(app: &TestApp, server: &AuthServer, provider: &str, id: &str, secret: &str, extra: Value) -> Value {
    server.with(|i| i.other_clients.insert(id.into(), secret.into()));
    let mut body = json!({"client_id": id, "client_secret": secret});
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let (status, put) = app
        .call(
            Method::PUT,
            &format!("/integrations/oauth-apps/{provider}"),
            &app.org.admin,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{put}");
    put
}

fn back_to() -> String {
    format!(
        "return_to={}",
        url::form_urlencoded::byte_serialize(RETURN_TO.as_bytes()).collect::<String>()
    )
}

fn last_token_client(server: &AuthServer) -> (String, String) {
    server.with(|i| i.token_clients.last().cloned().unwrap())
}

async fn refresh(app: &TestApp, id: &str) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/integrations/credentials/{id}/refresh"),
        &app.org.admin,
        None,
    )
    .await
}

async fn an_organizations_own_app_connects_refreshes_and_revokes_its_credentials(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let operator_client = google.with(|i| i.client_id.clone());
    let secret = sentinel();

    let put = own_app(
        &app,
        &google,
        "google",
        "org-client",
        &secret,
        json!({"scopes": ["openid", "email", "https://www.googleapis.com/auth/spreadsheets"],
               "client_secret_expires_at": "2027-06-01T00:00:00Z"}),
    )
    .await;
    let url = authorize(&app, "google", &format!("name=Sheets&{}", back_to())).await;
    let asked = query_of(&url);
    let back = consent(&app, &url).await;
    let done = callback(&app, &back).await;
    let id = query_of(done.headers()["location"].to_str().unwrap())["credential_id"].clone();
    let exchanged_by = last_token_client(&google);
    let (_, listed) = app
        .call(Method::GET, "/integrations/oauth-apps", &app.org.admin, None)
        .await;
    let (refreshed, _) = refresh(&app, &id).await;
    let refreshed_by = last_token_client(&google);
    let other = app.new_org("Other").await;
    let other_url = app
        .client
        .get(format!("{}/integrations/google/authorize", app.base))
        .bearer_auth(&other.member)
        .header("accept", "application/json")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let (in_use, in_use_problem) = app
        .call(Method::DELETE, "/integrations/oauth-apps/google", &app.org.admin, None)
        .await;
    let (deleted, _) = app
        .call(
            Method::DELETE,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let revoked_by = google.with(|i| i.revoke_clients.clone());
    let (_, listed_after) = app
        .call(Method::GET, "/integrations/oauth-apps", &app.org.admin, None)
        .await;
    let (gone, _) = app
        .call(Method::DELETE, "/integrations/oauth-apps/google", &app.org.admin, None)
        .await;

    assert_eq!(put["client_id"], "org-client");
    assert_eq!(put["credentials"], 0);
    assert_eq!(put["client_secret_expires_at"], "2027-06-01T00:00:00Z");
    assert!(put.get("client_secret").is_none(), "{put}");
    assert_eq!(asked["client_id"], "org-client");
    assert_eq!(
        asked["scope"],
        "openid email https://www.googleapis.com/auth/spreadsheets"
    );
    assert_eq!(exchanged_by, ("authorization_code".into(), "org-client".into()));
    assert_eq!(listed["items"][0]["provider"], "google");
    assert_eq!(listed["items"][0]["credentials"], 1, "{listed}");
    assert_eq!(refreshed, StatusCode::OK);
    assert_eq!(refreshed_by, ("refresh_token".into(), "org-client".into()));
    let other_asked = query_of(other_url["authorize_url"].as_str().unwrap());
    assert_eq!(
        other_asked["client_id"], operator_client,
        "an organization without its own app uses the operator's"
    );
    assert_eq!(in_use, StatusCode::CONFLICT);
    assert_eq!(in_use_problem["code"], "in_use", "{in_use_problem}");
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(
        revoked_by,
        vec!["org-client".to_owned()],
        "revoked through the app that connected it"
    );
    assert_eq!(listed_after["items"][0]["credentials"], 0);
    assert_eq!(gone, StatusCode::NO_CONTENT);
    for text in [put.to_string(), listed.to_string(), captured_logs()] {
        assert!(!text.contains(&secret), "the client secret leaked");
    }
}
both_backends!(an_organizations_own_app_connects_refreshes_and_revokes_its_credentials);

async fn a_credential_keeps_the_app_that_connected_it_until_it_is_reconnected(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let operator_client = ms.with(|i| i.client_id.clone());
    let before = connect(&app, "sharepoint", "").await["credential_id"].clone();

    own_app(
        &app,
        &ms,
        "sharepoint",
        "app-one",
        "secret-one",
        json!({"tenant": "contoso.onmicrosoft.com"}),
    )
    .await;
    let (old_refreshed, _) = refresh(&app, &before).await;
    let old_refreshed_by = last_token_client(&ms);
    ms.with(|i| i.user = crate::oauth_server::User::new(2));
    let url = authorize(&app, "sharepoint", &back_to()).await;
    let back = consent(&app, &url).await;
    let tenant_asked = ms.with(|i| i.tenant_seen.clone());
    let through_app =
        query_of(callback(&app, &back).await.headers()["location"].to_str().unwrap())["credential_id"].clone();
    // The app gets another client id: its old grants were never the new one's.
    own_app(&app, &ms, "sharepoint", "app-two", "secret-two", json!({})).await;
    let (stale, stale_problem) = refresh(&app, &through_app).await;
    let refreshes_before = ms.with(|i| i.token_clients.len());
    let (_, stale_view) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{through_app}"),
            &app.org.admin,
            None,
        )
        .await;
    let again = connect(&app, "sharepoint", &format!("&credential_id={through_app}")).await;
    let (moved, _) = refresh(&app, &through_app).await;
    let moved_by = last_token_client(&ms);
    let (_, apps) = app
        .call(Method::GET, "/integrations/oauth-apps", &app.org.admin, None)
        .await;

    assert_eq!(old_refreshed, StatusCode::OK);
    assert_eq!(
        old_refreshed_by.1, operator_client,
        "a credential connected through the operator's app keeps refreshing there"
    );
    assert_eq!(tenant_asked.as_deref(), Some("contoso.onmicrosoft.com"));
    assert_eq!(stale, StatusCode::CONFLICT, "{stale_problem}");
    assert_eq!(stale_problem["code"], "needs_reauth", "{stale_problem}");
    assert_eq!(stale_view["status"], "needs_reauth");
    assert_eq!(
        ms.with(|i| i.token_clients[..refreshes_before]
            .iter()
            .filter(|(_, c)| c == "app-two")
            .count()),
        0,
        "a grant of app-one is never sent with app-two's client"
    );
    assert_eq!(again["result"], "success", "{again:?}");
    assert_eq!(moved, StatusCode::OK);
    assert_eq!(moved_by, ("refresh_token".into(), "app-two".into()));
    assert_eq!(apps["items"][0]["credentials"], 1, "{apps}");
    assert_eq!(apps["items"][0]["tenant"], Value::Null, "replaced as a whole");
}
both_backends!(a_credential_keeps_the_app_that_connected_it_until_it_is_reconnected);

async fn a_flow_whose_app_changed_before_its_callback_stores_nothing(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    own_app(&app, &google, "google", "first", "s1", json!({})).await;
    let url = authorize(&app, "google", &back_to()).await;
    let back = consent(&app, &url).await;

    let (deleted, _) = app
        .call(Method::DELETE, "/integrations/oauth-apps/google", &app.org.admin, None)
        .await;
    let res = callback(&app, &back).await;
    let result = query_of(res.headers()["location"].to_str().unwrap());
    let (_, listed) = app
        .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;

    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(result["result"], "error");
    assert_eq!(result["code"], "app_changed", "{result:?}");
    assert_eq!(listed["total"], 0);
}
both_backends!(a_flow_whose_app_changed_before_its_callback_stores_nothing);

async fn oauth_apps_are_for_admins_and_bad_input_names_the_field(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let put = |key: String, provider: &'static str, body: Value| {
        let app = &app;
        async move {
            app.call(
                Method::PUT,
                &format!("/integrations/oauth-apps/{provider}"),
                &key,
                Some(body),
            )
            .await
        }
    };
    let good = json!({"client_id": "c", "client_secret": "s"});

    let (member, _) = put(app.org.member.clone(), "google", good.clone()).await;
    let (engine, _) = app
        .call(Method::GET, "/integrations/oauth-apps", &app.org.engine, None)
        .await;
    let (unknown, _) = put(app.org.admin.clone(), "nope", good.clone()).await;
    let (not_oauth, _) = put(app.org.admin.clone(), "postgresql", good.clone()).await;
    let (mcp, _) = put(app.org.admin.clone(), "mcp", good.clone()).await;
    let (empty, empty_problem) = put(
        app.org.admin.clone(),
        "google",
        json!({"client_id": "", "client_secret": "s"}),
    )
    .await;
    let (spaces, spaces_problem) = put(
        app.org.admin.clone(),
        "google",
        json!({"client_id": "c", "client_secret": "s", "scopes": ["a b"]}),
    )
    .await;
    let (tenant, tenant_problem) = put(
        app.org.admin.clone(),
        "google",
        json!({"client_id": "c", "client_secret": "s", "tenant": "contoso"}),
    )
    .await;
    let (bad_tenant, bad_tenant_problem) = put(
        app.org.admin.clone(),
        "sharepoint",
        json!({"client_id": "c", "client_secret": "s", "tenant": "no/slashes"}),
    )
    .await;
    let (missing, missing_problem) = put(app.org.admin.clone(), "google", json!({"client_id": "c"})).await;
    let (stray, _) = put(
        app.org.admin.clone(),
        "google",
        json!({"client_id": "c", "client_secret": "s", "extra": 1}),
    )
    .await;
    let (no_app, _) = app
        .call(Method::DELETE, "/integrations/oauth-apps/google", &app.org.admin, None)
        .await;
    let (_, listed) = app
        .call(Method::GET, "/integrations/oauth-apps", &app.org.admin, None)
        .await;

    assert_eq!(member, StatusCode::FORBIDDEN);
    assert_eq!(engine, StatusCode::FORBIDDEN);
    assert_eq!(unknown, StatusCode::NOT_FOUND);
    assert_eq!(not_oauth, StatusCode::NOT_FOUND);
    assert_eq!(mcp, StatusCode::NOT_FOUND, "MCP clients are registered, not entered");
    assert_eq!(empty, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(empty_problem["errors"][0]["field"], "client_id");
    assert_eq!(spaces, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(spaces_problem["errors"][0]["field"], "scopes");
    assert_eq!(tenant, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(tenant_problem["errors"][0]["field"], "tenant");
    assert_eq!(bad_tenant, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_tenant_problem["errors"][0]["field"], "tenant");
    assert_eq!(missing, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        missing_problem["errors"][0]["field"], "client_secret",
        "{missing_problem}"
    );
    assert_eq!(stray, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(no_app, StatusCode::NOT_FOUND);
    assert_eq!(listed["items"], json!([]), "nothing half-written");
}
both_backends!(oauth_apps_are_for_admins_and_bad_input_names_the_field);

async fn rotating_the_data_key_reseals_app_secrets_and_connections_go_on(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    own_app(&app, &google, "google", "rotated-client", "rotated-secret", json!({})).await;
    let sql = app.sql().await;
    let version = |sql: sqlx::AnyPool| async move {
        let v: i64 = sqlx::query_scalar("SELECT key_version FROM oauth_apps")
            .fetch_one(&sql)
            .await
            .unwrap();
        v
    };
    let before = version(sql.clone()).await;

    let rotation = app.state.vault.rotate_org(&app.org.id).await.unwrap();
    let after = version(sql.clone()).await;
    let keys: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM org_keys WHERE org_id = $1")
        .bind(&app.org.id)
        .fetch_one(&sql)
        .await
        .unwrap();
    let connected = connect(&app, "google", "").await;

    assert_eq!(rotation.apps_resealed, 1);
    assert!(after > before, "{before} → {after}");
    assert_eq!(keys, 1, "the old data key went: nothing uses it any more");
    assert_eq!(connected["result"], "success", "{connected:?}");
    assert_eq!(last_token_client(&google).1, "rotated-client");
}
both_backends!(rotating_the_data_key_reseals_app_secrets_and_connections_go_on);

async fn the_pages_connect_button_uses_the_organizations_app(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    // No operator's client at all: only the organization's own.
    let app = oauth_app(&db, &[(&google, "google")], |c| {
        c.provider_overrides.remove("CREDGATE_PROVIDER_GOOGLE_CLIENT_ID");
    })
    .await;
    let (_, catalog_before) = app
        .call(Method::GET, "/integrations/providers", &app.org.member, None)
        .await;
    own_app(&app, &google, "google", "page-client", "page-secret", json!({})).await;
    let (_, catalog_after) = app
        .call(Method::GET, "/integrations/providers", &app.org.member, None)
        .await;
    let url = crate::pages::open_session(&app, &app.org.admin, json!({"user_id": "u-9", "purpose": "connect"})).await;
    let (cookie, csrf) = crate::pages::sessions::cookie_and_csrf(&app, &url, "/connect").await;

    let started = app
        .client
        .get(format!("{}/connect/google/oauth?csrf={csrf}", app.base))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    let location = started.headers()["location"].to_str().unwrap().to_owned();

    let google_of = |catalog: &Value| {
        catalog
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == "google")
            .unwrap()["oauth_configured"]
            .clone()
    };
    assert_eq!(google_of(&catalog_before), false);
    assert_eq!(google_of(&catalog_after), true);
    assert!(started.status().is_redirection(), "{}", started.status());
    assert_eq!(query_of(&location)["client_id"], "page-client", "{location}");
}
both_backends!(the_pages_connect_button_uses_the_organizations_app);
