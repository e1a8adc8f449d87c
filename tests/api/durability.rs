//! What a store promises to keep: the SQLite database's own key file is
//! never replaced by a new one, and SQLite writes are durable through a
//! power loss (`synchronous = FULL`).

use crate::cli::credgate;
use crate::helpers::{Backend, TestApp, TestDb};

#[tokio::test]
async fn a_missing_key_file_beside_a_database_with_organizations_is_never_replaced() {
    let db = TestDb::new(Backend::Sqlite).await;
    crate::cli::migrated(&db, None);
    let created = credgate(&db, None, &["org", "create", "Acme"]);
    let key_file =
        std::path::Path::new(db.url.strip_prefix("sqlite://").unwrap()).with_file_name("credgate.master.key");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    std::fs::remove_file(&key_file).unwrap();

    let again = credgate(&db, None, &["migrate"]);
    let stderr = String::from_utf8_lossy(&again.stderr).into_owned();

    assert!(!again.status.success());
    assert!(!key_file.exists(), "no new key file was written: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("credgate.master.key") && stderr.contains("missing"),
        "{stderr}"
    );
}

#[test]
fn sqlite_commits_are_durable_through_a_power_loss() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;

        let modes = futures::future::join_all((0..8).map(|_| app.state.store.commit_durability())).await;

        assert!(
            modes.iter().all(|m| m.as_deref().ok() == Some("2")),
            "every connection is FULL (2): {modes:?}"
        );
    });
}

#[test]
fn postgres_without_synchronous_commit_is_warned_about_at_start() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Postgres).await;
        let name = db.url.rsplit('/').next().unwrap().to_owned();
        let admin = sqlx::PgPool::connect(crate::helpers::PG_ADMIN_URL).await.unwrap();
        let config = crate::helpers::test_config(&db);
        let quiet = TestApp::spawn_with(config.clone()).await;
        let quiet_mode = quiet.state.store.commit_durability().await.unwrap();
        let before = crate::helpers::captured_logs();
        sqlx::query(&format!("ALTER DATABASE {name} SET synchronous_commit = off"))
            .execute(&admin)
            .await
            .unwrap();

        let app = TestApp::spawn_with(config).await;
        let after = crate::helpers::captured_logs();

        assert_eq!(quiet_mode, "on");
        assert_eq!(app.state.store.commit_durability().await.unwrap(), "off");
        assert!(!before.contains("runs with synchronous_commit = off"));
        assert_eq!(
            after.matches("runs with synchronous_commit = off").count(),
            1,
            "warned once"
        );
    });
}

async fn a_replica_left_behind_by_a_key_rotation_is_not_ready(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let behind = TestApp::spawn(&db).await;
    let ready = |app: &TestApp| {
        let url = format!("{}/readyz", app.base);
        async move {
            let res = reqwest::get(url).await.unwrap();
            (res.status(), res.json::<serde_json::Value>().await.unwrap())
        }
    };
    let (before, before_body) = ready(&behind).await;
    let old = crate::helpers::master_keys(&behind.config);
    let new = credgate::crypto::MasterKeyring::generate_key();
    let mut config = behind.config.clone();
    config.master_keys = Some(secrecy::SecretString::from(format!(
        "{},{old}",
        secrecy::ExposeSecret::expose_secret(&new)
    )));
    // The replica ahead makes its own organization under the new key.
    let ahead = TestApp::spawn_with(config).await;

    let rewrapped = ahead.state.vault.rotate_master().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await; // past the readiness cache
    let (after, body) = ready(&behind).await;
    let (current, _) = ready(&ahead).await;
    let kid: String = sqlx::query_scalar("SELECT DISTINCT master_kid FROM org_keys")
        .fetch_one(&behind.sql().await)
        .await
        .unwrap();

    assert_eq!(before, reqwest::StatusCode::OK, "{before_body}");
    assert!(rewrapped >= 1);
    assert_eq!(after, reqwest::StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["missing_master_keys"], serde_json::json!([kid]));
    assert!(body["status"].as_str().unwrap().contains("CREDGATE_MASTER_KEYS"));
    assert_eq!(current, reqwest::StatusCode::OK);
}
crate::both_backends!(a_replica_left_behind_by_a_key_rotation_is_not_ready);
