//! A second PostgreSQL cluster that really checks passwords, started once
//! per process: `initdb --auth=scram-sha-256` as the `postgres` OS user in a
//! temporary directory, on a free loopback port, with `ssl=on` and a
//! self-signed certificate. The machine's own server trusts loopback, so a
//! wrong password would pass there.
//!
//! A watchdog shell stops the cluster and removes its directory when this
//! process exits (its stdin pipe closes). Shared with
//! `examples/probe_bench.rs` through `#[path]`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::sshd::wait_for_port;
use crate::ports::unused_port as free_port;

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// Login role with a password.
pub const USER: &str = "probe_user";
/// Its password; also a sentinel secret.
pub const PASSWORD: &str = "SENTINEL-pg-password-5be0";
/// The role's database.
pub const DATABASE: &str = "probe_db";
const ADMIN: &str = "credgate_admin";
const ADMIN_PASSWORD: &str = "SENTINEL-pg-admin-0c3d";

/// The running cluster.
pub struct PgCluster {
    /// Its loopback port.
    pub port: u16,
    _watchdog: Mutex<(Child, ChildStdin)>,
}

impl PgCluster {
    /// A libpq URL for the test role, with `extra` query parameters.
    pub fn url(&self, password: &str, extra: &str) -> String {
        format!("postgres://{USER}:{password}@127.0.0.1:{}/{DATABASE}{extra}", self.port)
    }
}

/// The process-wide cluster, started on first use.
pub fn cluster() -> &'static PgCluster {
    static CLUSTER: OnceLock<PgCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| start().expect("start the scram-sha-256 PostgreSQL cluster"))
}

fn as_postgres(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", program]);
    cmd
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn start() -> Result<PgCluster, String> {
    let dir = tempfile::Builder::new()
        .prefix("credgate-pg-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(|e| e.to_string())?;
    let pwfile = dir.join("pw");
    fs::write(&pwfile, ADMIN_PASSWORD).map_err(|e| e.to_string())?;
    run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir))?;
    let data = dir.join("data");
    run(as_postgres(&format!("{BIN}/initdb"))
        .args(["--auth=scram-sha-256", "-U", ADMIN, "-E", "UTF8", "--no-sync", "-D"])
        .arg(&data)
        .arg(format!("--pwfile={}", pwfile.display())))?;
    run(as_postgres("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(data.join("server.key"))
        .arg("-out")
        .arg(data.join("server.crt")))?;

    let port = free_port();
    let script = format!(
        "runuser -u postgres -- {BIN}/postgres -D \"$1/data\" -c port={port} \
         -c listen_addresses=127.0.0.1 -c unix_socket_directories=\"$1\" -c ssl=on \
         -c fsync=off -c max_connections=200 >>\"$1/pg.log\" 2>&1 & \
         read _; kill -INT $(head -1 \"$1/data/postmaster.pid\"); \
         n=0; while [ -e \"$1/data/postmaster.pid\" ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done; \
         rm -rf \"$1\""
    );
    let mut child = Command::new("sh")
        .args(["-c", &script, "sh"])
        .arg(&dir)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    wait_for_port(port, &mut child, &dir.join("pg.log"))?;
    let cluster = PgCluster {
        port,
        _watchdog: Mutex::new((child, stdin)),
    };
    setup(&cluster)?;
    Ok(cluster)
}

/// Creates the test role and its database, retrying while the server
/// finishes starting.
fn setup(cluster: &PgCluster) -> Result<(), String> {
    let mut last = String::new();
    for _ in 0..100 {
        let result = run(Command::new("psql")
            .env("PGPASSWORD", ADMIN_PASSWORD)
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &cluster.port.to_string(),
                "-U",
                ADMIN,
                "-d",
                "postgres",
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-q"])
            .args(["-c", &format!("CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")])
            .args(["-c", &format!("CREATE DATABASE {DATABASE} OWNER {USER}")]));
        match result {
            Ok(()) => return Ok(()),
            Err(e) if e.contains("starting up") || e.contains("Connection refused") => last = e,
            Err(e) => return Err(e),
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Err(last)
}
