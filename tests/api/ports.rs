//! Loopback ports for servers a test starts in another process (`credgate
//! serve`, sshd, dovecot, a PostgreSQL cluster) or for a port that must
//! stay closed.
//!
//! Binding port 0 and closing the socket again leaves a window in which
//! another test's `bind(":0")`, or an outgoing connection, can be given the
//! same port by the kernel: both draw from the ephemeral range. These ports
//! come from below that range, where the kernel hands out nothing, and
//! each is handed out once per run.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

/// How many ports below the ephemeral range are used.
const SPAN: u32 = 8_000;

/// The kernel's ephemeral range's first port (32768 when unreadable).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// A loopback port nothing listens on, that no other test of this run is
/// given and that the kernel gives no socket of its own accord.
pub fn unused_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let high = ephemeral_low();
    assert!(high > SPAN + 1024, "the ephemeral range starts too low: {high}");
    // Another test process at the same time most likely starts elsewhere.
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = high - SPAN + (start + n) % SPAN;
        // Something of the machine's own (a broker, a database) may hold it.
        if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
    panic!("no free port below the ephemeral range");
}

/// [`unused_port`] on 127.0.0.1.
pub fn unused_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], unused_port()))
}

#[test]
fn ports_are_free_distinct_and_never_ones_the_kernel_hands_out() {
    let low = ephemeral_low();
    let ports: Vec<u16> = (0..50).map(|_| unused_port()).collect();

    let mut distinct = ports.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ports.len(), "{ports:?}");
    assert!(ports.iter().all(|&p| u32::from(p) < low), "{ports:?} against {low}");
    for port in ports {
        std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    }
    // What the kernel picks for port 0 is never among them.
    let picked = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(u32::from(picked) >= low, "{picked}");
}
