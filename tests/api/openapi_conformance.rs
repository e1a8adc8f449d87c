//! The OpenAPI document tells the truth: schemathesis (installed by the
//! test script) fuzzes a live credgate from `/openapi.json` with an admin
//! and an engine key, with every check but two:
//!
//! - `positive_data_acceptance`: some valid-looking values are refused by
//!   parsers that JSON Schema cannot express exactly (host names, URLs,
//!   libpq connection strings, key fingerprints, and a PATCH's `fields`,
//!   which depend on the stored credential's provider); each refusal is a
//!   422 naming the field.
//! - `use_after_free`: a deleted credential's audit trail stays readable at
//!   `…/{id}/audit` by design.
//!
//! The coverage phase is off: its negative cases report `base_url` of the
//! LLM probe body as a missing required property, though the schema does not
//! require it (a known class of false positives of that phase). Examples,
//! fuzzing and stateful phases run with a fixed seed, so CI is repeatable.
//!
//! Rate limits are off for the run, as they would turn the fuzzing into 429s.

use std::process::Command;

use crate::helpers::{test_config, TestApp, TestDb};

/// Runs schemathesis against `base` with `key`; (passed, report).
fn schemathesis(base: &str, key: &str) -> (bool, String) {
    let workdir = tempfile::tempdir().unwrap();
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "run", &format!("{base}/openapi.json")])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance,use_after_free",
        ])
        .args([
            "--phases",
            "examples,fuzzing,stateful",
            "--max-examples",
            "25",
            "--seed",
            "20261129",
            "--no-color",
        ])
        .args(["-H", &format!("Authorization: Bearer {key}")])
        .env("SCHEMATHESIS_TELEMETRY", "false")
        // A fresh directory: its cache would replay earlier runs' failures.
        .current_dir(workdir.path())
        .output()
        .expect("schemathesis must be installed (scripts/install-test-deps.sh)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

crate::both_backends! {
    async fn schemathesis_finds_no_failure_with_an_admin_or_an_engine_key(backend: Backend) {
        let db = TestDb::new(backend).await;
        let mut config = test_config(&db);
        config.auth_failures_per_sec = 0;
        let app = TestApp::spawn_with(config).await;
        app.create_pg(&app.org, "seed", "pw").await;
        let (admin, engine) = (app.org.admin.clone(), app.org.engine.clone());

        let run = |key: String| {
            let base = app.base.clone();
            tokio::task::spawn_blocking(move || schemathesis(&base, &key))
        };
        let (admin_ok, admin_report) = run(admin).await.unwrap();
        let (engine_ok, engine_report) = run(engine).await.unwrap();

        assert!(admin_ok, "{admin_report}");
        assert!(engine_ok, "{engine_report}");
        assert!(!admin_report.contains("Server error") && !engine_report.contains("Server error"), "no 5xx");
        assert!(admin_report.contains("generated"), "schemathesis ran: {admin_report}");
    }
}
