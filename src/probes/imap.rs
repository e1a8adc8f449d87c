//! The IMAP probe: greeting, TLS (implicit or STARTTLS), LOGIN, `EXAMINE
//! INBOX` (read-only: no flag changes) for its message count, LOGOUT.
//!
//! Written by hand ([`super::imap_session`] over [`super::mail_io`]), on the
//! socket the egress guard opened to the checked address, with every read
//! bounded; five commands do not need an IMAP client library.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::ids::OrgId;

use super::imap_session::{capabilities_in, not_imap, Session, Status};
use super::mail_io::{quote, MailLogin, Security};
use super::{
    check_host_port, into_result, run, stage, FailureCode, FieldError, Pool, Probe, ProbeContext, ProbeFailure,
    ProbeResult, Slot,
};

/// How long the probe waits for the answer to LOGOUT.
const LOGOUT_WAIT: Duration = Duration::from_millis(500);

/// Body of an IMAP connection test; the `imap` provider's fields.
#[derive(Debug, Deserialize)]
pub struct ImapRequest {
    /// Host, port, login, `security` (`tls` by default, `starttls` on 143, or `none`) and `tls_verify`.
    #[serde(flatten)]
    pub login: MailLogin,
}

impl ImapRequest {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.login.port_or(993)
    }

    fn security(&self) -> Result<Security, FieldError> {
        self.login.security_or(Security::Tls)
    }

    fn password(&self) -> &str {
        self.login.password()
    }
}

/// Characters IMAP cannot carry in a LOGIN argument, quoted or literal.
fn unsendable(s: &str) -> bool {
    s.contains(['\0', '\r', '\n'])
}

impl Probe for ImapRequest {
    const NAME: &'static str = "imap";
    const POOL: Pool = Pool::Mail;

    fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        check_host_port(&self.login.host, self.login.port, &mut errors);
        if self.login.username.trim().is_empty() {
            errors.push(FieldError::new("username", "is required"));
        } else if unsendable(&self.login.username) {
            errors.push(FieldError::new("username", "must not contain NUL or line breaks"));
        }
        if self.password().is_empty() {
            errors.push(FieldError::new("password", "is required"));
        } else if unsendable(self.password()) {
            errors.push(FieldError::new("password", "must not contain NUL or line breaks"));
        }
        if let Err(e) = self.security() {
            errors.push(e);
        }
        into_result(errors)
    }

    async fn execute(&self, ctx: &ProbeContext, _slot: Slot) -> Result<Value, (Value, ProbeFailure)> {
        let mut facts = json!({});
        let (conn, security, _) = match self
            .login
            .open(ctx, self.port(), self.security(), "IMAP", &mut facts)
            .await
        {
            Ok(opened) => opened,
            Err(failure) => return Err((facts, failure)),
        };
        let mut session = Session::new(conn);
        let outcome = self.dialogue(ctx, &mut session, security, &mut facts).await;
        facts["tls"] = json!(session.conn.is_tls());
        let _ = tokio::time::timeout(LOGOUT_WAIT, async {
            let _ = session.command("LOGOUT").await;
            session.conn.close().await;
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

impl ImapRequest {
    /// Everything between connecting and LOGOUT; facts are added on the way.
    async fn dialogue(
        &self,
        ctx: &ProbeContext,
        session: &mut Session,
        security: Security,
        facts: &mut Value,
    ) -> Result<(), ProbeFailure> {
        let limit = ctx.timeouts.stage;
        let hidden = [self.password()];
        if security == Security::Tls {
            stage("the TLS handshake", limit, session.conn.start_tls()).await?;
        }
        let greeting = stage("the IMAP greeting", limit, session.read_response()).await?;
        let upper = greeting.to_ascii_uppercase();
        if upper.starts_with("* OK") {
            facts["greeting"] = json!(quote(greeting[4..].trim(), &hidden));
        } else if upper.starts_with("* PREAUTH") {
            return Err(ProbeFailure::new(
                FailureCode::Protocol,
                "the server logged the connection in before any password (PREAUTH), so the credentials \
                 were not checked",
            ));
        } else if upper.starts_with("* BYE") {
            return Err(ProbeFailure::new(
                FailureCode::Protocol,
                format!("the server refused the connection: {}", quote(&greeting, &hidden)),
            ));
        } else {
            return Err(not_imap(&greeting));
        }
        let mut capabilities = match capabilities_in(&greeting) {
            Some(found) => found,
            None => stage("CAPABILITY", limit, session.capabilities()).await?,
        };
        if security == Security::StartTls {
            if !capabilities.iter().any(|c| c == "STARTTLS") {
                return Err(ProbeFailure::new(
                    FailureCode::Tls,
                    "the server does not offer STARTTLS, so the password would travel in clear text; use \
                     security tls for an IMAPS port (993), or none only on a network you trust",
                ));
            }
            let go = stage("STARTTLS", limit, session.command("STARTTLS")).await?;
            if go.status != Status::Ok {
                return Err(ProbeFailure::new(
                    FailureCode::Tls,
                    format!("the server refused STARTTLS: {}", quote(&go.text, &hidden)),
                ));
            }
            stage("the TLS handshake", limit, session.conn.start_tls()).await?;
            // What the server said before TLS may have been forged.
            capabilities = stage("CAPABILITY", limit, session.capabilities()).await?;
        }
        facts["tls"] = json!(session.conn.is_tls());
        let mechanisms: Vec<String> = capabilities
            .iter()
            .filter_map(|c| c.strip_prefix("AUTH="))
            .map(|m| quote(m, &hidden))
            .collect();
        facts["auth_mechanisms"] = json!(mechanisms);
        if capabilities.iter().any(|c| c == "LOGINDISABLED") {
            return Err(if session.conn.is_tls() {
                ProbeFailure::new(FailureCode::Protocol, "the server does not allow LOGIN")
            } else {
                ProbeFailure::new(
                    FailureCode::Tls,
                    "the server refuses LOGIN without TLS; set security to tls (port 993) or starttls (port 143)",
                )
            });
        }
        let login = stage("the login", limit, session.login(&self.login.username, self.password())).await?;
        match login.status {
            Status::Ok => {}
            Status::No if login.text.to_ascii_uppercase().starts_with("[PRIVACYREQUIRED]") => {
                return Err(ProbeFailure::new(
                    FailureCode::Tls,
                    format!("the server requires TLS before LOGIN: {}", quote(&login.text, &hidden)),
                ))
            }
            Status::No => {
                return Err(ProbeFailure::new(
                    FailureCode::AuthFailed,
                    format!(
                        "the server rejected user `{}` or its password: {}",
                        self.login.username,
                        quote(&login.text, &hidden)
                    ),
                ))
            }
            Status::Bad => {
                return Err(ProbeFailure::new(
                    FailureCode::Protocol,
                    format!("the server did not understand LOGIN: {}", quote(&login.text, &hidden)),
                ))
            }
        }
        let inbox = stage("EXAMINE INBOX", limit, session.command("EXAMINE INBOX")).await?;
        if inbox.status != Status::Ok {
            return Err(ProbeFailure::new(
                FailureCode::NotFound,
                format!(
                    "logged in, but INBOX could not be opened: {}",
                    quote(&inbox.text, &hidden)
                ),
            ));
        }
        let exists = inbox.untagged.iter().find_map(|line| {
            let mut words = line.split_whitespace().skip(1);
            let count = words.next()?.parse::<u64>().ok()?;
            words.next()?.eq_ignore_ascii_case("EXISTS").then_some(count)
        });
        facts["inbox_exists"] = json!(true);
        facts["inbox_messages"] = json!(exists);
        Ok(())
    }
}

/// Probes an IMAP server for organization `org_id`: connect, TLS per
/// `security`, LOGIN, EXAMINE INBOX, LOGOUT.
pub async fn probe(ctx: &ProbeContext, org_id: &OrgId, req: &ImapRequest) -> ProbeResult {
    run(ctx, org_id, req).await
}
