//! The one place that decides which addresses credgate may reach.
//!
//! Every outbound connection to an address a user supplied (probes, provider
//! calls) goes through an [`EgressPolicy`]: the host is resolved once, every
//! resulting address is checked against the list of non-public ranges (unless
//! it is inside `CREDGATE_EGRESS_ALLOW`), and the connection is then opened to
//! exactly the address that was checked, so a second DNS answer (DNS
//! rebinding) can never slip a private address in. HTTP clients built here
//! use the same check as their resolver, never follow redirects and ignore
//! proxy environment variables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpStream;
use url::{Host, Url};

mod gateway_client;
pub use gateway_client::GatewayClient;

/// Why an outbound connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The host is, or resolved to, an address credgate may not reach. The
    /// message names neither: telling a caller which private address a name
    /// resolves to would map the inside network for them. The address is
    /// logged on the server instead.
    #[error("the address is not allowed by credgate's egress policy")]
    Denied {
        /// The host as the user gave it.
        host: String,
        /// The first address that was refused.
        addr: IpAddr,
    },
    /// The name could not be resolved.
    #[error("could not resolve {host}: {message}")]
    Dns {
        /// The host as the user gave it.
        host: String,
        /// What the resolver said.
        message: String,
    },
    /// The address was reached but nothing listens on the port.
    #[error("connection to {addr} was refused")]
    Refused {
        /// The checked address that refused.
        addr: SocketAddr,
    },
    /// Resolving or connecting took longer than allowed.
    #[error("connecting to {host} timed out after {}s", .after.as_secs_f32())]
    Timeout {
        /// The host as the user gave it.
        host: String,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// Another socket error while connecting.
    #[error("could not connect to {addr}: {source}")]
    Io {
        /// The checked address.
        addr: SocketAddr,
        /// The socket error.
        source: std::io::Error,
    },
    /// The URL cannot be used for an outbound call (scheme, missing host).
    #[error("unusable URL: {0}")]
    Url(String),
    /// The HTTP client could not be built.
    #[error("could not build the HTTP client: {0}")]
    Client(String),
}

/// Which addresses may be reached: public addresses, plus the allow list.
#[derive(Debug, Clone, Default)]
pub struct EgressPolicy {
    allow: Vec<IpNet>,
}

impl EgressPolicy {
    /// A policy that admits public addresses and those inside `allow`.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Parses the comma-separated `CREDGATE_EGRESS_ALLOW` value. A bare
    /// address counts as a single-host network; blanks are ignored.
    pub fn parse_allow_list(s: &str) -> Result<Vec<IpNet>, String> {
        s.split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(|part| {
                part.parse::<IpNet>()
                    .or_else(|_| part.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("CREDGATE_EGRESS_ALLOW: `{part}` is not a CIDR"))
            })
            .collect()
    }

    /// Whether `ip` may be reached under this policy.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let embedded = embedded_ipv4(ip).map(IpAddr::V4);
        let allowed = |candidate: IpAddr| self.allow.iter().any(|net| net.contains(&candidate));
        allowed(ip) || embedded.is_some_and(allowed) || is_public(ip)
    }

    /// Checks one address that `host` stands for.
    pub fn check(&self, host: &str, ip: IpAddr) -> Result<(), EgressError> {
        if self.permits(ip) {
            Ok(())
        } else {
            Err(denied(host, ip))
        }
    }

    /// Resolves `host` once and returns the permitted addresses, in resolver
    /// order. Fails with `Denied` when every address is refused.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, EgressError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let found: Vec<SocketAddr> = match bare.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| EgressError::Dns {
                    host: host.to_owned(),
                    message: dns_message(&e),
                })?
                .collect(),
        };
        let Some(first) = found.first() else {
            return Err(EgressError::Dns {
                host: host.to_owned(),
                message: "no addresses".into(),
            });
        };
        let first_ip = first.ip();
        let permitted: Vec<SocketAddr> = found.into_iter().filter(|addr| self.permits(addr.ip())).collect();
        if permitted.is_empty() {
            return Err(denied(host, first_ip));
        }
        Ok(permitted)
    }

    /// Resolves `host`, then connects to the checked addresses in turn, all
    /// within `timeout`. Returns the stream and the address it reached.
    pub async fn connect_tcp(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(TcpStream, SocketAddr), EgressError> {
        within(host, timeout, async {
            let addrs = self.resolve(host, port).await?;
            connect_first(host, addrs, timeout).await
        })
        .await
    }

    /// Connects to one address given as an IP (such as PostgreSQL's
    /// `hostaddr`) after checking it; `host` names it in errors.
    pub async fn connect_addr(
        &self,
        host: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, EgressError> {
        self.check(host, addr.ip())?;
        within(host, timeout, connect_first(host, vec![addr], timeout))
            .await
            .map(|(stream, _)| stream)
    }

    /// Checks a URL before an HTTP call: the scheme must be http or https,
    /// and an IP-literal host (which an HTTP client never sends through a
    /// resolver) must be permitted. Named hosts are checked by the resolver
    /// of [`EgressPolicy::http_client`].
    pub fn check_url(&self, url: &Url) -> Result<(), EgressError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(EgressError::Url(format!(
                "scheme `{}` is not http or https",
                url.scheme()
            )));
        }
        match url.host() {
            None => Err(EgressError::Url("the URL has no host".into())),
            // The address is written out only for a refusal's message.
            Some(Host::Ipv4(ip)) if self.permits(IpAddr::V4(ip)) => Ok(()),
            Some(Host::Ipv6(ip)) if self.permits(IpAddr::V6(ip)) => Ok(()),
            Some(Host::Ipv4(ip)) => self.check(&ip.to_string(), IpAddr::V4(ip)),
            Some(Host::Ipv6(ip)) => self.check(&ip.to_string(), IpAddr::V6(ip)),
            Some(Host::Domain(_)) => Ok(()),
        }
    }

    /// An HTTP client whose every connection goes through this policy: its
    /// resolver refuses non-permitted addresses, redirects are not followed,
    /// proxies from the environment are ignored (they would bypass the
    /// check), and connect and overall time limits apply.
    pub fn http_client(
        self: &Arc<Self>,
        connect_timeout: Duration,
        timeout: Duration,
    ) -> Result<reqwest::Client, EgressError> {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(GuardedResolver(Arc::clone(self))))
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .user_agent(concat!("credgate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EgressError::Client(e.to_string()))
    }
}

async fn within<T>(
    host: &str,
    timeout: Duration,
    fut: impl std::future::Future<Output = Result<T, EgressError>>,
) -> Result<T, EgressError> {
    tokio::time::timeout(timeout, fut)
        .await
        .unwrap_or_else(|_| Err(timed_out(host, timeout)))
}

fn timed_out(host: &str, after: Duration) -> EgressError {
    EgressError::Timeout {
        host: host.to_owned(),
        after,
    }
}

/// Connects to the first of `addrs` (all already checked) that answers.
async fn connect_first(
    host: &str,
    addrs: Vec<SocketAddr>,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), EgressError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = Some(EgressError::Refused { addr });
            }
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                last = Some(timed_out(host, timeout));
            }
            Err(source) => last = Some(EgressError::Io { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| timed_out(host, timeout)))
}

/// The resolver that `reqwest` uses for named hosts.
struct GuardedResolver(Arc<EgressPolicy>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = Arc::clone(&self.0);
        Box::pin(async move {
            // Port 0: the HTTP connector fills in the URL's port.
            let addrs = policy.resolve(name.as_str(), 0).await?;
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}

/// The refusal of `addr`, which `host` stands for; the address goes to the
/// log, where an operator deciding on `CREDGATE_EGRESS_ALLOW` needs it, and
/// not into the error's message.
fn denied(host: &str, addr: IpAddr) -> EgressError {
    tracing::info!(
        host,
        %addr,
        "egress denied: not a public address and not in CREDGATE_EGRESS_ALLOW"
    );
    EgressError::Denied {
        host: host.to_owned(),
        addr,
    }
}

fn dns_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    if text.contains("failed to lookup address") || text.contains("Name or service not known") {
        "no such host".into()
    } else {
        text
    }
}

/// The IPv4 address carried inside an IPv6 address that reaches an IPv4
/// host: IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96) and 6to4.
fn embedded_ipv4(ip: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = ip else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..5] == [0; 5] && (s[5] == 0xffff || (s[5] == 0 && u32::from(low) > 1)) {
        return Some(low);
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(low);
    }
    if s[0] == 0x2002 {
        let [a, b] = s[1].to_be_bytes();
        let [c, d] = s[2].to_be_bytes();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

/// Whether `ip` is a public unicast address. IPv6 forms that embed an IPv4
/// address are judged by that address.
pub fn is_public(ip: IpAddr) -> bool {
    if let Some(v4) = embedded_ipv4(ip) {
        return is_public_v4(v4);
    }
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

const DENIED_V4: &[(u32, u8)] = &[
    (0x0000_0000, 8),  // 0.0.0.0/8 "this network"
    (0x0a00_0000, 8),  // 10/8 private
    (0x6440_0000, 10), // 100.64/10 carrier-grade NAT
    (0x7f00_0000, 8),  // 127/8 loopback
    (0xa9fe_0000, 16), // 169.254/16 link-local, cloud metadata
    (0xac10_0000, 12), // 172.16/12 private
    (0xc000_0000, 24), // 192.0.0/24 IETF protocol assignments
    (0xc000_0200, 24), // 192.0.2/24 documentation
    (0xc058_6300, 24), // 192.88.99/24 6to4 relay anycast
    (0xc0a8_0000, 16), // 192.168/16 private
    (0xc612_0000, 15), // 198.18/15 benchmarking
    (0xc633_6400, 24), // 198.51.100/24 documentation
    (0xcb00_7100, 24), // 203.0.113/24 documentation
    (0xe000_0000, 4),  // 224/4 multicast
    (0xf000_0000, 4),  // 240/4 reserved, and 255.255.255.255 broadcast
];

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let bits = u32::from(ip);
    !DENIED_V4
        .iter()
        .any(|&(net, len)| bits >> (32 - len) == net >> (32 - len))
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Only global unicast (2000::/3) can be public; that excludes ::, ::1,
    // fc00::/7, fe80::/10, fec0::/10, ff00::/8, 100::/64 and 64:ff9b:1::/48.
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    let in_2001_23 = s[0] == 0x2001 && s[1] < 0x0200; // IETF protocol, Teredo
    let documentation = (s[0] == 0x2001 && s[1] == 0x0db8) || s[0] & 0xfff0 == 0x3ff0;
    !(in_2001_23 || documentation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_ipv4_is_found_in_every_wrapping() {
        for text in ["::ffff:127.0.0.1", "::127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::"] {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(embedded_ipv4(ip), Some(Ipv4Addr::LOCALHOST), "{text}");
        }
    }
}
