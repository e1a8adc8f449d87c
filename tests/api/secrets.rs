//! Secrets by name: put (create or replace), list (metadata only), resolve
//! for the engine (each use audited), delete; organizations, roles, names,
//! the per-organization limit, and key rotation.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::cli::credgate;
use crate::helpers::{captured_logs, master_keys, sentinel, Backend, TestApp, TestDb};

fn path(name: &str) -> String {
    format!("/integrations/secrets/{name}")
}

async fn put(app: &TestApp, key: &str, name: &str, value: &str) -> (StatusCode, Value) {
    app.call(Method::PUT, &path(name), key, Some(json!({ "value": value })))
        .await
}

async fn resolve(app: &TestApp, key: &str, names: &[&str]) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        "/integrations/secrets/resolve",
        key,
        Some(json!({ "names": names })),
    )
    .await
}

async fn list(app: &TestApp, key: &str) -> (StatusCode, Value) {
    app.call(Method::GET, "/integrations/secrets", key, None).await
}

/// The audit events of the secrets' actions in `org`: (action, name, detail).
async fn secret_events(app: &TestApp, org: &str) -> Vec<(String, String, String)> {
    let rows: Vec<(String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT action, credential_id, detail FROM audit_events WHERE org_id = $1 AND action LIKE 'secret.%' ORDER BY id",
    )
    .bind(org)
    .fetch_all(&app.sql().await)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(action, credential_id, detail)| {
            assert!(credential_id.is_none(), "a secret's event names no credential");
            let detail = detail.unwrap_or_default();
            let name = serde_json::from_str::<Value>(&detail).unwrap()["name"]
                .as_str()
                .unwrap()
                .to_owned();
            (action, name, detail)
        })
        .collect()
}

async fn secrets_are_put_replaced_listed_resolved_and_deleted_without_a_value_showing(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let (first, second, other) = (sentinel(), sentinel(), sentinel());
    let mut shown = Vec::new();

    let (created, created_body) = put(&app, &app.org.admin, "SMTP_PASSWORD", &first).await;
    let (replaced, replaced_body) = put(&app, &app.org.member, "SMTP_PASSWORD", &second).await;
    let (_, api_body) = put(&app, &app.org.admin, "API_TOKEN", &other).await;
    let (listed, before_use) = list(&app, &app.org.engine).await;
    let (resolved, values) = resolve(&app, &app.org.engine, &["SMTP_PASSWORD", "NOT_THERE", "API_TOKEN"]).await;
    let (_, after_use) = list(&app, &app.org.admin).await;
    let (deleted, deleted_body) = app
        .call(Method::DELETE, &path("SMTP_PASSWORD"), &app.org.member, None)
        .await;
    let (deleted_again, again_body) = app
        .call(Method::DELETE, &path("SMTP_PASSWORD"), &app.org.admin, None)
        .await;
    let (_, after_delete) = resolve(&app, &app.org.engine, &["SMTP_PASSWORD"]).await;
    let (_, final_list) = list(&app, &app.org.admin).await;
    shown.extend(
        [
            &created_body,
            &replaced_body,
            &api_body,
            &before_use,
            &after_use,
            &deleted_body,
            &again_body,
            &after_delete,
            &final_list,
        ]
        .map(Value::to_string),
    );
    let events = secret_events(&app, &app.org.id).await;

    assert_eq!(created, StatusCode::CREATED, "{created_body}");
    assert_eq!(replaced, StatusCode::OK, "{replaced_body}");
    assert_eq!(created_body["name"], "SMTP_PASSWORD");
    let keys: Vec<&str> = created_body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["created_at", "created_by", "last_used_at", "name", "updated_at"]);
    assert_eq!(created_body["created_by"], "user:u-1");
    assert_eq!(listed, StatusCode::OK, "every role lists");
    let names: Vec<&str> = before_use["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["API_TOKEN", "SMTP_PASSWORD"], "sorted by name");
    assert!(before_use["items"][1]["last_used_at"].is_null());
    assert_eq!(resolved, StatusCode::OK, "{values}");
    assert_eq!(
        values["secrets"],
        json!({"SMTP_PASSWORD": second, "API_TOKEN": other}),
        "the replaced value"
    );
    assert_eq!(values["missing"], json!(["NOT_THERE"]));
    assert!(
        after_use["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["last_used_at"].is_string()),
        "{after_use}"
    );
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(deleted_again, StatusCode::NOT_FOUND);
    assert_eq!(after_delete, json!({"secrets": {}, "missing": ["SMTP_PASSWORD"]}));
    assert_eq!(final_list["items"].as_array().unwrap().len(), 1);
    let actions: Vec<(&str, &str)> = events.iter().map(|(a, n, _)| (a.as_str(), n.as_str())).collect();
    assert_eq!(
        actions,
        [
            ("secret.put", "SMTP_PASSWORD"),
            ("secret.put", "SMTP_PASSWORD"),
            ("secret.put", "API_TOKEN"),
            ("secret.resolve", "API_TOKEN"),
            ("secret.resolve", "SMTP_PASSWORD"),
            ("secret.delete", "SMTP_PASSWORD"),
        ],
        "one event per put, per resolved name, per delete"
    );
    let logs = captured_logs();
    let stored = db.raw_bytes();
    for value in [&first, &second, &other] {
        for body in &shown {
            assert!(!body.contains(value.as_str()), "a response showed a value: {body}");
        }
        assert!(
            events.iter().all(|(_, _, detail)| !detail.contains(value.as_str())),
            "an audit event holds a value"
        );
        assert!(!logs.contains(value.as_str()), "a log line carries a value");
        assert!(
            !String::from_utf8_lossy(&stored).contains(value.as_str()),
            "a value is stored in the clear"
        );
    }
}
both_backends!(secrets_are_put_replaced_listed_resolved_and_deleted_without_a_value_showing);

async fn another_organizations_secrets_are_invisible(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let other = app.new_org("Other").await;
    let (ours, theirs) = (sentinel(), sentinel());
    put(&app, &app.org.admin, "SHARED_NAME", &ours).await;

    let (_, their_list) = list(&app, &other.admin).await;
    let (_, their_resolve) = resolve(&app, &other.engine, &["SHARED_NAME"]).await;
    let (their_delete, _) = app.call(Method::DELETE, &path("SHARED_NAME"), &other.admin, None).await;
    let (their_put, _) = put(&app, &other.admin, "SHARED_NAME", &theirs).await;
    let (_, our_resolve) = resolve(&app, &app.org.engine, &["SHARED_NAME"]).await;
    let (_, their_own) = resolve(&app, &other.engine, &["SHARED_NAME"]).await;

    assert_eq!(their_list, json!({"items": []}));
    assert_eq!(their_resolve, json!({"secrets": {}, "missing": ["SHARED_NAME"]}));
    assert_eq!(their_delete, StatusCode::NOT_FOUND);
    assert_eq!(their_put, StatusCode::CREATED, "the same name is theirs to create");
    assert_eq!(our_resolve["secrets"]["SHARED_NAME"], json!(ours), "ours is untouched");
    assert_eq!(their_own["secrets"]["SHARED_NAME"], json!(theirs));
}
both_backends!(another_organizations_secrets_are_invisible);

async fn only_the_engine_resolves_and_only_admins_and_members_write(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let value = sentinel();
    put(&app, &app.org.admin, "DB_PASSWORD", &value).await;

    let (admin_resolve, admin_body) = resolve(&app, &app.org.admin, &["DB_PASSWORD"]).await;
    let (member_resolve, member_body) = resolve(&app, &app.org.member, &["DB_PASSWORD"]).await;
    let (engine_put, _) = put(&app, &app.org.engine, "DB_PASSWORD", "x").await;
    let (engine_delete, _) = app
        .call(Method::DELETE, &path("DB_PASSWORD"), &app.org.engine, None)
        .await;
    let (anonymous, _) = app.call(Method::GET, "/integrations/secrets", "cgk_nope", None).await;
    let (_, engine_resolve) = resolve(&app, &app.org.engine, &["DB_PASSWORD"]).await;
    let resolves: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'secret.resolve'")
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    assert_eq!(admin_resolve, StatusCode::FORBIDDEN);
    assert_eq!(member_resolve, StatusCode::FORBIDDEN);
    assert_eq!(admin_body["code"], "forbidden");
    assert!(!admin_body.to_string().contains(&value) && !member_body.to_string().contains(&value));
    assert_eq!(engine_put, StatusCode::FORBIDDEN);
    assert_eq!(engine_delete, StatusCode::FORBIDDEN);
    assert_eq!(anonymous, StatusCode::UNAUTHORIZED);
    assert_eq!(
        engine_resolve["secrets"]["DB_PASSWORD"],
        json!(value),
        "the value was not changed"
    );
    assert_eq!(resolves, 1, "refused resolves record no use");
}
both_backends!(only_the_engine_resolves_and_only_admins_and_members_write);

async fn bad_names_and_values_are_422_naming_the_field(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let value = sentinel();
    let too_long = format!("A{}", "B".repeat(128));

    let (lower, lower_body) = put(&app, &app.org.admin, "smtp_password", &value).await;
    let (long, _) = put(&app, &app.org.admin, &too_long, &value).await;
    let (dash, _) = app.call(Method::DELETE, &path("A-B"), &app.org.admin, None).await;
    let (empty, empty_body) = put(&app, &app.org.admin, "EMPTY", "").await;
    let (big, big_body) = put(&app, &app.org.admin, "BIG", &"x".repeat(64 * 1024 + 1)).await;
    let (at_limit, _) = put(&app, &app.org.admin, "AT_LIMIT", &"x".repeat(64 * 1024)).await;
    let (bad_item, item_body) = resolve(&app, &app.org.engine, &["GOOD", "bad name"]).await;
    let (none, none_body) = resolve(&app, &app.org.engine, &[]).await;
    let many: Vec<String> = (0..101).map(|i| format!("N{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let (too_many, _) = resolve(&app, &app.org.engine, &many).await;
    let (unknown, unknown_body) = app
        .call(
            Method::PUT,
            &path("X"),
            &app.org.admin,
            Some(json!({"value": "v", "extra": 1})),
        )
        .await;

    assert_eq!(lower, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(lower_body["code"], "validation_failed");
    assert_eq!(lower_body["errors"][0]["field"], "name");
    assert!(!lower_body.to_string().contains(&value));
    assert_eq!(long, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(dash, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (empty, empty_body["errors"][0]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("value"))
    );
    assert_eq!(
        (big, big_body["errors"][0]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("value"))
    );
    assert_eq!(at_limit, StatusCode::CREATED, "64 KiB exactly is accepted");
    assert_eq!(bad_item, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(item_body["errors"][0]["field"], "names[1]");
    assert_eq!(
        (none, none_body["errors"][0]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("names"))
    );
    assert_eq!(too_many, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        (unknown, unknown_body["errors"][0]["field"].clone()),
        (StatusCode::UNPROCESSABLE_ENTITY, json!("extra"))
    );
}
both_backends!(bad_names_and_values_are_422_naming_the_field);

async fn the_thousand_and_first_secret_is_refused_but_replacing_still_works(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    // 999 rows arranged directly (the limit counts rows), the 1000th by the API.
    let rows: Vec<String> = (0..999)
        .map(|i| format!("('{}', 'S{i:04}', 'ct', 1, 'test', 0, 0)", app.org.id))
        .collect();
    sqlx::query(&format!(
        "INSERT INTO named_secrets (org_id, name, value_ct, key_version, created_by, created_at, updated_at) VALUES {}",
        rows.join(", ")
    ))
    .execute(&app.sql().await)
    .await
    .unwrap();

    let (thousandth, _) = put(&app, &app.org.admin, "LAST_ONE", "v").await;
    let (refused, refused_body) = put(&app, &app.org.admin, "ONE_TOO_MANY", "v").await;
    let (replaced, _) = put(&app, &app.org.admin, "LAST_ONE", "w").await;
    let (_, listed) = list(&app, &app.org.admin).await;
    let other = app.new_org("Other").await;
    let (elsewhere, _) = put(&app, &other.admin, "ONE_TOO_MANY", "v").await;

    assert_eq!(thousandth, StatusCode::CREATED);
    assert_eq!(refused, StatusCode::CONFLICT);
    assert_eq!(refused_body["code"], "quota_exceeded");
    assert_eq!(replaced, StatusCode::OK);
    assert_eq!(listed["items"].as_array().unwrap().len(), 1000);
    assert_eq!(elsewhere, StatusCode::CREATED, "the limit is per organization");
}
both_backends!(the_thousand_and_first_secret_is_refused_but_replacing_still_works);

async fn secrets_resolve_after_rotate_org_and_go_with_org_delete(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let keys = master_keys(&app.config);
    let (a, b) = (sentinel(), sentinel());
    put(&app, &app.org.admin, "ALPHA", &a).await;
    put(&app, &app.org.admin, "BETA", &b).await;
    let pool = app.sql().await;
    let cts = |pool: sqlx::AnyPool, org: credgate::ids::OrgId| async move {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT value_ct, key_version FROM named_secrets WHERE org_id = $1 ORDER BY name")
                .bind(org)
                .fetch_all(&pool)
                .await
                .unwrap();
        rows
    };
    let before = cts(pool.clone(), app.org.id.clone()).await;

    let rotated = credgate(&db, Some(&keys), &["keys", "rotate-org", "--org", &app.org.id]);
    let after = cts(pool.clone(), app.org.id.clone()).await;
    let (status, values) = resolve(&app, &app.org.engine, &["ALPHA", "BETA"]).await;
    let (put_after, _) = put(&app, &app.org.admin, "GAMMA", "g").await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM org_keys WHERE org_id = $1")
        .bind(&app.org.id)
        .fetch_all(&pool)
        .await
        .unwrap();
    let deleted = credgate(&db, Some(&keys), &["org", "delete", "--org", &app.org.id, "--yes"]);
    let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM named_secrets WHERE org_id = $1")
        .bind(&app.org.id)
        .fetch_one(&pool)
        .await
        .unwrap();

    assert!(rotated.status.success(), "{}", String::from_utf8_lossy(&rotated.stderr));
    assert!(String::from_utf8_lossy(&rotated.stdout)
        .contains("2 named secrets, 0 OAuth apps and 0 webhook endpoints re-encrypted"));
    assert!(before.iter().all(|(_, v)| *v == 1));
    assert!(after.iter().all(|(_, v)| *v == 2), "{after:?}");
    assert!(before.iter().zip(&after).all(|(x, y)| x.0 != y.0), "re-sealed");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(values["secrets"], json!({"ALPHA": a, "BETA": b}));
    assert_eq!(put_after, StatusCode::CREATED);
    assert_eq!(versions, [2], "the old data key is gone");
    assert!(deleted.status.success(), "{}", String::from_utf8_lossy(&deleted.stderr));
    assert_eq!(left, 0);
}
both_backends!(secrets_resolve_after_rotate_org_and_go_with_org_delete);

async fn a_value_copied_to_another_name_does_not_open(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let value = sentinel();
    put(&app, &app.org.admin, "REAL", &value).await;
    put(&app, &app.org.admin, "DECOY", "decoy").await;
    let pool = app.sql().await;
    sqlx::query("UPDATE named_secrets SET value_ct = (SELECT value_ct FROM named_secrets WHERE name = 'REAL') WHERE name = 'DECOY'")
            .execute(&pool).await.unwrap();

    let (status, body) = resolve(&app, &app.org.engine, &["DECOY"]).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(!body.to_string().contains(&value));
    assert!(!captured_logs().contains(&value));
}
both_backends!(a_value_copied_to_another_name_does_not_open);

#[test]
fn the_openapi_document_gives_the_names_pattern_everywhere_a_name_goes() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        let doc: Value = app
            .client
            .get(format!("{}/openapi.json", app.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let pattern = json!("^[A-Z][A-Z0-9_]{0,127}$");
        let item = &doc["paths"]["/integrations/secrets/{name}"];

        for method in ["put", "delete"] {
            assert_eq!(item[method]["parameters"][0]["schema"]["pattern"], pattern, "{method}");
        }
        let names = &doc["paths"]["/integrations/secrets/resolve"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"]["properties"]["names"];
        assert_eq!(names["items"]["pattern"], pattern);
        assert_eq!(
            (names["minItems"].clone(), names["maxItems"].clone()),
            (json!(1), json!(100))
        );
        assert!(doc["paths"]["/integrations/secrets"]["get"].is_object());
    });
}
