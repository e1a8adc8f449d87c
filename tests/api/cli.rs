//! The `credgate` binary: organizations, API keys, limits and key rotation.

use std::process::{Command, Output};
use std::time::Duration;

use credgate::crypto::MasterKeyring;
use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::json;

use crate::both_backends;
use crate::helpers::{master_keys, pg_body, sentinel, test_config, Backend, TestApp, TestDb};

/// Runs the `credgate` binary on `db` with `keys` (or none).
pub fn credgate(db: &TestDb, keys: Option<&str>, args: &[&str]) -> Output {
    credgate_at(&db.url, keys, args)
}

pub fn credgate_at(url: &str, keys: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credgate"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CREDGATE_DATABASE_URL", url)
        .env(
            "CREDGATE_PROVIDERS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
        )
        .env("CREDGATE_LISTEN", "127.0.0.1:0");
    if let Some(keys) = keys {
        cmd.env("CREDGATE_MASTER_KEYS", keys);
    }
    cmd.output().unwrap()
}

/// `credgate migrate` on `db` with `keys` (or the key file it makes).
pub fn migrated(db: &TestDb, keys: Option<&str>) {
    let out = credgate(db, keys, &["migrate"]);
    assert!(
        out.status.success(),
        "migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn stdout_line(out: &Output) -> String {
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "one line on stdout: {text:?}");
    text.trim().to_owned()
}

#[tokio::test]
async fn org_and_api_key_commands_print_their_result_alone_and_migrate_makes_a_private_key_file() {
    let db = TestDb::new(Backend::Sqlite).await;

    migrated(&db, None);
    let org = stdout_line(&credgate(&db, None, &["org", "create", "Acme"]));
    let token = stdout_line(&credgate(
        &db,
        None,
        &["api-key", "create", "--org", &org, "--role", "engine", "--label", "ci"],
    ));
    let key_file =
        std::path::Path::new(db.url.strip_prefix("sqlite://").unwrap()).with_file_name("credgate.master.key");

    assert!(uuid::Uuid::parse_str(&org).is_ok());
    assert!(token.starts_with("cgk_") && token.len() > 40);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored = std::fs::read(db.url.strip_prefix("sqlite://").unwrap()).unwrap();
    assert!(
        !stored.windows(token.len()).any(|w| w == token.as_bytes()),
        "only the hash is stored"
    );
}

#[tokio::test]
async fn a_failing_command_prints_one_line_on_stderr_and_exits_non_zero() {
    let db = TestDb::new(Backend::Sqlite).await;

    let bad_org = credgate(
        &db,
        None,
        &["org", "set-limit", "--org", "nope", "--provider", "sftp", "--max", "3"],
    );
    let unknown_org = credgate(
        &db,
        None,
        &["org", "delete", "--org", &uuid::Uuid::new_v4().to_string()],
    );

    for out in [bad_org, unknown_org] {
        assert!(!out.status.success());
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.starts_with("credgate: "), "{err:?}");
    }
}

async fn a_wrong_or_malformed_master_key_is_refused_at_startup(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let right = MasterKeyring::generate_key();
    migrated(&db, Some(right.expose_secret()));
    stdout_line(&credgate(&db, Some(right.expose_secret()), &["org", "create", "Acme"]));
    let wrong = MasterKeyring::generate_key();

    let wrong_key = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking({
            let url = db.url.clone();
            move || credgate_at(&url, Some(wrong.expose_secret()), &["serve"])
        }),
    )
    .await
    .expect("serve must refuse to start, not run")
    .unwrap();
    let malformed = credgate(&db, Some("abc"), &["org", "create", "X"]);

    assert!(!wrong_key.status.success());
    let err = String::from_utf8_lossy(&wrong_key.stderr);
    assert!(err.contains("CREDGATE_MASTER_KEYS"), "{err}");
    assert!(!err.contains(right.expose_secret()));
    assert!(!malformed.status.success());
    assert!(String::from_utf8_lossy(&malformed.stderr).contains("entry 1"));
}
both_backends!(a_wrong_or_malformed_master_key_is_refused_at_startup);

#[tokio::test]
async fn postgres_without_master_keys_refuses_to_start() {
    let db = TestDb::new(Backend::Postgres).await;

    let out = credgate(&db, None, &["migrate"]);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let tables: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pg_tables WHERE schemaname = current_schema()")
        .fetch_one(&pool)
        .await
        .unwrap();

    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("CREDGATE_MASTER_KEYS is required"));
    assert_eq!(tables, 0, "refused before migrating anything");
}

async fn every_credential_resolves_after_rotate_master_with_the_old_key_removed(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let old = master_keys(&app.config);
    let secrets: Vec<String> = (0..3).map(|_| sentinel()).collect();
    let mut ids = Vec::new();
    for s in &secrets {
        ids.push(app.create_pg(&app.org, "c", s).await);
    }
    let new = MasterKeyring::generate_key();
    let both = format!("{},{old}", new.expose_secret());

    let first = credgate(&db, Some(&both), &["keys", "rotate-master"]);
    let rerun = credgate(&db, Some(&both), &["keys", "rotate-master"]);
    let mut config = test_config(&db);
    config.master_keys = Some(new);
    let rotated = TestApp::spawn_with(config).await;

    assert!(first.status.success() && rerun.status.success());
    assert!(
        String::from_utf8_lossy(&rerun.stdout).contains("re-wrapped 0"),
        "a rerun has nothing left to do"
    );
    for (id, secret) in ids.iter().zip(&secrets) {
        let (status, body) = rotated
            .call(
                Method::POST,
                &format!("/integrations/credentials/{id}/resolve"),
                &app.org.engine,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["fields"]["password"], json!(secret));
    }
    let old_only = credgate(&db, Some(&old), &["org", "create", "X"]);
    assert!(
        !old_only.status.success(),
        "the old key alone no longer unwraps the data keys"
    );
}
both_backends!(every_credential_resolves_after_rotate_master_with_the_old_key_removed);

async fn rotate_org_reencrypts_under_a_new_key_while_serving(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let keys = master_keys(&app.config);
    let secret = sentinel();
    let id = app.create_pg(&app.org, "a", &secret).await;
    let before: String = sqlx::query_scalar("SELECT secret_ct FROM credentials WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    let out = credgate(&db, Some(&keys), &["keys", "rotate-org", "--org", &app.org.id]);
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{id}/resolve"),
            &app.org.engine,
            None,
        )
        .await;
    let created_after = app.create_pg(&app.org, "b", &sentinel()).await;
    let versions: Vec<i64> = sqlx::query_scalar("SELECT version FROM org_keys WHERE org_id = $1")
        .bind(&app.org.id)
        .fetch_all(&app.sql().await)
        .await
        .unwrap();
    let after: String = sqlx::query_scalar("SELECT secret_ct FROM credentials WHERE id = $1")
        .bind(&id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    let new_version: i64 = sqlx::query_scalar("SELECT key_version FROM credentials WHERE id = $1")
        .bind(&created_after)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();

    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["fields"]["password"], json!(secret));
    assert_ne!(before, after);
    assert_eq!(versions, [2], "the old data key is gone");
    assert_eq!(new_version, 2);
}
both_backends!(rotate_org_reencrypts_under_a_new_key_while_serving);

async fn rotate_org_moves_every_credential_it_can_and_fails_naming_what_it_left_under_the_old_key(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let keys = master_keys(&app.config);
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(app.create_pg(&app.org, &format!("c{n}"), &sentinel()).await);
    }
    // A damaged row: another credential's ciphertext, which names that
    // credential and so cannot be opened as this one.
    sqlx::query("UPDATE credentials SET secret_ct = (SELECT secret_ct FROM credentials WHERE id = $1) WHERE id = $2")
        .bind(&ids[0])
        .bind(&ids[2])
        .execute(&app.sql().await)
        .await
        .unwrap();

    let out = credgate(&db, Some(&keys), &["keys", "rotate-org", "--org", &app.org.id]);
    let versions: Vec<(String, i64)> = sqlx::query_as("SELECT id, key_version FROM credentials WHERE org_id = $1")
        .bind(&app.org.id)
        .fetch_all(&app.sql().await)
        .await
        .unwrap();
    let org_keys: Vec<i64> = sqlx::query_scalar("SELECT version FROM org_keys WHERE org_id = $1 ORDER BY version")
        .bind(&app.org.id)
        .fetch_all(&app.sql().await)
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();

    assert!(
        !out.status.success(),
        "a rotation that left a credential behind is a failure"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains(
            "1 credentials, named secrets, OAuth apps or webhook endpoints are still sealed under an older data key"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("could not be decrypted: credential {}", ids[2])),
        "{stderr}"
    );
    for (id, version) in &versions {
        let expected = if id == &ids[2] { 1 } else { 2 };
        assert_eq!(*version, expected, "{id}: only the damaged row stays under the old key");
    }
    assert_eq!(org_keys, [1, 2], "the old key is kept while a row needs it");
    for id in ids.iter().filter(|id| *id != &ids[2]) {
        let (status, _) = app
            .call(
                Method::POST,
                &format!("/integrations/credentials/{id}/resolve"),
                &app.org.engine,
                None,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}
both_backends!(rotate_org_moves_every_credential_it_can_and_fails_naming_what_it_left_under_the_old_key);

async fn org_delete_shreds_credentials_and_the_data_key(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let keys = master_keys(&app.config);
    let id = app.create_pg(&app.org, "a", &sentinel()).await;

    let asked = credgate(&db, None, &["org", "delete", "--org", &app.org.id]);
    let pool = app.sql().await;
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE org_id = $1")
        .bind(app.org.id.clone())
        .fetch_one(&pool)
        .await
        .unwrap();
    let out = credgate(&db, None, &["org", "delete", "--org", &app.org.id, "--yes"]);
    let count = |sql: &'static str| {
        let (pool, org) = (pool.clone(), app.org.id.clone());
        async move {
            let n: i64 = sqlx::query_scalar(sql).bind(org).fetch_one(&pool).await.unwrap();
            n
        }
    };

    let said = stdout_line(&asked);
    assert!(
        said.starts_with(&format!(
            "would delete organization {} (Acme): 1 credentials, 3 API keys",
            app.org.id
        )) && said.contains("run again with --yes"),
        "{said}"
    );
    assert_eq!(kept, 1, "without --yes nothing is deleted");
    assert!(
        stdout_line(&out).contains("deleted: its data keys destroyed"),
        "no master key needed"
    );
    assert_eq!(count("SELECT COUNT(*) FROM credentials WHERE org_id = $1").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM org_keys WHERE org_id = $1").await, 0);
    assert_eq!(count("SELECT COUNT(*) FROM api_keys WHERE org_id = $1").await, 0);
    let (status, _) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the credential is gone at once");
    let mut config = test_config(&db);
    config.master_keys = Some(secrecy::SecretString::from(keys.clone()));
    let fresh = TestApp::spawn_with(config).await;
    let (status, _) = fresh
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}"),
            &app.org.admin,
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "its API keys are gone too (within the key cache's 5 s elsewhere)"
    );
}
both_backends!(org_delete_shreds_credentials_and_the_data_key);

async fn set_limit_overrides_the_default_for_one_provider(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let keys = master_keys(&app.config);

    let out = credgate(
        &db,
        Some(&keys),
        &[
            "org",
            "set-limit",
            "--org",
            &app.org.id,
            "--provider",
            "postgresql",
            "--max",
            "1",
        ],
    );
    app.create_pg(&app.org, "a", &sentinel()).await;
    let (status, _) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &app.org.admin,
            Some(pg_body("b", "x")),
        )
        .await;

    assert!(out.status.success());
    assert_eq!(status, StatusCode::CONFLICT);
}
both_backends!(set_limit_overrides_the_default_for_one_provider);

fn serve_then_sigterm(db: &TestDb, keys: &str, extra: &[&str]) -> (std::process::ExitStatus, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credgate"));
    cmd.arg("serve")
        .args(extra)
        .env("CREDGATE_DATABASE_URL", &db.url)
        .env("CREDGATE_MASTER_KEYS", keys)
        .env(
            "CREDGATE_PROVIDERS_DIR",
            concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
        )
        .env("CREDGATE_LISTEN", "127.0.0.1:0")
        .stderr(std::process::Stdio::piped());
    if extra.contains(&"--worker-only") {
        cmd.env("CREDGATE_LOG_FORMAT", "json");
    }
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
            return (status, err);
        }
        assert!(std::time::Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn serve_and_the_worker_stop_cleanly_on_sigterm() {
    let db = TestDb::new(Backend::Sqlite).await;
    let keys = MasterKeyring::generate_key();

    let (status, err) = serve_then_sigterm(&db, keys.expose_secret(), &[]);
    let (worker_status, worker_err) = serve_then_sigterm(&db, keys.expose_secret(), &["--worker-only"]);

    assert!(status.success(), "{err}");
    assert!(
        err.contains("credgate is serving") && err.contains("shutting down"),
        "{err}"
    );
    assert!(err.contains("token refresh worker stopped"), "{err}");
    assert!(worker_status.success(), "{worker_err}");
    assert!(
        worker_err.contains("credgate is serving") && worker_err.contains("\"api\":false"),
        "--worker-only runs no API, only its health routes: {worker_err}"
    );
    assert!(worker_err.contains("token refresh worker stopped"));
    for line in worker_err.lines().filter(|l| !l.is_empty()) {
        let parsed: serde_json::Value = serde_json::from_str(line).expect("CREDGATE_LOG_FORMAT=json gives JSON lines");
        assert!(parsed["level"].is_string() && parsed["message"].is_string(), "{line}");
    }
}

#[tokio::test]
async fn a_malformed_provider_file_or_override_stops_startup_naming_file_and_field() {
    let db = TestDb::new(Backend::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/providers/google.toml"),
        dir.path().join("google.toml"),
    )
    .unwrap();
    std::fs::write(dir.path().join("broken.toml"), "display_name = \"B\"\n[[auth_types]]\ntype = \"api_key\"\nfields = [{ name = \"x\", label = \"X\", type = \"colour\" }]\n").unwrap();
    let run = |extra: &[(&str, &str)], dir: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credgate"));
        cmd.args(["serve"])
            .env("CREDGATE_DATABASE_URL", &db.url)
            .env("CREDGATE_LISTEN", "127.0.0.1:0")
            .env("CREDGATE_PROVIDERS_DIR", dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while child.try_wait().unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "serve started despite a bad provider file"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child.wait_with_output().unwrap()
    };

    let broken = run(&[], dir.path());
    std::fs::remove_file(dir.path().join("broken.toml")).unwrap();
    let bad_override = run(&[("CREDGATE_PROVIDER_GOOGLE_TOKEN_URL", "not a url")], dir.path());
    let unknown_override = run(&[("CREDGATE_PROVIDER_GOOGLE_COLOUR", "red")], dir.path());

    for (out, field) in [
        (&broken, "auth_types[0].fields[0].type"),
        (&bad_override, "CREDGATE_PROVIDER_GOOGLE_TOKEN_URL"),
        (&unknown_override, "CREDGATE_PROVIDER_GOOGLE_COLOUR"),
    ] {
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(".toml") && err.contains(field), "{err}");
    }
}

async fn api_keys_are_listed_without_tokens_expire_and_are_revoked_within_five_seconds(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let keys = master_keys(&app.config);
    let org = app.org.id.clone();
    let token = stdout_line(&credgate(
        &db,
        Some(&keys),
        &[
            "api-key", "create", "--org", &org, "--role", "admin", "--user", "ops-1", "--label", "ci",
        ],
    ));
    let short = stdout_line(&credgate(
        &db,
        Some(&keys),
        &[
            "api-key",
            "create",
            "--org",
            &org,
            "--role",
            "engine",
            "--expires-in",
            "1h",
        ],
    ));
    let bad = credgate(
        &db,
        Some(&keys),
        &[
            "api-key",
            "create",
            "--org",
            &org,
            "--role",
            "admin",
            "--expires-in",
            "soon",
        ],
    );
    let used = app.call(Method::GET, "/integrations/credentials", &token, None).await.0;
    tokio::time::sleep(Duration::from_millis(300)).await; // last use is written in the background

    let listed = credgate(&db, Some(&keys), &["api-key", "list", "--org", &org]);
    let listing = String::from_utf8(listed.stdout.clone()).unwrap();
    let line = listing
        .lines()
        .find(|l| l.contains("\tci\t"))
        .unwrap_or_default()
        .to_owned();
    let key_id = line.split('\t').next().unwrap_or_default().to_owned();
    let revoked = credgate(&db, Some(&keys), &["api-key", "revoke", "--id", &key_id]);
    let again = credgate(&db, Some(&keys), &["api-key", "revoke", "--id", &key_id]);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let after_revoke = app.call(Method::GET, "/integrations/credentials", &token, None).await.0;
    let before_expiry = app.call(Method::GET, "/integrations/credentials", &short, None).await.0;
    app.clock.advance(3601);
    tokio::time::sleep(Duration::from_millis(5200)).await;
    let after_expiry = app.call(Method::GET, "/integrations/credentials", &short, None).await.0;

    assert_eq!(used, StatusCode::OK);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("--expires-in"));
    assert!(listed.status.success());
    assert_eq!(
        listing.lines().count(),
        5,
        "three test keys and two new ones: {listing}"
    );
    assert!(
        !listing.contains(&token) && !listing.contains(&short),
        "never the token"
    );
    let fields: Vec<&str> = line.split('\t').collect();
    assert_eq!(&fields[1..4], ["admin", "ops-1", "ci"], "{line}");
    assert_ne!(fields[5], "-", "last use recorded: {line}");
    assert_eq!(fields[6], "-", "no expiry: {line}");
    assert!(
        listing.lines().any(|l| l.contains("\tengine\t") && !l.ends_with("\t-")),
        "the 1h key shows its expiry: {listing}"
    );
    assert!(revoked.status.success(), "{}", String::from_utf8_lossy(&revoked.stderr));
    assert!(!again.status.success(), "revoking twice is an error");
    assert_eq!(
        after_revoke,
        StatusCode::UNAUTHORIZED,
        "revoked keys stop within the 5 s cache"
    );
    assert_eq!(before_expiry, StatusCode::OK);
    assert_eq!(after_expiry, StatusCode::UNAUTHORIZED, "expired keys stop");
}
both_backends!(api_keys_are_listed_without_tokens_expire_and_are_revoked_within_five_seconds);
