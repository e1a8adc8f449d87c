//! The OpenAPI document tells the truth: schemathesis (installed by the
//! test script) fuzzes a live credgate from `/openapi.json` with an admin
//! and an engine key, every phase (examples, coverage, fuzzing, stateful)
//! and every check, each on every operation but these (see [`CONFIG`]):
//!
//! - `positive_data_acceptance` ("a schema-valid request is accepted") is
//!   off for eleven operations whose validity JSON Schema cannot state:
//!   - `GET /integrations/credentials`: `after` is an opaque cursor (a
//!     `next` from an earlier page, any other string is 422) and `page` and
//!     `after` exclude each other, which query parameters cannot say;
//!   - `PATCH /integrations/credentials/{id}`: which `fields` are valid
//!     depends on the stored credential's provider and auth type;
//!   - `POST /integrations/credentials`, `POST …/sftp/test-connection`:
//!     host names (or IPv4 and IPv6 addresses, as Rust parses them), http(s)
//!     URLs (as the `url` crate parses them) and PEM or OpenSSH private keys
//!     have no exact pattern, nor "a password or a private key";
//!   - `POST …/postgres/test-connection`: a libpq URL or key=value string
//!     is valid when libpq's grammar says so;
//!   - `POST …/llm/test-connection`: `base_url` is required for
//!     `openai_compatible` only and must be an http(s) URL without
//!     credentials (as the `url` crate parses it);
//!   - `POST /integrations/sessions`: `return_to` must start with one of
//!     this deployment's `CREDGATE_ALLOWED_RETURN_URLS`, and `user_id` may
//!     be left out only by a key that has a user;
//!   - `PUT /integrations/credentials/{id}/sharing`: each user may be listed
//!     once (unique by `user_id`, which `uniqueItems` cannot say);
//!   - `POST /integrations/credentials/{id}/resolve`: `user_id` may name
//!     another user only when the engine key has no user of its own;
//!   - `POST /integrations/webhooks`, `PATCH /integrations/webhooks/{id}`:
//!     `url` must be an http(s) URL (as the `url` crate parses it) whose
//!     host resolves, now, to addresses the egress policy admits.
//!
//!   Each refusal there is a 422 naming the field.
//! - `use_after_free` ("a deleted resource is gone everywhere") is off for
//!   `GET /integrations/credentials/{id}/audit`: a deleted credential's audit
//!   trail stays readable by design (who deleted it, and what it was used for).
//!
//! The run has a fixed seed, so CI is repeatable; rate limits are off, as
//! they would turn the fuzzing into 429s. The test prints schemathesis's
//! summary (cases generated, failures) for each key.

use std::process::Command;

use crate::helpers::{test_config, TestApp, TestDb};

/// Per-operation check settings (`schemathesis.toml`); reasons above.
const CONFIG: &str = r#"
[[operations]]
include-name = [
  "GET /integrations/credentials",
  "PATCH /integrations/credentials/{id}",
  "POST /integrations/credentials",
  "POST /integrations/sftp/test-connection",
  "POST /integrations/postgres/test-connection",
  "POST /integrations/llm/test-connection",
  "POST /integrations/sessions",
  "PUT /integrations/credentials/{id}/sharing",
  "POST /integrations/credentials/{id}/resolve",
  "POST /integrations/webhooks",
  "PATCH /integrations/webhooks/{id}",
]
checks.positive_data_acceptance.enabled = false

[[operations]]
include-name = "GET /integrations/credentials/{id}/audit"
checks.use_after_free.enabled = false
"#;

/// Runs schemathesis against `base` with `key`; (passed, report).
fn schemathesis(base: &str, key: &str) -> (bool, String) {
    let workdir = tempfile::tempdir().unwrap();
    let config = workdir.path().join("schemathesis.toml");
    std::fs::write(&config, CONFIG).unwrap();
    let out = Command::new("python3")
        .args(["-m", "schemathesis.cli", "--config-file"])
        .arg(&config)
        .args(["run", &format!("{base}/openapi.json")])
        // Every check is on unless the file turns it off for an operation.
        .args([
            "--phases",
            "examples,coverage,fuzzing,stateful",
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

/// "N generated, …" and the closing line of a report, on one line.
fn summary(report: &str) -> String {
    let lines: Vec<&str> = report.lines().map(str::trim).collect();
    let cases = lines
        .iter()
        .position(|l| *l == "Test cases:")
        .and_then(|i| lines.get(i + 1))
        .copied()
        .unwrap_or("no test-case line");
    let last = lines.iter().rev().find(|l| !l.is_empty()).copied().unwrap_or_default();
    format!("{cases} | {}", last.trim_matches('=').trim())
}

async fn schemathesis_finds_no_failure_with_an_admin_or_an_engine_key(backend: crate::helpers::Backend) {
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
    eprintln!("schemathesis {backend:?} admin: {}", summary(&admin_report));
    eprintln!("schemathesis {backend:?} engine: {}", summary(&engine_report));

    assert!(admin_ok, "{admin_report}");
    assert!(engine_ok, "{engine_report}");
    assert!(
        !admin_report.contains("Server error") && !engine_report.contains("Server error"),
        "no 5xx"
    );
    assert!(admin_report.contains("generated"), "schemathesis ran: {admin_report}");
}
crate::both_backends!(schemathesis_finds_no_failure_with_an_admin_or_an_engine_key);

#[test]
fn every_reference_in_the_openapi_document_resolves() {
    crate::helpers::run_test(async {
        let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;

        let doc: serde_json::Value = app
            .client
            .get(format!("{}/openapi.json", app.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();

        let text = doc.to_string();
        let prefix = "\"$ref\":\"#/components/schemas/";
        let missing: Vec<&str> = text
            .match_indices(prefix)
            .map(|(at, _)| {
                let name = &text[at + prefix.len()..];
                &name[..name.find('"').unwrap()]
            })
            .filter(|name| doc["components"]["schemas"].get(*name).is_none())
            .collect();
        assert!(missing.is_empty(), "unresolvable references: {missing:?}");
    });
}
