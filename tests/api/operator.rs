//! What an operator runs: commands that create nothing they should not and
//! need no keys they should not, a rolling upgrade, `repair`, key rotation
//! on SQLite, `--worker-only`'s endpoints, request logs, and the pool.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use credgate::crypto::MasterKeyring;
use reqwest::StatusCode;
use secrecy::ExposeSecret;

use crate::both_backends;
use crate::cli::{credgate, credgate_at, migrated, stdout_line};
use crate::helpers::{master_keys, Backend, TestApp, TestDb};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn commands_other_than_serve_and_migrate_create_no_database_or_key_file() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/credgate.db", dir.path().display());
    let org = credgate::ids::OrgId::generate();

    let listed = credgate_at(&url, None, &["api-key", "list", "--org", org.as_str()]);
    let orgs = credgate_at(&url, None, &["org", "list"]);
    let created = credgate_at(&url, None, &["org", "create", "Acme"]);
    let files: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();

    for out in [&listed, &orgs, &created] {
        assert!(!out.status.success());
        let err = stderr(out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("there is no database at") && err.contains("credgate migrate"),
            "{err}"
        );
    }
    assert!(files.is_empty(), "nothing was created: {files:?}");

    migrated(&TestDb::at(&url), None);
    let made: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(made.contains(&"credgate.db".to_owned()) && made.contains(&"credgate.master.key".to_owned()));
}

/// Commands on rows that are not sealed, run with neither master keys nor
/// a providers directory; the organization and a key made before with them.
async fn commands_on_unsealed_rows_need_no_master_keys(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let org = app.org.id.to_string();
    let bare = |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_credgate"));
        cmd.args(args)
            .env_clear()
            .env("CREDGATE_DATABASE_URL", &db.url)
            .current_dir(std::env::temp_dir());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    let key_file = std::path::Path::new(db.url.strip_prefix("sqlite://").unwrap_or("/nonexistent"))
        .with_file_name("credgate.master.key");
    let _ = std::fs::remove_file(&key_file);

    let orgs = bare(&["org", "list"]);
    let set = bare(&["org", "set-limit", "--org", &org, "--provider", "sftp", "--max", "3"]);
    let limits = bare(&["org", "limits", "--org", &org]);
    let keys = bare(&["api-key", "list", "--org", &org]);
    let key_id = keys.lines().next().unwrap().split('\t').next().unwrap().to_owned();
    let revoked = bare(&["api-key", "revoke", "--id", &key_id]);
    let replayed = bare(&["events", "replay", "--since", "1h", "--org", &org]);
    let removed = bare(&["user", "remove", "--org", &org, "--user", "u-9", "--transfer-to", "org"]);

    assert!(orgs.contains(&format!("{org}\tAcme\t")), "{orgs}");
    assert_eq!(set.trim(), format!("organization {org}: at most 3 sftp credentials"));
    assert_eq!(limits, "sftp\t3\n");
    assert_eq!(keys.lines().count(), 3, "{keys}");
    assert!(revoked.contains(&format!("API key {key_id} revoked")), "{revoked}");
    assert!(replayed.contains("notifications queued"), "{replayed}");
    assert!(removed.starts_with("user u-9: 0 credentials transferred"), "{removed}");
    assert!(!key_file.exists(), "no key file was made");
}
both_backends!(commands_on_unsealed_rows_need_no_master_keys);

async fn limits_are_listed_cleared_and_refusals_give_the_count_and_the_limit(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let org = app.org.id.to_string();
    for i in 0..4 {
        app.create_pg(&app.org, &format!("db{i}"), "pw").await;
    }

    let set = credgate(
        &db,
        None,
        &[
            "org",
            "set-limit",
            "--org",
            &org,
            "--provider",
            "postgresql",
            "--max",
            "2",
        ],
    );
    let (status, refused) = app
        .as_(&app.org.admin)
        .post("/integrations/credentials", crate::helpers::pg_body("one more", "pw"))
        .await;
    let zero = credgate(
        &db,
        None,
        &["org", "set-limit", "--org", &org, "--provider", "sftp", "--max", "0"],
    );
    let listed = credgate(&db, None, &["org", "limits", "--org", &org]);
    let cleared = credgate(
        &db,
        None,
        &["org", "set-limit", "--org", &org, "--provider", "postgresql", "--clear"],
    );
    let after = credgate(&db, None, &["org", "limits", "--org", &org]);
    let neither = credgate(&db, None, &["org", "set-limit", "--org", &org, "--provider", "sftp"]);

    assert_eq!(
        stdout_line(&set),
        format!("organization {org}: at most 2 postgresql credentials")
    );
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        refused["detail"],
        "the organization has 4 credentials of provider postgresql, and its limit is 2"
    );
    assert_eq!(
        stdout_line(&zero),
        format!("organization {org}: no new sftp credentials may be created (limit 0)")
    );
    assert_eq!(String::from_utf8_lossy(&listed.stdout), "postgresql\t2\nsftp\t0\n");
    assert!(stdout_line(&cleared).contains("the limit for postgresql is the default again (50)"));
    assert_eq!(String::from_utf8_lossy(&after.stdout), "sftp\t0\n");
    assert!(
        !neither.status.success() && stderr(&neither).contains("--max"),
        "{}",
        stderr(&neither)
    );
}
both_backends!(limits_are_listed_cleared_and_refusals_give_the_count_and_the_limit);

#[tokio::test]
async fn events_replay_warns_when_nothing_here_would_deliver() {
    let db = TestDb::new(Backend::Sqlite).await;
    let _app = TestApp::spawn(&db).await;

    let out = credgate(&db, None, &["events", "replay", "--since", "1d"]);

    assert!(stdout_line(&out).contains("notifications queued for delivery again"));
    assert!(
        stderr(&out).contains("CREDGATE_WEBHOOK_URL is not set"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test]
async fn keys_generate_prints_the_id_and_keys_list_names_each_key_and_what_is_missing() {
    let db = TestDb::new(Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let old = master_keys(&app.config);
    let old_kid = MasterKeyring::kid(&secrecy::SecretString::from(old.clone())).unwrap();

    let generated = credgate(&db, None, &["keys", "generate"]);
    let new = stdout_line(&generated);
    let new_kid = MasterKeyring::kid(&secrecy::SecretString::from(new.clone())).unwrap();
    let both = credgate(&db, Some(&format!("{new},{old}")), &["keys", "list"]);
    let only_new = credgate(&db, Some(&new), &["keys", "list"]);

    assert_eq!(stderr(&generated).trim(), format!("key id {new_kid}"));
    assert_eq!(
        String::from_utf8_lossy(&both.stdout),
        format!("{new_kid}\tprimary\t0 data keys\n{old_kid}\tsecondary\t1 data keys\n")
    );
    assert_eq!(
        String::from_utf8_lossy(&only_new.stdout),
        format!("{new_kid}\tprimary\t0 data keys\n{old_kid}\tmissing\t1 data keys\n")
    );
    let printed = format!("{}{}", String::from_utf8_lossy(&both.stdout), stderr(&both));
    assert!(!printed.contains(&old) && !printed.contains(&new), "never a key itself");
}

#[tokio::test]
async fn rotate_master_keeps_the_sqlite_key_file_in_step() {
    let db = TestDb::new(Backend::Sqlite).await;
    migrated(&db, None);
    let org = stdout_line(&credgate(&db, None, &["org", "create", "Acme"]));
    let key_file =
        std::path::Path::new(db.url.strip_prefix("sqlite://").unwrap()).with_file_name("credgate.master.key");
    let old = std::fs::read_to_string(&key_file).unwrap();
    let new = MasterKeyring::generate_key();
    let new_kid = MasterKeyring::kid(&new).unwrap();

    let rotated = credgate(
        &db,
        Some(&format!("{},{old}", new.expose_secret())),
        &["keys", "rotate-master"],
    );
    let without_variable = credgate(&db, None, &["keys", "rotate-org", "--org", &org]);

    let out = String::from_utf8_lossy(&rotated.stdout).into_owned();
    assert!(rotated.status.success(), "{}", stderr(&rotated));
    assert!(
        out.contains(&format!("re-wrapped 1 data keys under master key {new_kid}")),
        "{out}"
    );
    assert!(out.contains("now holds master key"), "{out}");
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), new.expose_secret());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        without_variable.status.success(),
        "a start without CREDGATE_MASTER_KEYS opens the store: {}",
        stderr(&without_variable)
    );
}

/// A newer release's migration, as it sits in the store after that
/// release migrated: this release starts (serve and migrate) regardless.
async fn a_release_starts_on_a_store_that_a_newer_release_migrated(backend: Backend) {
    let db = TestDb::new(backend).await;
    let keys = MasterKeyring::generate_key();
    migrated(&db, Some(keys.expose_secret()));
    let pool = db.any_pool().await;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, installed_on, success, checksum, execution_time) \
         VALUES (99990101, 'a newer release', CURRENT_TIMESTAMP, TRUE, $1, 1)",
    )
    .bind(vec![0u8; 48])
    .execute(&pool)
    .await
    .unwrap();

    let again = credgate(&db, Some(keys.expose_secret()), &["migrate"]);
    let org = credgate(&db, Some(keys.expose_secret()), &["org", "create", "Acme"]);
    let (server, addr) = serve(&db, keys.expose_secret(), &[], &[]);
    let ready = reqwest::get(format!("http://{addr}/readyz")).await.unwrap().status();
    stop(server);

    assert!(again.status.success(), "{}", stderr(&again));
    assert!(org.status.success(), "{}", stderr(&org));
    assert_eq!(ready, StatusCode::OK);
}
both_backends!(a_release_starts_on_a_store_that_a_newer_release_migrated);

/// The newest migration is left unapplied; a wrong key is refused before
/// it is applied.
#[tokio::test]
async fn a_wrong_master_key_is_refused_before_anything_is_migrated() {
    let db = TestDb::new(Backend::Postgres).await;
    let right = MasterKeyring::generate_key();
    migrated(&db, Some(right.expose_secret()));
    stdout_line(&credgate(&db, Some(right.expose_secret()), &["org", "create", "Acme"]));
    let pool = db.any_pool().await;
    let newest: i64 = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = $1")
        .bind(newest)
        .execute(&pool)
        .await
        .unwrap();

    let wrong = credgate(&db, Some(MasterKeyring::generate_key().expose_secret()), &["migrate"]);
    let still: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE version = $1")
        .bind(newest)
        .fetch_one(&pool)
        .await
        .unwrap();

    assert!(!wrong.status.success());
    let err = stderr(&wrong);
    assert!(
        err.contains("before migrating anything") && err.contains("CREDGATE_MASTER_KEYS"),
        "{err}"
    );
    assert_eq!(still, 0, "the pending migration was not applied");
}

async fn repair_resets_a_drifted_counter_and_says_what_it_changed(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    for i in 0..3 {
        app.create_pg(&app.org, &format!("db{i}"), "pw").await;
    }
    let pool = app.sql().await;
    sqlx::query("UPDATE credential_counts SET count = 7 WHERE org_id = $1 AND provider = 'postgresql'")
        .bind(app.org.id.as_str())
        .execute(&pool)
        .await
        .unwrap();

    let first = credgate(&db, None, &["repair"]);
    let second = credgate(&db, None, &["repair"]);
    let count: i64 =
        sqlx::query_scalar("SELECT count FROM credential_counts WHERE org_id = $1 AND provider = 'postgresql'")
            .bind(app.org.id.as_str())
            .fetch_one(&pool)
            .await
            .unwrap();

    let said = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        said.contains(&format!(
            "organization {} provider postgresql: credential counter 7 set to 3",
            app.org.id
        )),
        "{said}"
    );
    assert!(said.contains("1 credential counters fixed"), "{said}");
    assert!(String::from_utf8_lossy(&second.stdout).starts_with("0 credential counters fixed"));
    assert_eq!(count, 3);
}
both_backends!(repair_resets_a_drifted_counter_and_says_what_it_changed);

#[tokio::test]
async fn a_public_url_with_a_path_is_refused_at_start() {
    let db = TestDb::new(Backend::Sqlite).await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credgate"));
    let out = cmd
        .arg("serve")
        .env("CREDGATE_DATABASE_URL", &db.url)
        .env("CREDGATE_LISTEN", "127.0.0.1:0")
        .env("CREDGATE_PUBLIC_URL", "https://ex.example/cg/")
        .output()
        .unwrap();

    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("CREDGATE_PUBLIC_URL") && err.contains("has a path"),
        "{err}"
    );
}

/// Starts `credgate serve` with `args` and `env` on a free port; returns once
/// `/healthz` answers.
pub(crate) fn serve(db: &TestDb, keys: &str, args: &[&str], env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let addr = crate::ports::unused_addr();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credgate"));
    cmd.arg("serve")
        .args(args)
        .env("CREDGATE_DATABASE_URL", &db.url)
        .env("CREDGATE_MASTER_KEYS", keys)
        .env("CREDGATE_LISTEN", addr.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "serve did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, addr)
}

/// Stops a server; returns what it logged.
pub(crate) fn stop(child: Child) -> String {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn a_worker_alone_answers_health_and_metrics_and_each_process_exports_what_it_runs(backend: Backend) {
    let db = TestDb::new(backend).await;
    let keys = MasterKeyring::generate_key();
    migrated(&db, Some(keys.expose_secret()));
    let worker_ops = crate::ports::unused_addr();
    let (worker, worker_addr) = serve(
        &db,
        keys.expose_secret(),
        &["--worker-only"],
        &[("CREDGATE_OPS_LISTEN", &worker_ops.to_string())],
    );
    let (api, api_addr) = serve(&db, keys.expose_secret(), &["--no-worker"], &[]);
    let get = |addr: SocketAddr, path: &'static str| async move {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status(), r.text().await.unwrap())
    };

    let health = get(worker_addr, "/healthz").await;
    let ready = get(worker_addr, "/readyz").await;
    let worker_metrics = get(worker_addr, "/metrics").await;
    let no_api = get(worker_addr, "/integrations/providers").await;
    let api_metrics = get(api_addr, "/metrics").await;
    let worker_ops_metrics = get(worker_ops, "/metrics").await;
    stop(worker);
    stop(api);

    assert_eq!(health.0, StatusCode::OK);
    assert_eq!(ready.0, StatusCode::OK, "{}", ready.1);
    assert_eq!(worker_metrics.0, StatusCode::OK);
    assert!(worker_metrics.1.contains("credgate_worker_last_step_timestamp_seconds"));
    assert_eq!(no_api.0, StatusCode::NOT_FOUND, "a worker alone serves no API");
    assert!(worker_ops_metrics
        .1
        .contains("credgate_worker_last_step_timestamp_seconds"));
    assert!(
        api_metrics.1.contains("credgate_api_key_lookups_total"),
        "{}",
        api_metrics.1
    );
    assert!(
        !api_metrics.1.contains("credgate_worker_last_step") && !api_metrics.1.contains("refresh_backlog"),
        "an API-only replica exports no worker gauges"
    );
}
both_backends!(a_worker_alone_answers_health_and_metrics_and_each_process_exports_what_it_runs);

#[tokio::test]
async fn metrics_can_be_served_apart_from_the_api() {
    let db = TestDb::new(Backend::Sqlite).await;
    let keys = MasterKeyring::generate_key();
    migrated(&db, Some(keys.expose_secret()));
    let ops = crate::ports::unused_addr();
    let (server, addr) = serve(
        &db,
        keys.expose_secret(),
        &[],
        &[("CREDGATE_OPS_LISTEN", &ops.to_string())],
    );

    let on_api = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().status();
    let apart = reqwest::get(format!("http://{ops}/metrics")).await.unwrap();
    let apart_status = apart.status();
    let body = apart.text().await.unwrap();
    let api_health = reqwest::get(format!("http://{addr}/healthz")).await.unwrap().status();
    stop(server);

    assert_eq!(on_api, StatusCode::NOT_FOUND);
    assert_eq!(apart_status, StatusCode::OK);
    assert!(body.contains("credgate_worker_last_step_timestamp_seconds"));
    assert_eq!(
        api_health,
        StatusCode::OK,
        "the health routes stay on the API port for load balancers"
    );
}

/// On PostgreSQL, the migrations' notices (`relation … already exists,
/// skipping`) are not logged either.
async fn each_request_is_one_log_line_with_route_status_organization_and_key_and_no_colour(backend: Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let keys = master_keys(&app.config);
    let (server, addr) = serve(&db, &keys, &[], &[]);
    let client = reqwest::Client::new();
    let id = app.create_pg(&app.org, "db", "pw").await;
    let listed = client
        .get(format!("http://{addr}/integrations/credentials/{id}?q=secret-query"))
        .bearer_auth(&app.org.admin)
        .send()
        .await
        .unwrap()
        .status();
    let bad = client
        .get(format!("http://{addr}/integrations/credentials"))
        .bearer_auth("cgk_not_a_real_token")
        .send()
        .await
        .unwrap()
        .status();
    let logs = stop(server);

    assert_eq!((listed, bad), (StatusCode::OK, StatusCode::UNAUTHORIZED));
    assert!(!logs.contains('\u{1b}'), "no colour codes when not a terminal");
    assert!(
        logs.contains(&format!("credgate is serving on http://{addr}")),
        "{logs}"
    );
    assert!(!logs.contains("_sqlx_migrations"), "quiet migrations: {logs}");
    let ok: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("route=/integrations/credentials/{id}") && l.contains("status=200"))
        .collect();
    assert_eq!(ok.len(), 1, "{logs}");
    assert!(
        ok[0].contains(&format!("org={}", app.org.id)) && ok[0].contains("key_id="),
        "{}",
        ok[0]
    );
    assert!(
        ok[0].contains("client=127.0.0.1") && ok[0].contains("duration_ms="),
        "{}",
        ok[0]
    );
    let refused: Vec<&str> = logs.lines().filter(|l| l.contains("status=401")).collect();
    assert_eq!(refused.len(), 1, "{logs}");
    assert!(refused[0].contains("client=127.0.0.1"), "{}", refused[0]);
    assert!(
        !logs.contains("secret-query") && !logs.contains("cgk_"),
        "no query string, no token"
    );
}
both_backends!(each_request_is_one_log_line_with_route_status_organization_and_key_and_no_colour);

#[tokio::test]
async fn postgres_connections_name_credgate_and_the_pool_is_sized_by_its_setting() {
    let db = TestDb::new(Backend::Postgres).await;
    let keys = MasterKeyring::generate_key();
    migrated(&db, Some(keys.expose_secret()));
    let (server, addr) = serve(&db, keys.expose_secret(), &[], &[("CREDGATE_DB_MAX_CONNECTIONS", "3")]);
    let burst = (0..20).map(|_| reqwest::get(format!("http://{addr}/readyz")));
    futures::future::join_all(burst).await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    let named: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 AND application_name = 'credgate'",
    )
    .bind(&database)
    .fetch_one(&pool)
    .await
    .unwrap();
    stop(server);

    assert!((1..=3).contains(&named), "{named} connections named credgate");
}

/// Replica A runs with `new,old`, replica B still with `old`: an
/// organization created through A and used through B is a 503 that names
/// the key B lacks (not a 500), until B has the key.
async fn a_replica_without_the_new_key_answers_503_naming_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let behind = TestApp::spawn(&db).await;
    let old = master_keys(&behind.config);
    let new = MasterKeyring::generate_key();
    let new_kid = MasterKeyring::kid(&new).unwrap();
    let mut config = behind.config.clone();
    config.master_keys = Some(secrecy::SecretString::from(format!("{},{old}", new.expose_secret())));
    let ahead = TestApp::spawn_with(config).await;
    let org = ahead.new_org("Made ahead").await;
    let id = ahead.create_pg(&org, "db", &crate::helpers::sentinel()).await;

    let (status, problem) = behind
        .as_(&org.engine)
        .post(
            &format!("/integrations/credentials/{id}/resolve"),
            serde_json::json!({}),
        )
        .await;
    let (ahead_status, _) = ahead
        .as_(&org.engine)
        .post(
            &format!("/integrations/credentials/{id}/resolve"),
            serde_json::json!({}),
        )
        .await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
    assert_eq!(problem["code"], "master_key_missing");
    assert!(problem["detail"].as_str().unwrap().contains(&new_kid), "{problem}");
    assert_eq!(ahead_status, StatusCode::OK);
}
both_backends!(a_replica_without_the_new_key_answers_503_naming_it);
