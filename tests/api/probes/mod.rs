//! Tests of the egress guard and the test-connection probes against real
//! servers: an OpenSSH sshd, a password-checking PostgreSQL cluster, a
//! private dovecot and aiosmtpd for the mail probes, and
//! wiremock stand-ins for OpenAI, Anthropic and Telegram; and hostile
//! stand-ins (an SFTP server in Python, a PostgreSQL one in Rust) that try to
//! keep a probe's thread, socket or memory.

mod declared;
mod egress;
mod http;
mod llm;
mod mail;
mod mail_servers;
mod own_process;
mod pg_cluster;
mod pg_hostile;
mod postgres;
mod requests;
mod sftp;
mod sftp_hostile;
mod slots;
mod sshd;
mod telegram;

use std::sync::Arc;
use std::time::Duration;

use credgate::egress::EgressPolicy;
use credgate::ids::OrgId;
use credgate::probes::{ApiBaseUrls, ProbeContext, ProbeResult, ProbeTimeouts};

/// The organization the probes of these tests run for.
static ORG: std::sync::LazyLock<OrgId> = std::sync::LazyLock::new(|| org("org-probes"));

/// A made-up organization, the same for the same name (probes only count
/// their slots by it).
fn org(name: &str) -> OrgId {
    let n = name
        .bytes()
        .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    OrgId::parse(&format!("00000000-0000-4000-8000-{:012x}", n & 0xffff_ffff_ffff)).unwrap()
}

/// A policy that lets the tests reach their loopback servers.
fn loopback_policy() -> Arc<EgressPolicy> {
    Arc::new(EgressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]))
}

/// A context that may reach loopback, with test-sized time limits.
fn ctx() -> ProbeContext {
    ctx_with(loopback_policy(), Duration::from_secs(5), ApiBaseUrls::default())
}

fn ctx_with(egress: Arc<EgressPolicy>, stage: Duration, base_urls: ApiBaseUrls) -> ProbeContext {
    let timeouts = ProbeTimeouts {
        connect: Duration::from_secs(3),
        stage,
        total: Duration::from_secs(20),
    };
    ProbeContext::new(egress, timeouts, base_urls).expect("context")
}

/// The failure code of a result, or "ok".
fn code(result: &ProbeResult) -> &'static str {
    match (&result.error, result.ok) {
        (None, true) => "ok",
        (Some(failure), false) => failure.code.as_str(),
        _ => panic!("ok and error disagree: {result:?}"),
    }
}

/// Asserts that no secret appears anywhere in the serialized result.
fn assert_no_secret(result: &ProbeResult, secrets: &[&str]) {
    let json = serde_json::to_string(result).unwrap();
    for secret in secrets {
        assert!(!json.contains(secret), "secret leaked into {json}");
    }
}
