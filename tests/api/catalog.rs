//! The catalog compiled into the binary: `credgate` run from an empty
//! directory serves every provider of `providers/`, and
//! `CREDGATE_PROVIDERS_DIR` adds files and replaces built-in ones by id.

use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// `credgate ARGS` in `cwd` with only the variables given (no providers directory).
fn credgate_in(cwd: &std::path::Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_credgate"));
    cmd.current_dir(cwd)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

fn line(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Serves in `cwd` with `env`; returns the catalog as the API lists it.
async fn catalog(cwd: &std::path::Path, env: &[(&str, &str)]) -> Vec<Value> {
    line(&mut credgate_in(cwd, env, &["migrate"]));
    let org = line(&mut credgate_in(cwd, env, &["org", "create", "Acme"]));
    let token = line(&mut credgate_in(
        cwd,
        env,
        &["api-key", "create", "--org", &org, "--role", "admin"],
    ));
    let listen = crate::ports::unused_addr().to_string();
    let mut with_listen = env.to_vec();
    with_listen.push(("CREDGATE_LISTEN", &listen));
    let _server = Server(
        credgate_in(cwd, &with_listen, &["serve", "--no-worker"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = reqwest::Client::new();
    for _ in 0..200 {
        if client.get(format!("http://{listen}/healthz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let res = client
        .get(format!("http://{listen}/integrations/providers"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    res.json::<Vec<Value>>().await.unwrap()
}

fn repo_ids() -> Vec<String> {
    let mut ids: Vec<String> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/providers"))
        .unwrap()
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str().map(str::to_owned))
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn credgate_started_from_an_empty_directory_serves_the_whole_catalog() {
    let cwd = tempfile::tempdir().unwrap();

    let served = catalog(cwd.path(), &[]).await;

    let mut ids: Vec<String> = served.iter().map(|p| p["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    assert_eq!(ids, repo_ids());
    assert!(
        cwd.path().join("credgate.db").exists(),
        "the default database, in the directory it runs in"
    );
}

#[tokio::test]
async fn a_providers_directory_adds_files_and_replaces_built_in_ones_by_id() {
    let cwd = tempfile::tempdir().unwrap();
    let extra = tempfile::tempdir().unwrap();
    let google = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/providers/google.toml")).unwrap();
    let google = google.replacen("display_name = \"Google\"", "display_name = \"Google Workspace\"", 1);
    assert!(google.contains("Google Workspace"), "the built-in file names Google");
    std::fs::write(extra.path().join("google.toml"), google).unwrap();
    std::fs::write(
        extra.path().join("acme.toml"),
        "display_name = \"Acme\"\n[[auth_types]]\ntype = \"api_key\"\nfields = [{ name = \"api_key\", label = \"API key\", secret = true, required = true }]\n",
    )
    .unwrap();
    let dir = extra.path().to_str().unwrap().to_owned();

    let served = catalog(cwd.path(), &[("CREDGATE_PROVIDERS_DIR", &dir)]).await;
    let mut missing = credgate_in(
        cwd.path(),
        &[
            ("CREDGATE_PROVIDERS_DIR", "/nonexistent/providers"),
            ("CREDGATE_LISTEN", "127.0.0.1:0"),
        ],
        &["serve"],
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let missing = loop {
        if missing.try_wait().unwrap().is_some() {
            break missing.wait_with_output().unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve started without its providers directory"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };

    let by_id = |id: &str| served.iter().find(|p| p["id"] == id).cloned();
    assert_eq!(served.len(), repo_ids().len() + 1);
    assert_eq!(by_id("google").unwrap()["display_name"], "Google Workspace");
    assert_eq!(by_id("acme").unwrap()["display_name"], "Acme");
    assert!(by_id("slack").is_some(), "the other built-in providers stay");
    assert!(!missing.status.success(), "a directory that is named must exist");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/nonexistent/providers"), "{stderr}");
}
