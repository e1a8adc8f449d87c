//! The credentials API: create, read, list, patch, delete, resolve, audit.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{captured_logs, pg_body, sentinel, TestApp, TestDb};

async fn created_credentials_show_no_secret_and_resolve_shows_it(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let secret = sentinel();

    let (status, created) = app
        .oneshot(
            Method::POST,
            "/integrations/credentials",
            &app.org.member,
            Some(pg_body("sales db", &secret)),
        )
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    let (_, got) = app
        .oneshot(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    let (_, listed) = app
        .oneshot(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;
    let (resolve_status, resolved) = app
        .oneshot(
            Method::POST,
            &format!("/integrations/credentials/{id}/resolve"),
            &app.org.engine,
            None,
        )
        .await;

    assert_eq!(status, StatusCode::CREATED);
    for body in [&created, &got, &listed] {
        assert!(!body.to_string().contains(&secret), "secret leaked in {body}");
    }
    assert_eq!(got["secret_fields"], json!(["password"]));
    assert_eq!(got["fields"]["port"], json!(5432), "defaults are applied");
    assert_eq!(got["created_by"], json!("user:u-1"));
    assert_eq!(listed["total"], json!(1));
    assert_eq!(listed["items"][0]["id"], json!(id));
    assert_eq!(resolve_status, StatusCode::OK);
    assert_eq!(resolved["fields"]["password"], json!(secret));
    assert_eq!(resolved["fields"]["host"], json!("db.example.com"));
    assert_eq!(resolved["provider"], json!("postgresql"));
}
both_backends!(created_credentials_show_no_secret_and_resolve_shows_it);

async fn resolve_is_audited_as_a_use_and_sets_last_used_at(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let id = app.create_pg(&app.org, "a", &sentinel()).await;

    app.oneshot(
        Method::POST,
        &format!("/integrations/credentials/{id}/resolve"),
        &app.org.engine,
        None,
    )
    .await;
    let (_, got) = app
        .oneshot(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    let (status, events) = app
        .oneshot(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;

    assert!(got["last_used_at"].is_string());
    assert_eq!(status, StatusCode::OK);
    let actions: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["credential.resolve", "credential.create"], "newest first");
}
both_backends!(resolve_is_audited_as_a_use_and_sets_last_used_at);

async fn last_used_at_is_kept_to_the_minute_and_every_use_is_audited(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let id = app.create_pg(&app.org, "a", &sentinel()).await;
    let every = credgate::store::LAST_USED_EVERY_SECS;
    let resolve_then_last_used = || {
        let (app, id) = (&app, &id);
        async move {
            let (status, _) = app
                .oneshot(
                    Method::POST,
                    &format!("/integrations/credentials/{id}/resolve"),
                    &app.org.engine,
                    None,
                )
                .await;
            assert_eq!(status, StatusCode::OK);
            let (_, got) = app
                .oneshot(
                    Method::GET,
                    &format!("/integrations/credentials/{id}"),
                    &app.org.admin,
                    None,
                )
                .await;
            chrono::DateTime::parse_from_rfc3339(got["last_used_at"].as_str().unwrap())
                .unwrap()
                .timestamp()
        }
    };

    // The test clock follows the system clock between `advance` calls, so
    // the steps leave `slack` seconds for the wall time the test takes:
    // a second boundary between two resolves must not move the result.
    let slack = 20;
    let first = resolve_then_last_used().await;
    app.clock.advance(every - slack);
    let within = resolve_then_last_used().await;
    app.clock.advance(slack);
    let after = resolve_then_last_used().await;
    let (_, usage) = app
        .oneshot(
            Method::GET,
            &format!("/integrations/credentials/{id}/usage"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(within, first, "not rewritten within the minute");
    assert!(
        (first + every..first + every + slack).contains(&after),
        "rewritten once it is a minute old: {first} then {after}"
    );
    assert_eq!(usage["uses_total"], 3, "every use is in the audit log");
}
both_backends!(last_used_at_is_kept_to_the_minute_and_every_use_is_audited);

async fn patch_replaces_all_fields_and_keeps_nothing_old(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let old = sentinel();
    let new = sentinel();
    let id = app.create_pg(&app.org, "a", &old).await;
    let path = format!("/integrations/credentials/{id}");

    let (missing, problem) = app
        .oneshot(
            Method::PATCH,
            &path,
            &app.org.admin,
            Some(json!({"fields": {"host": "h2.example.com"}})),
        )
        .await;
    let mut fields = pg_body("x", &new)["fields"].clone();
    fields["host"] = json!("h2.example.com");
    let (status, patched) = app
        .oneshot(
            Method::PATCH,
            &path,
            &app.org.admin,
            Some(json!({"name": "renamed", "fields": fields})),
        )
        .await;
    let (_, resolved) = app
        .oneshot(Method::POST, &format!("{path}/resolve"), &app.org.engine, None)
        .await;

    assert_eq!(missing, StatusCode::UNPROCESSABLE_ENTITY, "secrets must be re-entered");
    assert!(problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["field"] == "fields.password"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(patched["name"], json!("renamed"));
    assert_eq!(patched["fields"]["host"], json!("h2.example.com"));
    assert!(!patched.to_string().contains(&new));
    assert_eq!(resolved["fields"]["password"], json!(new));
}
both_backends!(patch_replaces_all_fields_and_keeps_nothing_old);

async fn listing_filters_searches_and_pages(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    for i in 0..7 {
        app.create_pg(&app.org, &format!("Sales_{i}"), &sentinel()).await;
    }
    let tg = json!({"name": "bot 100%", "provider": "telegram", "auth_type": "api_key",
                        "fields": {"bot_token": "123456:ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghi"}});
    let (tg_status, _) = app
        .oneshot(Method::POST, "/integrations/credentials", &app.org.admin, Some(tg))
        .await;

    let get = |q: &'static str| app.oneshot(Method::GET, q, &app.org.admin, None);
    let (_, page2) = get("/integrations/credentials?provider=postgresql&per_page=3&page=3").await;
    let (_, search) = get("/integrations/credentials?q=sales_3").await;
    let (_, percent) = get("/integrations/credentials?q=100%25").await;
    let (_, underscore) = get("/integrations/credentials?q=s_l").await;
    // Shorter than a trigram: no index entry can serve it, it must still match.
    let (_, short) = get("/integrations/credentials?q=3").await;
    let (_, expired) = get("/integrations/credentials?status=expired").await;
    let (too_many, problem) = get("/integrations/credentials?per_page=51").await;
    let (bad_status, _) = get("/integrations/credentials?status=weird").await;

    assert_eq!(tg_status, StatusCode::CREATED);
    assert_eq!(page2["total"], json!(7));
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert_eq!(search["total"], json!(1));
    assert_eq!(search["items"][0]["name"], json!("Sales_3"));
    assert_eq!(percent["total"], json!(1), "% is matched literally");
    assert_eq!(underscore["total"], json!(0), "_ is matched literally");
    assert_eq!(short["total"], json!(1));
    assert_eq!(short["items"][0]["name"], json!("Sales_3"));
    assert_eq!(expired["total"], json!(0));
    assert_eq!(too_many, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["errors"][0]["field"], json!("per_page"));
    assert_eq!(bad_status, StatusCode::UNPROCESSABLE_ENTITY);
}
both_backends!(listing_filters_searches_and_pages);

/// On Postgres, `q=` is served by a trigram index on the lower-cased name
/// (migration 0015), not by reading every credential: the migration made it
/// (pg_trgm is available here, as in any Postgres with its contrib package).
#[test]
fn postgres_searches_names_by_a_trigram_index() {
    crate::helpers::run_test(async {
        use sqlx::Row;
        let db = TestDb::new(crate::helpers::Backend::Postgres).await;
        let app = TestApp::spawn(&db).await;

        let index = sqlx::query(
            "SELECT i.indexdef, x.indisvalid FROM pg_indexes i \
             JOIN pg_class c ON c.relname = i.indexname JOIN pg_index x ON x.indexrelid = c.oid \
             WHERE i.tablename = 'credentials' AND i.indexname = 'credentials_name_trigrams'",
        )
        .fetch_optional(&app.sql().await)
        .await
        .unwrap()
        .expect("the trigram index exists");
        let definition: String = index.try_get(0).unwrap();
        let valid: bool = index.try_get(1).unwrap();

        assert!(definition.contains("gin (lower(name) gin_trgm_ops)"), "{definition}");
        assert!(valid);
    })
}

async fn delete_and_batch_delete_report_what_they_removed(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let a = app.create_pg(&app.org, "a", &sentinel()).await;
    let b = app.create_pg(&app.org, "b", &sentinel()).await;
    let c = app.create_pg(&app.org, "c", &sentinel()).await;
    let unknown = uuid::Uuid::new_v4().to_string();

    let (deleted, _) = app
        .oneshot(
            Method::DELETE,
            &format!("/integrations/credentials/{a}"),
            &app.org.admin,
            None,
        )
        .await;
    let (again, _) = app
        .oneshot(
            Method::DELETE,
            &format!("/integrations/credentials/{a}"),
            &app.org.admin,
            None,
        )
        .await;
    let (status, batch) = app
        .oneshot(
            Method::POST,
            "/integrations/credentials/batch-delete",
            &app.org.admin,
            Some(json!({"ids": [b, unknown, "not-a-uuid", c]})),
        )
        .await;
    let (_, listed) = app
        .oneshot(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;
    let (_, events) = app
        .oneshot(
            Method::GET,
            &format!("/integrations/credentials/{a}/audit"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(deleted, StatusCode::NO_CONTENT);
    assert_eq!(again, StatusCode::NOT_FOUND);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(batch["deleted"], json!([b, c]));
    assert_eq!(batch["not_found"], json!(["not-a-uuid", unknown]));
    assert_eq!(listed["total"], json!(0));
    assert_eq!(
        events[0]["action"],
        json!("credential.delete"),
        "the audit trail outlives the credential"
    );
}
both_backends!(delete_and_batch_delete_report_what_they_removed);

async fn invalid_fields_are_each_named_and_nothing_is_stored(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let secret = sentinel();
    let body = json!({"name": "", "provider": "sftp", "auth_type": "key_file",
            "fields": {"host": "bad host", "port": 70000, "username": "u", "private_key": secret, "colour": "red"}});

    let (status, problem) = app
        .oneshot(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
        .await;
    let (unknown_provider, p2) = app
        .oneshot(
            Method::POST,
            "/integrations/credentials",
            &app.org.admin,
            Some(json!({"name": "x", "provider": "nope", "auth_type": "api_key"})),
        )
        .await;
    let (oauth, p3) = app
        .oneshot(
            Method::POST,
            "/integrations/credentials",
            &app.org.admin,
            Some(json!({"name": "x", "provider": "google", "auth_type": "oauth2"})),
        )
        .await;
    let (_, listed) = app
        .oneshot(Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;

    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(problem["code"], json!("validation_failed"));
    let mut fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            "fields.colour",
            "fields.host",
            "fields.port",
            "fields.private_key",
            "name"
        ]
    );
    assert!(!problem.to_string().contains(&secret));
    assert_eq!(unknown_provider, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p2["errors"][0]["field"], json!("provider"));
    assert_eq!(oauth, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(p3["errors"][0]["field"], json!("auth_type"));
    assert_eq!(listed["total"], json!(0));
}
both_backends!(invalid_fields_are_each_named_and_nothing_is_stored);

async fn the_provider_catalog_lists_every_provider_with_its_fields(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;

    let (status, catalog) = app
        .oneshot(Method::GET, "/integrations/providers", &app.org.engine, None)
        .await;

    assert_eq!(status, StatusCode::OK);
    let ids: Vec<&str> = catalog
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    let mut files: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/providers"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(ids, files, "every provider file, ordered by id");
    for contract in [
        "anthropic",
        "google",
        "openai",
        "openai_compatible",
        "postgresql",
        "sftp",
        "sharepoint",
        "telegram",
    ] {
        assert!(ids.contains(&contract), "{contract}");
    }
    let sftp = catalog.as_array().unwrap().iter().find(|p| p["id"] == "sftp").unwrap();
    assert_eq!(sftp["auth_types"], json!(["user_password", "key_file"]));
    let password = sftp["fields"]["user_password"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "password")
        .unwrap();
    assert_eq!(password["secret"], json!(true));
    assert_eq!(password["required"], json!(true));
    assert_eq!(password["label"], json!("Password"));
}
both_backends!(the_provider_catalog_lists_every_provider_with_its_fields);

async fn a_malformed_json_column_is_an_error_that_is_logged_never_an_empty_value(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let secret = sentinel();
    let id = app.create_pg(&app.org, "db", &secret).await;
    let other = app.create_pg(&app.org, "fine", &sentinel()).await;
    sqlx::query("UPDATE credentials SET fields = '{\"host\": ' WHERE id = $1")
        .bind(&id)
        .execute(&app.sql().await)
        .await
        .unwrap();

    let (got, problem) = app
        .oneshot(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    let (resolved, _) = app
        .oneshot(
            Method::POST,
            &format!("/integrations/credentials/{id}/resolve"),
            &app.org.engine,
            None,
        )
        .await;
    let (fine, _) = app
        .oneshot(
            Method::GET,
            &format!("/integrations/credentials/{other}"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(got, StatusCode::INTERNAL_SERVER_ERROR, "{problem}");
    assert_eq!(problem["code"], "internal");
    assert!(!problem.to_string().contains(&secret));
    assert_eq!(
        resolved,
        StatusCode::INTERNAL_SERVER_ERROR,
        "never resolved with its fields missing"
    );
    assert_eq!(fine, StatusCode::OK, "other credentials are untouched");
    let logged = captured_logs()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .any(|l| {
            l["level"] == "ERROR"
                && l["fields"]["message"] == "a stored credential column is malformed"
                && l["fields"]["column"] == "fields"
        });
    assert!(logged, "the malformed column is logged as an error");
}
both_backends!(a_malformed_json_column_is_an_error_that_is_logged_never_an_empty_value);
