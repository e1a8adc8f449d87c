//! The IMAP conversation under the probe: tagged commands, untagged
//! responses with their literals folded in, capabilities and LOGIN's
//! argument encoding, each bounded in count on top of [`super::mail_io`]'s
//! byte caps.

use super::mail_io::{quote, MailConn};
use super::{FailureCode, ProbeFailure};

/// Literals folded into one response at most.
const MAX_LITERALS: usize = 16;

/// Untagged responses to one command at most (EXAMINE sends about eight).
const MAX_UNTAGGED: usize = 200;

/// How a command ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Status {
    Ok,
    No,
    Bad,
}

/// A command's untagged responses and its tagged completion.
pub(super) struct Done {
    pub(super) status: Status,
    /// The completion's text (after OK/NO/BAD).
    pub(super) text: String,
    pub(super) untagged: Vec<String>,
}

/// A connection and its next command tag.
pub(super) struct Session {
    pub(super) conn: MailConn,
    tags: u32,
}

impl Session {
    pub(super) fn new(conn: MailConn) -> Self {
        Self { conn, tags: 0 }
    }

    fn next_tag(&mut self) -> String {
        self.tags += 1;
        format!("c{}", self.tags)
    }

    /// One response line, with any literals (`{n}` then n bytes) it
    /// announced folded in.
    pub(super) async fn read_response(&mut self) -> Result<String, ProbeFailure> {
        let mut line = self.conn.read_line().await?;
        for _ in 0..MAX_LITERALS {
            let Some(n) = literal_length(&line) else {
                return Ok(line);
            };
            let bytes = self.conn.read_bytes(n).await?;
            line.push_str(&String::from_utf8_lossy(&bytes));
            line.push_str(&self.conn.read_line().await?);
        }
        Err(ProbeFailure::new(
            FailureCode::Protocol,
            "the server's response carries too many literals",
        ))
    }

    /// Sends `command` under a new tag and reads up to its completion.
    pub(super) async fn command(&mut self, command: &str) -> Result<Done, ProbeFailure> {
        let tag = self.next_tag();
        self.conn.send(&format!("{tag} {command}")).await?;
        self.finish(&tag).await
    }

    /// Reads untagged responses until the completion of `tag`.
    async fn finish(&mut self, tag: &str) -> Result<Done, ProbeFailure> {
        let mut untagged = Vec::new();
        loop {
            let line = self.read_response().await?;
            if let Some(done) = completion(&line, tag) {
                return done.map(|(status, text)| Done { status, text, untagged });
            }
            if !(line.starts_with("* ") || line.starts_with('+')) {
                return Err(not_imap(&line));
            }
            if untagged.len() >= MAX_UNTAGGED {
                return Err(ProbeFailure::new(
                    FailureCode::Protocol,
                    format!("the server sent more than {MAX_UNTAGGED} responses to one command"),
                ));
            }
            untagged.push(line);
        }
    }

    /// The server's capabilities, upper case.
    pub(super) async fn capabilities(&mut self) -> Result<Vec<String>, ProbeFailure> {
        let done = self.command("CAPABILITY").await?;
        let listed = done.untagged.iter().find_map(|line| {
            let rest = line.get(2..)?;
            let (word, list) = rest.split_once(' ').unwrap_or((rest, ""));
            word.eq_ignore_ascii_case("CAPABILITY").then(|| words(list))
        });
        match (done.status, listed) {
            (Status::Ok, Some(list)) => Ok(list),
            _ => Err(ProbeFailure::new(
                FailureCode::Protocol,
                "the server did not list its capabilities; is this an IMAP server?",
            )),
        }
    }

    /// LOGIN with both arguments quoted, or sent as literals when they are
    /// not printable ASCII (a literal waits for the server's go-ahead).
    pub(super) async fn login(&mut self, username: &str, password: &str) -> Result<Done, ProbeFailure> {
        let tag = self.next_tag();
        let mut line = format!("{tag} LOGIN");
        for argument in [username, password] {
            line.push(' ');
            if let Some(quoted) = quoted(argument) {
                line.push_str(&quoted);
                continue;
            }
            line.push_str(&format!("{{{}}}", argument.len()));
            self.conn.send(&line).await?;
            loop {
                let reply = self.read_response().await?;
                if reply.starts_with('+') {
                    break;
                }
                if let Some(done) = completion(&reply, &tag) {
                    return done.map(|(status, text)| Done {
                        status,
                        text,
                        untagged: Vec::new(),
                    });
                }
                if !reply.starts_with("* ") {
                    return Err(not_imap(&reply));
                }
            }
            argument.clone_into(&mut line);
        }
        self.conn.send(&line).await?;
        self.finish(&tag).await
    }
}

/// `Some` when `line` completes command `tag`: its status and text.
fn completion(line: &str, tag: &str) -> Option<Result<(Status, String), ProbeFailure>> {
    let rest = line.strip_prefix(tag)?.strip_prefix(' ')?;
    let (word, text) = rest.split_once(' ').unwrap_or((rest, ""));
    let status = match word.to_ascii_uppercase().as_str() {
        "OK" => Status::Ok,
        "NO" => Status::No,
        "BAD" => Status::Bad,
        _ => return Some(Err(not_imap(line))),
    };
    Some(Ok((status, text.to_owned())))
}

/// The length of the literal that ends `line` (`{12}` or `{12+}`).
fn literal_length(line: &str) -> Option<usize> {
    let inner = line.strip_suffix('}')?;
    let open = inner.rfind('{')?;
    inner[open + 1..].trim_end_matches('+').parse().ok()
}

/// `s` as an IMAP quoted string, when it is printable ASCII.
fn quoted(s: &str) -> Option<String> {
    s.bytes().all(|b| (0x20..0x7f).contains(&b)).then(|| {
        let escaped = s.replace('\\', "\\\\").replace('"', "\\\"");
        format!("\"{escaped}\"")
    })
}

/// The capabilities in a greeting's `[CAPABILITY …]` code, if any.
pub(super) fn capabilities_in(greeting: &str) -> Option<Vec<String>> {
    let upper = greeting.to_ascii_uppercase();
    let start = upper.find("[CAPABILITY ")? + "[CAPABILITY ".len();
    let end = upper[start..].find(']')? + start;
    Some(words(&upper[start..end]))
}

fn words(list: &str) -> Vec<String> {
    list.split_whitespace().take(200).map(str::to_ascii_uppercase).collect()
}

pub(super) fn not_imap(line: &str) -> ProbeFailure {
    ProbeFailure::new(
        FailureCode::Protocol,
        format!(
            "the server's answer `{}` is not IMAP; check the port (993 with tls, 143 with starttls)",
            quote(line, &[])
        ),
    )
}
