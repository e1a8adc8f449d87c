//! When the database goes away: a PostgreSQL cluster the test owns is
//! stopped and started under a running credgate while requests run and
//! while the worker refreshes; a SQLite store on a small tmpfs fills up.
//! Requests get a quick 503 `store_unavailable` with Retry-After, never a
//! 500, and nothing is lost or half-written.

mod ambiguous;
mod connect;
mod deadlock;
pub mod denials;
mod fault_proxy;
mod outcomes;
mod postgres;
mod sqlite;
mod worker;

use std::path::PathBuf;
use std::process::Command;

const BIN: &str = "/usr/lib/postgresql/15/bin";

/// A throw-away PostgreSQL cluster (trust auth) that a test may stop.
pub struct OwnCluster {
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
    pub fn start() -> Self {
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
        let port = crate::ports::unused_port();
        let cluster = Self { dir, port };
        cluster.up();
        cluster
    }

    pub fn url(&self) -> String {
        format!("postgres://credgate@127.0.0.1:{}/postgres", self.port)
    }

    pub fn up(&self) {
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

    pub fn down(&self) {
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
