//! A TCP proxy between credgate and the real PostgreSQL that reads the
//! frontend protocol and can withhold the answer to one `COMMIT`: the
//! server commits, and credgate never hears so (the connection is closed).
//! It can also fall silent: every connection stays open, and nothing the
//! server says reaches credgate (a dead peer, a firewall that drops),
//! until it heals and closes the connections it had silenced. It fires for the first transaction that ran a statement
//! containing a marker (seen in a simple query, or in the `Parse` of a
//! prepared statement that a later `Bind` names).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What happens to the answer of the withheld `COMMIT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Withhold {
    /// The server's answer is read and dropped, and both sockets closed.
    Close,
}

#[derive(Default)]
struct Plan {
    armed: Option<(String, Withhold)>,
    fired: usize,
    silent: bool,
}

/// The proxy; `url` is the database's URL through it.
pub struct FaultProxy {
    pub url: String,
    plan: Arc<Mutex<Plan>>,
    /// Bumped when the proxy heals: silenced connections close.
    heal: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy in front of the PostgreSQL database of `db_url`
    /// (`postgres://user@127.0.0.1:5432/name`).
    pub async fn start(db_url: &str) -> Self {
        let upstream = url::Url::parse(db_url).unwrap();
        let target = format!("{}:{}", upstream.host_str().unwrap(), upstream.port().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut through = upstream.clone();
        through.set_port(Some(port)).unwrap();
        through.set_query(Some("sslmode=disable"));
        let plan = Arc::new(Mutex::new(Plan::default()));
        let (heal, healed) = tokio::sync::watch::channel(0);
        let shared = plan.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let (target, plan, healed) = (target.clone(), shared.clone(), healed.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        relay(client, server, plan, healed).await;
                    }
                });
            }
        });
        Self {
            url: through.to_string(),
            plan,
            heal,
            task,
        }
    }

    /// From now on nothing the server says reaches credgate; connections
    /// stay open.
    pub fn fall_silent(&self) {
        self.plan.lock().unwrap().silent = true;
    }

    /// Answers pass again; the connections that lost answers are closed.
    pub fn heal(&self) {
        self.plan.lock().unwrap().silent = false;
        self.heal.send_modify(|g| *g += 1);
    }

    /// New connections are answered again; the ones that lost answers stay
    /// open and silent for ever, as connections to a peer that died do.
    pub fn heal_new_connections(&self) {
        self.plan.lock().unwrap().silent = false;
    }

    /// Withholds the answer to the next `COMMIT` of a transaction that ran
    /// a statement containing `marker` (once).
    pub fn withhold_commit_after(&self, marker: &str, how: Withhold) {
        self.plan.lock().unwrap().armed = Some((marker.to_owned(), how));
    }

    /// How many `COMMIT` answers were withheld so far.
    pub fn fired(&self) -> usize {
        self.plan.lock().unwrap().fired
    }
}

/// Per connection: whether the open transaction ran the marked statement,
/// and what to do with the server's answers.
#[derive(Default)]
struct Conn {
    marked: bool,
    withholding: Option<Withhold>,
}

async fn relay(
    client: TcpStream,
    server: TcpStream,
    plan: Arc<Mutex<Plan>>,
    mut healed: tokio::sync::watch::Receiver<u64>,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let conn = Arc::new(Mutex::new(Conn::default()));
    let answers = {
        let (conn, plan) = (conn.clone(), plan.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            let mut lost_answers = false;
            loop {
                let n = tokio::select! {
                    read = server_rx.read(&mut buf) => match read {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    },
                    _ = healed.changed() => {
                        if lost_answers {
                            let _ = client_tx.shutdown().await;
                            return;
                        }
                        continue;
                    }
                };
                if lost_answers || plan.lock().unwrap().silent {
                    lost_answers = true;
                    continue;
                }
                let withholding = conn.lock().unwrap().withholding;
                match withholding {
                    None => {
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                    // The answer came and is dropped: credgate hears nothing.
                    Some(Withhold::Close) => {
                        let _ = client_tx.shutdown().await;
                        return;
                    }
                }
            }
        })
    };
    let mut statements: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    // The startup phase: length-prefixed messages without a type byte.
    loop {
        let Ok(len) = client_rx.read_i32().await else { return };
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        if client_rx.read_exact(&mut body).await.is_err() {
            return;
        }
        let mut raw = len.to_be_bytes().to_vec();
        raw.extend_from_slice(&body);
        if server_tx.write_all(&raw).await.is_err() {
            return;
        }
        let code = body.get(..4).map(|c| i32::from_be_bytes(c.try_into().unwrap()));
        // SSLRequest and GSSENCRequest are followed by the real startup.
        if !matches!(code, Some(80_877_103 | 80_877_104)) {
            break;
        }
    }
    while let Ok(kind) = client_rx.read_u8().await {
        let Ok(len) = client_rx.read_i32().await else { break };
        let mut body = vec![0u8; (len as usize).saturating_sub(4)];
        if client_rx.read_exact(&mut body).await.is_err() {
            break;
        }
        let text_of = |kind: u8, body: &[u8], statements: &HashMap<Vec<u8>, Vec<u8>>| -> Vec<u8> {
            match kind {
                b'Q' => body.to_vec(),
                b'P' => cstrings(body).get(1).cloned().unwrap_or_default(),
                b'B' => cstrings(body)
                    .get(1)
                    .and_then(|name| statements.get(name))
                    .cloned()
                    .unwrap_or_default(),
                _ => Vec::new(),
            }
        };
        if kind == b'P' {
            let parts = cstrings(&body);
            if let (Some(name), Some(query)) = (parts.first(), parts.get(1)) {
                statements.insert(name.clone(), query.clone());
            }
        }
        let text = String::from_utf8_lossy(&text_of(kind, &body, &statements)).to_string();
        {
            let mut plan = plan.lock().unwrap();
            let mut c = conn.lock().unwrap();
            let word = text.trim().trim_end_matches(['\0', ';']).trim().to_ascii_uppercase();
            if let Some((marker, how)) = plan.armed.clone() {
                if text.contains(&marker) {
                    c.marked = true;
                }
                if kind == b'Q' && word == "COMMIT" && c.marked {
                    c.withholding = Some(how);
                    plan.armed = None;
                    plan.fired += 1;
                }
            }
            if kind == b'Q' && (word == "COMMIT" || word == "ROLLBACK") {
                c.marked = false;
            }
        }
        let mut raw = vec![kind];
        raw.extend_from_slice(&len.to_be_bytes());
        raw.extend_from_slice(&body);
        if server_tx.write_all(&raw).await.is_err() {
            break;
        }
    }
    answers.abort();
}

/// The NUL-terminated strings at the start of a message body.
fn cstrings(body: &[u8]) -> Vec<Vec<u8>> {
    body.split(|b| *b == 0).map(<[u8]>::to_vec).collect()
}
