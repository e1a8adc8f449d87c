//! Real mail servers for the SMTP and IMAP probe tests, each started once per
//! process: a private Debian dovecot (its own config, user database,
//! self-signed certificate and Maildir under a temporary directory) and
//! aiosmtpd (`smtp_server.py`) in three modes. Both stop when this process
//! exits, even when it is killed (they watch a stdin pipe). Needs
//! `scripts/install-test-deps.sh`; a missing server fails the test.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use super::sshd::wait_for_port;
use crate::ports::unused_port as free_port;

/// The mail user of both servers.
pub const MAIL_USER: &str = "credgate_mail";
/// Its password; also a sentinel secret.
pub const MAIL_PASSWORD: &str = "SENTINEL-mail-password-5be3";
/// Messages in the IMAP user's INBOX.
pub const INBOX_MESSAGES: u64 = 2;

/// A private dovecot: IMAPS on `tls_port`, plain IMAP with STARTTLS on
/// `plain_port`, both on 127.0.0.1. `plain_port` also listens on 127.0.0.2,
/// where dovecot does not count the connection as local (it trusts a client
/// whose address is its own), so `ssl = required` disables LOGIN there.
pub struct Dovecot {
    pub tls_port: u16,
    pub plain_port: u16,
    // Kept open for the life of the process: closing it stops the server.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

/// The process-wide dovecot, started on first use.
pub fn dovecot() -> &'static Dovecot {
    static DOVECOT: OnceLock<Dovecot> = OnceLock::new();
    DOVECOT.get_or_init(|| start_dovecot().expect("start dovecot (run scripts/install-test-deps.sh as root)"))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// A self-signed certificate for localhost and 127.0.0.1 in `dir`.
fn self_signed(dir: &Path) -> Result<(), String> {
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem")))
}

fn start_dovecot() -> Result<Dovecot, String> {
    let err = |e: std::io::Error| e.to_string();
    let dir = tempfile::Builder::new()
        .prefix("credgate-dovecot-")
        .tempdir()
        .map_err(err)?
        .keep();
    // dovecot's login and mail processes run as unprivileged users.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).map_err(err)?;
    self_signed(&dir)?;

    // The mail user runs as `nobody`, owning its Maildir.
    let home = dir.join("home").join(MAIL_USER);
    for sub in ["new", "cur", "tmp"] {
        fs::create_dir_all(home.join("Maildir").join(sub)).map_err(err)?;
    }
    for n in 1..=INBOX_MESSAGES {
        fs::write(
            home.join("Maildir/new").join(format!("{n}.credgate")),
            format!("From: test@credgate.test\r\nSubject: message {n}\r\n\r\nhello\r\n"),
        )
        .map_err(err)?;
    }
    run(Command::new("chown").args(["-R", "65534:65534"]).arg(dir.join("home")))?;
    fs::write(
        dir.join("users"),
        format!(
            "{MAIL_USER}:{{PLAIN}}{MAIL_PASSWORD}:65534:65534::{}::\n",
            home.display()
        ),
    )
    .map_err(err)?;

    let (tls_port, plain_port) = (free_port(), free_port());
    let config = dir.join("dovecot.conf");
    fs::write(
        &config,
        format!(
            "base_dir = {d}/run\nstate_dir = {d}/state\nlog_path = {d}/dovecot.log\n\
             protocols = imap\nlisten = 127.0.0.1\nssl = required\n\
             ssl_cert = <{d}/cert.pem\nssl_key = <{d}/key.pem\n\
             auth_mechanisms = plain login\nauth_failure_delay = 0\n\
             first_valid_uid = 1\nmail_location = maildir:~/Maildir\n\
             default_login_user = dovenull\ndefault_internal_user = dovecot\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {d}/users\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = username_format=%u {d}/users\n}}\n\
             service imap-login {{\n\
               inet_listener imap {{\n    address = 127.0.0.1, 127.0.0.2\n    port = {plain_port}\n  }}\n\
               inet_listener imaps {{\n    address = 127.0.0.1\n    port = {tls_port}\n    ssl = yes\n  }}\n\
             }}\n",
            d = dir.display()
        ),
    )
    .map_err(err)?;

    let mut child = Command::new("sh")
        .args([
            "-c",
            "/usr/sbin/dovecot -F -c \"$1\" 2>>\"$2/dovecot.log\" & p=$!; read _; kill $p; wait; rm -rf \"$2\"",
            "sh",
        ])
        .arg(&config)
        .arg(&dir)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(err)?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let log = dir.join("dovecot.log");
    wait_for_port(tls_port, &mut child, &log)?;
    wait_for_port(plain_port, &mut child, &log)?;
    Ok(Dovecot {
        tls_port,
        plain_port,
        _watchdog: Mutex::new((child, stdin)),
    })
}

/// How the aiosmtpd stand-in protects its sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpMode {
    /// STARTTLS offered; AUTH only after it.
    StartTls,
    /// TLS from the first byte.
    Tls,
    /// No TLS; AUTH in clear text.
    Plain,
}

/// A running `smtp_server.py`.
pub struct SmtpServer {
    pub port: u16,
    _child: Mutex<(Child, ChildStdin)>,
}

/// The process-wide aiosmtpd of `mode`, started on first use.
pub fn smtp(mode: SmtpMode) -> &'static SmtpServer {
    static SERVERS: [OnceLock<SmtpServer>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let (slot, name) = match mode {
        SmtpMode::StartTls => (&SERVERS[0], "starttls"),
        SmtpMode::Tls => (&SERVERS[1], "tls"),
        SmtpMode::Plain => (&SERVERS[2], "plain"),
    };
    slot.get_or_init(|| start_smtp(name).expect("start aiosmtpd (run scripts/install-test-deps.sh as root)"))
}

fn start_smtp(mode: &str) -> Result<SmtpServer, String> {
    let script: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests/api/probes/smtp_server.py"]
        .iter()
        .collect();
    let mut child = Command::new("python3")
        .arg(script)
        .arg(mode)
        .env("SMTP_TEST_USER", MAIL_USER)
        .env("SMTP_TEST_PASSWORD", MAIL_PASSWORD)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    let stdin = child.stdin.take().ok_or("no stdin")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().ok_or("no stdout")?)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let port = line
        .trim()
        .parse()
        .map_err(|_| format!("smtp_server.py {mode} printed no port (is aiosmtpd installed?)"))?;
    Ok(SmtpServer {
        port,
        _child: Mutex::new((child, stdin)),
    })
}
