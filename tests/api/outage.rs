//! When the database goes away: a PostgreSQL cluster the test owns is
//! stopped and started under a running credgate; a SQLite store on a small
//! tmpfs fills up. Requests get a quick 503 `store_unavailable` with
//! Retry-After, never a 500, and nothing is lost or half-written.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::helpers::{pg_body, test_config, TestApp, TestDb};

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throw-away PostgreSQL cluster (trust auth) that a test may stop.
struct OwnCluster {
    dir: PathBuf,
    port: u16,
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .unwrap()
}

impl OwnCluster {
    fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("credgate-outage-")
            .tempdir()
            .unwrap()
            .keep();
        assert!(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status()
            .unwrap()
            .success());
        let data = dir.join("data");
        let out = as_postgres(&[
            &format!("{BIN}/initdb"),
            "--auth=trust",
            "-U",
            "credgate",
            "--no-sync",
            "-D",
            data.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self { dir, port };
        cluster.up();
        cluster
    }

    fn url(&self) -> String {
        format!("postgres://credgate@127.0.0.1:{}/postgres", self.port)
    }

    fn up(&self) {
        let options = format!(
            "-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("pg.log");
        let out = as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            self.dir.join("data").to_str().unwrap(),
            "-o",
            &options,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }

    fn down(&self) {
        let out = as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            self.dir.join("data").to_str().unwrap(),
            "-m",
            "immediate",
            "-w",
            "stop",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        let _ = as_postgres(&[
            &format!("{BIN}/pg_ctl"),
            "-D",
            self.dir.join("data").to_str().unwrap(),
            "-m",
            "immediate",
            "stop",
        ]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn timed(app: &TestApp, method: Method, path: &str, key: &str) -> (StatusCode, serde_json::Value, Duration) {
    let started = Instant::now();
    let (status, body) = app.call(method, path, key, None).await;
    (status, body, started.elapsed())
}

#[test]
fn a_postgres_outage_is_a_quick_503_and_credgate_recovers_when_it_returns() {
    crate::helpers::run_test(async {
        let cluster = OwnCluster::start();
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let mut config = test_config(&db);
        config.database_url = cluster.url();
        let app = TestApp::spawn_with(config).await;
        let id = app.create_pg(&app.org, "a", "pw").await;
        let resolve = format!("/integrations/credentials/{id}/resolve");

        cluster.down();
        let (during, problem, took) = timed(&app, Method::POST, &resolve, &app.org.engine).await;
        let raw = app
            .client
            .post(format!("{}{resolve}", app.base))
            .bearer_auth(&app.org.engine)
            .send()
            .await
            .unwrap();
        let retry_after = raw.headers().get("retry-after").cloned();
        let (create, _) = app
            .call(
                Method::POST,
                "/integrations/credentials",
                &app.org.admin,
                Some(pg_body("b", "pw")),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(1100)).await; // past /readyz's one-second memory
        let started = Instant::now();
        let ready = app
            .client
            .get(format!("{}/readyz", app.base))
            .send()
            .await
            .unwrap()
            .status();
        let ready_took = started.elapsed();
        let step = credgate::oauth::worker::try_refresh_due(&app.state, 10).await;
        let logs = crate::helpers::captured_logs();

        cluster.up();
        let mut back = StatusCode::SERVICE_UNAVAILABLE;
        for _ in 0..50 {
            back = app.call(Method::POST, &resolve, &app.org.engine, None).await.0;
            if back == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let (listed, page) = app
            .call(Method::GET, "/integrations/credentials", &app.org.admin, None)
            .await;

        assert_eq!(during, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
        assert_eq!(problem["code"], "store_unavailable");
        assert!(took < Duration::from_millis(3500), "answered in {took:?}");
        assert!(retry_after.is_some());
        assert_eq!(create, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(ready, StatusCode::SERVICE_UNAVAILABLE);
        assert!(ready_took < Duration::from_millis(1500), "/readyz took {ready_took:?}");
        assert!(
            step.is_err(),
            "the worker's step fails cleanly (and its loop backs off)"
        );
        assert!(!logs.contains("\"status\":500"), "no 500 was answered");
        assert_eq!(back, StatusCode::OK, "credgate recovers by itself");
        assert_eq!(listed, StatusCode::OK);
        assert_eq!(page["total"], 1, "nothing half-written: the failed create left no row");
    });
}

#[test]
fn a_full_disk_under_sqlite_is_a_503_and_corrupts_nothing() {
    crate::helpers::run_test(async {
        let mount = tempfile::Builder::new().prefix("credgate-tmpfs-").tempdir().unwrap();
        let dir = mount.path().to_path_buf();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(mounted.success(), "mounting a small tmpfs needs root");
        struct Unmount(PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new("umount").arg(&self.0).status();
            }
        }
        let _unmount = Unmount(dir.clone());
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let mut config = test_config(&db);
        config.database_url = format!("sqlite://{}", dir.join("credgate.db").display());
        let app = TestApp::spawn_with(config).await;
        app.state
            .store
            .set_org_limit(&app.org.id, "postgresql", 100_000)
            .await
            .unwrap();
        // Fill the disk but for a little room.
        let filler = dir.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=64k", "count=1000"])
            .arg(format!("of={}", filler.display()))
            .output();

        let mut statuses = Vec::new();
        for n in 0..400 {
            let big = "x".repeat(4000);
            let mut body = pg_body(&format!("c{n}"), &big);
            body["fields"]["host"] = serde_json::json!(format!("h{n}.example.com"));
            let (status, problem) = app
                .call(Method::POST, "/integrations/credentials", &app.org.admin, Some(body))
                .await;
            statuses.push((status, problem["code"].as_str().unwrap_or_default().to_owned()));
            if status == StatusCode::SERVICE_UNAVAILABLE {
                break;
            }
        }
        let created = statuses.iter().filter(|(s, _)| *s == StatusCode::CREATED).count();
        std::fs::remove_file(&filler).unwrap();
        let (after, _) = app
            .call(
                Method::POST,
                "/integrations/credentials",
                &app.org.admin,
                Some(pg_body("after", "pw")),
            )
            .await;
        let (_, page) = app
            .call(
                Method::GET,
                "/integrations/credentials?per_page=1",
                &app.org.admin,
                None,
            )
            .await;
        let check: String = sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&app.sql().await)
            .await
            .unwrap();

        let last = statuses.last().unwrap();
        assert_eq!(last.0, StatusCode::SERVICE_UNAVAILABLE, "{statuses:?}");
        assert_eq!(last.1, "store_unavailable");
        let failures: Vec<String> = crate::helpers::captured_logs()
            .lines()
            .filter(|l| l.contains("request failed"))
            .map(str::to_owned)
            .collect();
        assert!(
            statuses
                .iter()
                .all(|(s, _)| *s == StatusCode::CREATED || *s == StatusCode::SERVICE_UNAVAILABLE),
            "never a 500: {statuses:?} {failures:?}"
        );
        assert_eq!(after, StatusCode::CREATED, "writes work again once there is room");
        assert_eq!(
            page["total"].as_u64().unwrap() as usize,
            created + 1,
            "the refused create left nothing behind"
        );
        assert_eq!(check, "ok");
    });
}
