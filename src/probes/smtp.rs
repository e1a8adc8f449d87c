//! The SMTP probe: greeting, EHLO, STARTTLS or implicit TLS, AUTH PLAIN or
//! LOGIN, optionally `MAIL FROM` (then `RSET`), QUIT. No mail is sent.
//!
//! The dialogue is written by hand over [`super::mail_io`], on the socket the
//! egress guard opened to the checked address. lettre 0.11 could take that
//! socket too; what keeps it out is how it reads: a server's reply lines
//! without a bound (this probe's reads are capped, `super::capped`), and one
//! error for the whole exchange where this probe names the stage that failed
//! (greeting, STARTTLS, AUTH, `MAIL FROM`) with its own code.

use std::net::IpAddr;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::ids::OrgId;

use super::mail_io::{quote, MailConn, MailLogin, Security};
use super::{
    check_host_port, into_result, run, stage, FailureCode, FieldError, Pool, Probe, ProbeContext, ProbeFailure,
    ProbeResult, Slot,
};

/// Lines of one SMTP answer at most (an EHLO answer has a dozen).
const MAX_REPLY_LINES: usize = 100;

/// How long the probe waits for the answer to QUIT.
const QUIT_WAIT: Duration = Duration::from_millis(500);

/// Body of an SMTP connection test; the `smtp` provider's fields.
#[derive(Debug, Deserialize)]
pub struct SmtpRequest {
    /// Host, port, login, `security` (`starttls` by default, `tls` on 465, or `none`) and `tls_verify`.
    #[serde(flatten)]
    pub login: MailLogin,
    /// A sender address to try with `MAIL FROM` after logging in.
    #[serde(default)]
    pub from: Option<String>,
}

impl SmtpRequest {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.login.port_or(587)
    }

    fn security(&self) -> Result<Security, FieldError> {
        self.login.security_or(Security::StartTls)
    }

    fn password(&self) -> &str {
        self.login.password()
    }

    fn sender(&self) -> Option<&str> {
        self.from.as_deref().map(str::trim).filter(|f| !f.is_empty())
    }
}

impl Probe for SmtpRequest {
    const NAME: &'static str = "smtp";
    const POOL: Pool = Pool::Mail;

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_host_port(&self.login.host, self.login.port, &mut errors);
        if self.login.username.trim().is_empty() {
            errors.push(FieldError::new("username", "is required"));
        } else if self.login.username.chars().any(char::is_control) {
            errors.push(FieldError::new("username", "must not contain control characters"));
        }
        if self.password().is_empty() {
            errors.push(FieldError::new("password", "is required"));
        } else if self.password().contains('\0') {
            errors.push(FieldError::new("password", "must not contain NUL"));
        }
        if let Err(e) = self.security() {
            errors.push(e);
        }
        if let Some(from) = self.sender() {
            let shaped = from.len() <= 254
                && from.contains('@')
                && !from
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>');
            if !shaped {
                errors.push(FieldError::new(
                    "from",
                    "must be an e-mail address such as name@example.com",
                ));
            }
        }
        into_result(errors)
    }

    async fn execute(&self, ctx: &ProbeContext, _slot: Slot) -> Result<Value, (Value, ProbeFailure)> {
        let mut facts = json!({});
        let (mut conn, security, client) = match self
            .login
            .open(ctx, self.port(), self.security(), "SMTP", &mut facts)
            .await
        {
            Ok(opened) => opened,
            Err(failure) => return Err((facts, failure)),
        };
        let outcome = self.dialogue(ctx, &mut conn, client, security, &mut facts).await;
        facts["tls"] = json!(conn.is_tls());
        // A polite goodbye, briefly: the outcome is known already.
        let _ = tokio::time::timeout(QUIT_WAIT, async {
            if conn.send("QUIT").await.is_ok() {
                let _ = read_reply(&mut conn).await;
            }
            conn.close().await;
        })
        .await;
        match outcome {
            Ok(()) => Ok(facts),
            Err(failure) => Err((facts, failure)),
        }
    }

    fn secrets(&self) -> Vec<&str> {
        vec![self.password()]
    }
}

impl SmtpRequest {
    /// Everything between connecting and QUIT; facts are added on the way.
    async fn dialogue(
        &self,
        ctx: &ProbeContext,
        conn: &mut MailConn,
        client: IpAddr,
        security: Security,
        facts: &mut Value,
    ) -> Result<(), ProbeFailure> {
        let limit = ctx.timeouts.stage;
        // The encoded forms of the password, which a server could echo.
        let plain = BASE64.encode(format!("\0{}\0{}", self.login.username, self.password()));
        let login_password = BASE64.encode(self.password());
        let hidden = [plain.as_str(), login_password.as_str(), self.password()];

        if security == Security::Tls {
            stage("the TLS handshake", limit, conn.start_tls()).await?;
        }
        let greeting = stage("the SMTP greeting", limit, read_reply(conn)).await?;
        facts["greeting"] = json!(quote(&greeting.lines[0], &hidden));
        if greeting.code != 220 {
            return Err(ProbeFailure::new(
                FailureCode::Protocol,
                format!("the server refused the session: {}", greeting.quoted(&hidden)),
            ));
        }
        let mut extensions = stage("EHLO", limit, ehlo(conn, client, &hidden)).await?;
        facts["server_name"] = json!(extensions.name);
        if security == Security::StartTls {
            if !extensions.starttls {
                return Err(ProbeFailure::new(
                    FailureCode::Tls,
                    "the server does not offer STARTTLS, so the password would travel in clear text; use \
                     security tls for an SMTPS port (465), or none only on a network you trust",
                ));
            }
            let go = stage("STARTTLS", limit, command(conn, "STARTTLS")).await?;
            if go.code != 220 {
                return Err(ProbeFailure::new(
                    FailureCode::Tls,
                    format!("the server refused STARTTLS: {}", go.quoted(&hidden)),
                ));
            }
            stage("the TLS handshake", limit, conn.start_tls()).await?;
            extensions = stage("EHLO", limit, ehlo(conn, client, &hidden)).await?;
        }
        facts["tls"] = json!(conn.is_tls());
        facts["auth_mechanisms"] = json!(extensions.auth);
        let encoded = Encoded {
            plain: &plain,
            username: &BASE64.encode(&self.login.username),
            password: &login_password,
        };
        stage(
            "the login",
            limit,
            self.authenticate(conn, &extensions, &encoded, &hidden),
        )
        .await?;
        if let Some(from) = self.sender() {
            let reply = stage("MAIL FROM", limit, command(conn, &format!("MAIL FROM:<{from}>"))).await?;
            if reply.code != 250 {
                return Err(ProbeFailure::new(
                    FailureCode::PermissionDenied,
                    format!(
                        "logged in, but the server refused sender `{from}`: {}",
                        reply.quoted(&hidden)
                    ),
                ));
            }
            facts["from_accepted"] = json!(true);
            // Nothing is sent: the transaction is abandoned before RCPT.
            stage("RSET", limit, command(conn, "RSET")).await?;
        }
        Ok(())
    }

    /// AUTH PLAIN when offered, else AUTH LOGIN.
    async fn authenticate(
        &self,
        conn: &mut MailConn,
        extensions: &Extensions,
        encoded: &Encoded<'_>,
        hidden: &[&str],
    ) -> Result<(), ProbeFailure> {
        let offers = |m: &str| extensions.auth.iter().any(|a| a == m);
        let reply = if offers("PLAIN") {
            let reply = command(conn, &format!("AUTH PLAIN {}", encoded.plain)).await?;
            if reply.code == 334 {
                // A server that ignores the initial response asks again.
                command(conn, encoded.plain).await?
            } else {
                reply
            }
        } else if offers("LOGIN") {
            let mut reply = command(conn, "AUTH LOGIN").await?;
            for answer in [encoded.username, encoded.password] {
                if reply.code != 334 {
                    break;
                }
                reply = command(conn, answer).await?;
            }
            reply
        } else if extensions.auth.is_empty() && extensions.starttls && !conn.is_tls() {
            return Err(ProbeFailure::new(
                FailureCode::Tls,
                "the server offers AUTH only after STARTTLS; set security to starttls",
            ));
        } else if extensions.auth.is_empty() {
            return Err(ProbeFailure::new(
                FailureCode::Protocol,
                "the server offers no AUTH; is this the submission port (587 or 465)?",
            ));
        } else {
            return Err(ProbeFailure::new(
                FailureCode::Protocol,
                format!(
                    "the server offers only {}; credgate logs in with PLAIN or LOGIN",
                    extensions.auth.join(", ")
                ),
            ));
        };
        match reply.code {
            235 => Ok(()),
            535 | 534 => Err(ProbeFailure::new(
                FailureCode::AuthFailed,
                format!(
                    "the server rejected user `{}` or its password: {}",
                    self.login.username,
                    reply.quoted(hidden)
                ),
            )),
            530 | 538 if !conn.is_tls() => Err(ProbeFailure::new(
                FailureCode::Tls,
                format!(
                    "the server requires TLS before AUTH: {}; set security to starttls or tls",
                    reply.quoted(hidden)
                ),
            )),
            _ => Err(ProbeFailure::new(
                FailureCode::Protocol,
                format!("the server did not accept the login: {}", reply.quoted(hidden)),
            )),
        }
    }
}

/// The base64 forms of the credentials, as AUTH sends them.
struct Encoded<'a> {
    plain: &'a str,
    username: &'a str,
    password: &'a str,
}

/// One SMTP answer: its code and the text of each line.
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    /// The answer as quoted in a message.
    fn quoted(&self, hidden: &[&str]) -> String {
        format!("{} {}", self.code, quote(&self.lines.join(" "), hidden))
    }
}

/// What an EHLO answer says the server can do.
struct Extensions {
    /// The name the server gives itself.
    name: String,
    starttls: bool,
    /// AUTH mechanisms, upper case, in the server's order.
    auth: Vec<String>,
}

async fn read_reply(conn: &mut MailConn) -> Result<Reply, ProbeFailure> {
    let mut lines = Vec::new();
    loop {
        let line = conn.read_line().await?;
        let code = line
            .get(..3)
            .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|c| c.parse::<u16>().ok());
        let separator = line.as_bytes().get(3).copied();
        let (Some(code), None | Some(b' ' | b'-')) = (code, separator) else {
            return Err(ProbeFailure::new(
                FailureCode::Protocol,
                format!(
                    "the server's answer `{}` is not SMTP; check the port (587 or 25 with starttls, 465 with tls)",
                    quote(&line, &[])
                ),
            ));
        };
        if lines.len() >= MAX_REPLY_LINES {
            return Err(ProbeFailure::new(
                FailureCode::Protocol,
                format!("the server's answer runs past {MAX_REPLY_LINES} lines"),
            ));
        }
        lines.push(line.get(4..).unwrap_or_default().to_owned());
        if separator != Some(b'-') {
            return Ok(Reply { code, lines });
        }
    }
}

async fn command(conn: &mut MailConn, line: &str) -> Result<Reply, ProbeFailure> {
    conn.send(line).await?;
    read_reply(conn).await
}

async fn ehlo(conn: &mut MailConn, client: IpAddr, hidden: &[&str]) -> Result<Extensions, ProbeFailure> {
    // An address literal: the probe has no host name of its own to give.
    let literal = match client {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    };
    let reply = command(conn, &format!("EHLO {literal}")).await?;
    if reply.code != 250 {
        return Err(ProbeFailure::new(
            FailureCode::Protocol,
            format!("the server refused EHLO: {}", reply.quoted(hidden)),
        ));
    }
    let name = reply.lines[0].split_whitespace().next().unwrap_or_default();
    let mut extensions = Extensions {
        name: quote(name, hidden),
        starttls: false,
        auth: Vec::new(),
    };
    for line in &reply.lines[1..] {
        let upper = line.to_ascii_uppercase();
        let mut words = upper.split_whitespace();
        let mechanisms: Vec<&str> = match words.next() {
            Some("STARTTLS") => {
                extensions.starttls = true;
                continue;
            }
            Some("AUTH") => words.collect(),
            // The pre-standard form some servers still send beside AUTH.
            Some(word) if word.starts_with("AUTH=") => std::iter::once(&word[5..]).chain(words).collect(),
            _ => continue,
        };
        for mechanism in mechanisms {
            let mechanism = quote(mechanism, hidden);
            if !extensions.auth.contains(&mechanism) && extensions.auth.len() < 20 {
                extensions.auth.push(mechanism);
            }
        }
    }
    Ok(extensions)
}

/// Probes an SMTP submission server for organization `org_id`: connect,
/// TLS per `security`, log in, optionally try the sender, QUIT.
pub async fn probe(ctx: &ProbeContext, org_id: &OrgId, req: &SmtpRequest) -> ProbeResult {
    run(ctx, org_id, req).await
}
