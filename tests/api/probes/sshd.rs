//! A real OpenSSH `sshd` on a loopback port, started once per process.
//!
//! Host and user keys are generated into a temporary directory; a watchdog
//! shell stops the server and removes the directory when this process exits
//! (its stdin pipe closes), even if the process is killed. Needs
//! `scripts/install-test-deps.sh` (openssh-server and the test users).
//! Shared with `examples/probe_bench.rs` through `#[path]`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// User who logs in with a password.
pub const PASSWORD_USER: &str = "credgate_sftp_pw";
/// Its password (set by the install script); also a sentinel secret.
pub const PASSWORD: &str = "SENTINEL-sftp-password-7d1f";
/// User who logs in with keys.
pub const KEY_USER: &str = "credgate_sftp_key";
/// Passphrase of the encrypted test keys; also a sentinel secret.
pub const PASSPHRASE: &str = "SENTINEL-key-passphrase-41aa";

/// The running server and the material the tests use against it.
pub struct Sshd {
    /// The loopback port it listens on.
    pub port: u16,
    /// Its host key fingerprint, `SHA256:…`.
    pub fingerprint: String,
    /// The temporary directory holding keys and test directories.
    pub dir: PathBuf,
    // Kept open for the life of the process: closing it stops the server.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

impl Sshd {
    /// Path of a generated key file (`id_ed25519`, `id_ed25519_pass`,
    /// `id_rsa_pem_pass`, `id_unauthorized`).
    pub fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Contents of a generated private key.
    pub fn key(&self, name: &str) -> String {
        fs::read_to_string(self.key_path(name)).expect("key file")
    }

    /// A directory with exactly three files, readable by both users.
    pub fn listing_dir(&self) -> String {
        self.dir.join("listing").display().to_string()
    }

    /// A directory that the test users may not list.
    pub fn private_dir(&self) -> String {
        self.dir.join("private").display().to_string()
    }
}

/// The process-wide sshd, started on first use.
pub fn sshd() -> &'static Sshd {
    static SSHD: OnceLock<Sshd> = OnceLock::new();
    SSHD.get_or_init(|| start().expect("start sshd (run scripts/install-test-deps.sh as root)"))
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn keygen(dir: &Path, name: &str, args: &[&str], passphrase: &str) -> Result<(), String> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-C", name, "-N", passphrase, "-f"])
        .arg(dir.join(name))
        .args(args))
    .map(|_| ())
}

fn start() -> Result<Sshd, String> {
    let dir = tempfile::Builder::new()
        .prefix("credgate-sshd-")
        .tempdir()
        .map_err(|e| e.to_string())?
        .keep();
    let chmod = |p: &Path, mode| fs::set_permissions(p, fs::Permissions::from_mode(mode));
    chmod(&dir, 0o755).map_err(|e| e.to_string())?;
    fs::create_dir_all("/run/sshd").map_err(|e| e.to_string())?;

    keygen(&dir, "host_ed25519", &["-t", "ed25519"], "")?;
    keygen(&dir, "id_ed25519", &["-t", "ed25519"], "")?;
    keygen(&dir, "id_ed25519_pass", &["-t", "ed25519"], PASSPHRASE)?;
    keygen(
        &dir,
        "id_rsa_pem_pass",
        &["-t", "rsa", "-b", "2048", "-m", "PEM"],
        PASSPHRASE,
    )?;
    keygen(&dir, "id_unauthorized", &["-t", "ed25519"], "")?;
    let listed = run(Command::new("ssh-keygen")
        .args(["-l", "-E", "sha256", "-f"])
        .arg(dir.join("host_ed25519.pub")))?;
    let fingerprint = listed.split_whitespace().nth(1).ok_or("no fingerprint")?.to_owned();

    let auth_dir = dir.join("authorized_keys");
    fs::create_dir(&auth_dir).map_err(|e| e.to_string())?;
    chmod(&auth_dir, 0o755).map_err(|e| e.to_string())?;
    let mut authorized = String::new();
    for name in ["id_ed25519", "id_ed25519_pass", "id_rsa_pem_pass"] {
        authorized += &fs::read_to_string(dir.join(format!("{name}.pub"))).map_err(|e| e.to_string())?;
    }
    fs::write(auth_dir.join(KEY_USER), authorized).map_err(|e| e.to_string())?;
    chmod(&auth_dir.join(KEY_USER), 0o644).map_err(|e| e.to_string())?;

    let listing = dir.join("listing");
    fs::create_dir(&listing).map_err(|e| e.to_string())?;
    for name in ["a.csv", "b.csv", "c.csv"] {
        fs::write(listing.join(name), "x").map_err(|e| e.to_string())?;
    }
    chmod(&listing, 0o755).map_err(|e| e.to_string())?;
    fs::create_dir(dir.join("private")).map_err(|e| e.to_string())?;
    chmod(&dir.join("private"), 0o700).map_err(|e| e.to_string())?;

    let port = crate::ports::unused_port();
    let config = dir.join("sshd_config");
    fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_ed25519\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys/%u\nStrictModes no\nUsePAM no\n\
             PasswordAuthentication yes\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
             PermitRootLogin no\nAllowUsers {PASSWORD_USER} {KEY_USER}\nSubsystem sftp internal-sftp\n\
             MaxStartups 200\nMaxSessions 200\nLogLevel ERROR\n",
            d = dir.display()
        ),
    )
    .map_err(|e| e.to_string())?;

    let mut child = Command::new("sh")
        .args([
            "-c",
            "/usr/sbin/sshd -D -e -f \"$1\" 2>>\"$2/sshd.log\" & p=$!; read _; kill $p; wait; rm -rf \"$2\"",
            "sh",
        ])
        .arg(&config)
        .arg(&dir)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    wait_for_port(port, &mut child, &dir.join("sshd.log"))?;
    Ok(Sshd {
        port,
        fingerprint,
        dir,
        _watchdog: Mutex::new((child, stdin)),
    })
}

/// Waits until something accepts on `port`, or fails with the server log.
pub fn wait_for_port(port: u16, child: &mut Child, log: &Path) -> Result<(), String> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(20) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = fs::read_to_string(log).unwrap_or_default();
            return Err(format!("server exited ({status}): {log}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!(
        "server did not listen on {port}: {}",
        fs::read_to_string(log).unwrap_or_default()
    ))
}
