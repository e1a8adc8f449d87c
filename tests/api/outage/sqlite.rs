//! A SQLite store whose disk fills up: a clear 503, and no corruption.

use std::path::PathBuf;
use std::process::Command;

use reqwest::{Method, StatusCode};

use crate::helpers::{pg_body, test_config, TestApp, TestDb};

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

/// A write whose `BEGIN IMMEDIATE` is still waiting for the file's lock
/// (held by another connection: a CLI command, a backup) when the store's
/// time limit gives it up is a 503; once the lock is free, that begun
/// transaction is rolled back. Before, its connection went back to the
/// pool inside it, holding the write lock: every later write waited for
/// the lock and failed (or, on that connection, failed with `cannot start
/// a transaction within a transaction`), until the process restarted.
#[test]
fn a_write_given_up_while_waiting_for_the_lock_leaves_no_transaction_open() {
    crate::helpers::run_test(async {
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let mut config = test_config(&db);
        // Shorter than SQLite's own wait for the lock (8 s).
        config.db_timeout = std::time::Duration::from_secs(1);
        let app = TestApp::spawn_with(config).await;
        let mut lock = app.sql().await.acquire().await.unwrap();
        sqlx::query("BEGIN IMMEDIATE").execute(&mut *lock).await.unwrap();

        let (while_locked, problem) = app
            .call(
                Method::POST,
                "/integrations/credentials",
                &app.org.admin,
                Some(pg_body("waited", "s")),
            )
            .await;
        sqlx::query("COMMIT").execute(&mut *lock).await.unwrap();
        drop(lock);
        // Enough writes, one after another, to go through every pooled
        // connection.
        let mut after = Vec::new();
        for n in 0..12 {
            let (status, body) = app
                .call(
                    Method::POST,
                    "/integrations/credentials",
                    &app.org.admin,
                    Some(pg_body(&format!("after-{n}"), "s")),
                )
                .await;
            after.push((status, body["code"].clone()));
        }

        assert_eq!(while_locked, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
        assert_eq!(problem["code"], "store_unavailable");
        assert!(
            after.iter().all(|(status, _)| *status == StatusCode::CREATED),
            "every write after the lock is let go: {after:?}"
        );
    });
}
