//! A client generated from `/openapi.json` by openapi-python-client (PyPI,
//! pinned, installed by the test script) is typed end to end: it creates,
//! lists, resolves, tests and reads the usage of a credential, and every
//! answer parses as its generated type (`tests/api/client/drive.py`).

use std::process::Command;

use crate::helpers::{sentinel, TestApp, TestDb};

#[test]
fn a_generated_python_client_drives_create_list_resolve_test_and_usage_typed() {
    crate::helpers::run_test(async {
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        let engine = crate::sharing::key(&app, credgate::model::Role::Engine, None).await;
        let dir = tempfile::tempdir().unwrap();
        let doc = reqwest::get(format!("{}/openapi.json", app.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        std::fs::write(dir.path().join("openapi.json"), doc).unwrap();
        let secret = sentinel();

        let generated = Command::new("openapi-python-client")
            .current_dir(dir.path())
            .args([
                "generate",
                "--path",
                "openapi.json",
                "--meta",
                "none",
                "--output-path",
                "client",
            ])
            .output()
            .expect("openapi-python-client is installed by scripts/install-test-deps.sh");
        let driver = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/api/client/drive.py");
        let (base, admin) = (app.base.clone(), app.org.admin.clone());
        let secret_arg = secret.clone();
        let dir_path = dir.path().to_owned();
        let driven = tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(driver)
                .args([&base, &admin, &engine, &secret_arg, "u-1"])
                .env("PYTHONPATH", &dir_path)
                .output()
                .unwrap()
        })
        .await
        .unwrap();

        assert!(
            generated.status.success(),
            "{}",
            String::from_utf8_lossy(&generated.stderr)
        );
        let out = String::from_utf8_lossy(&driven.stdout);
        assert!(
            driven.status.success(),
            "{out}{}",
            String::from_utf8_lossy(&driven.stderr)
        );
        assert!(out.starts_with("typed end to end: "), "{out}");
        assert!(out.trim().ends_with(" dns"), "the probe's code came back typed: {out}");
    });
}
