//! The egress guard: denied ranges, allow list, DNS, URLs, HTTP client.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use credgate::egress::{EgressError, EgressPolicy};
use url::Url;

fn deny_all() -> EgressPolicy {
    EgressPolicy::new(Vec::new())
}

#[test]
fn every_non_public_range_is_denied_by_default() {
    let denied = [
        "0.0.0.0",
        "0.1.2.3",
        "10.0.0.1",
        "10.255.255.255",
        "100.64.0.1",
        "100.127.255.254",
        "127.0.0.1",
        "127.8.9.10",
        "169.254.0.1",
        "169.254.169.254",
        "172.16.0.1",
        "172.31.255.255",
        "192.0.0.8",
        "192.0.2.1",
        "192.88.99.1",
        "192.168.1.1",
        "198.18.0.1",
        "198.19.255.255",
        "198.51.100.7",
        "203.0.113.9",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "::",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "febf::1",
        "fec0::1",
        "ff02::1",
        "100::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "::127.0.0.1",
        "64:ff9b::a9fe:a9fe",
        "64:ff9b:1::1",
        "2002:c0a8:0101::1",
        "2002:7f00:1::",
        "2001:db8::1",
        "2001::1",
        "3fff::1",
    ];
    let policy = deny_all();
    for text in denied {
        let ip: IpAddr = text.parse().unwrap();
        assert!(!policy.permits(ip), "{text} should be denied");
    }
}

#[test]
fn public_addresses_and_their_ipv6_wrappings_are_permitted() {
    let policy = deny_all();
    for text in [
        "8.8.8.8",
        "1.1.1.1",
        "100.63.255.255",
        "100.128.0.1",
        "172.32.0.1",
        "198.20.0.1",
        "2606:4700:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:0808:0808::1",
    ] {
        assert!(policy.permits(text.parse().unwrap()), "{text} should be permitted");
    }
}

#[test]
fn the_allow_list_admits_its_ranges_and_their_mapped_forms_only() {
    let allow = EgressPolicy::parse_allow_list(" 127.0.0.0/8, 10.1.2.3 ,,fd00::/8").unwrap();
    let policy = EgressPolicy::new(allow);

    assert!(policy.permits("127.0.0.1".parse().unwrap()));
    assert!(policy.permits("::ffff:127.0.0.1".parse().unwrap()));
    assert!(policy.permits("10.1.2.3".parse().unwrap()));
    assert!(policy.permits("fd00::5".parse().unwrap()));
    assert!(!policy.permits("10.1.2.4".parse().unwrap()));
    assert!(!policy.permits("169.254.169.254".parse().unwrap()));
}

#[test]
fn a_malformed_allow_list_is_rejected_with_the_bad_entry() {
    let err = EgressPolicy::parse_allow_list("127.0.0.0/8, localhost").unwrap_err();

    assert!(err.contains("localhost"), "{err}");
    assert_eq!(EgressPolicy::parse_allow_list("").unwrap(), Vec::new());
}

#[tokio::test]
async fn a_hostname_that_resolves_to_loopback_is_denied() {
    let err = deny_all().resolve("localhost", 22).await.unwrap_err();

    match err {
        EgressError::Denied { host, addr } => {
            assert_eq!(host, "localhost");
            assert!(addr.is_loopback());
        }
        other => panic!("expected Denied, got {other:?}"),
    }
}

#[tokio::test]
async fn the_allow_list_admits_a_hostname_that_resolves_into_it() {
    let addrs = super::loopback_policy().resolve("localhost", 2222).await.unwrap();

    assert!(!addrs.is_empty());
    assert!(addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 2222));
}

#[tokio::test]
async fn connecting_to_the_metadata_address_is_refused_before_any_packet() {
    let started = std::time::Instant::now();
    let err = deny_all()
        .connect_tcp("169.254.169.254", 80, Duration::from_secs(5))
        .await
        .unwrap_err();

    assert!(matches!(err, EgressError::Denied { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn an_unresolvable_host_is_a_dns_error() {
    let err = deny_all().resolve("no-such-host.invalid", 443).await.unwrap_err();

    assert!(matches!(err, EgressError::Dns { .. }), "{err:?}");
}

#[test]
fn ip_literal_urls_are_checked_in_every_spelling() {
    let policy = deny_all();
    for url in [
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f.0.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]:8080/",
        "https://169.254.169.254/latest/meta-data/",
    ] {
        let err = policy.check_url(&Url::parse(url).unwrap()).unwrap_err();
        assert!(matches!(err, EgressError::Denied { .. }), "{url}: {err:?}");
    }
    assert!(policy
        .check_url(&Url::parse("https://api.openai.com/v1").unwrap())
        .is_ok());
    assert!(matches!(
        policy.check_url(&Url::parse("file:///etc/passwd").unwrap()),
        Err(EgressError::Url(_))
    ));
}

#[tokio::test]
async fn the_http_client_refuses_a_named_host_that_resolves_to_loopback() {
    let server = wiremock::MockServer::start().await;
    let client = Arc::new(deny_all())
        .http_client(Duration::from_secs(2), Duration::from_secs(2))
        .unwrap();
    let url = format!("http://localhost:{}/", server.address().port());

    let err = client.get(url).send().await.unwrap_err();

    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    let mut denied = false;
    while let Some(e) = cause {
        denied |= matches!(e.downcast_ref::<EgressError>(), Some(EgressError::Denied { .. }));
        cause = e.source();
    }
    assert!(denied, "{err:?}");
    assert!(server.received_requests().await.unwrap().is_empty());
}

/// What a caller is told when a probe's target is not allowed.
const NEUTRAL: &str = "the address is not allowed by credgate's egress policy";

#[tokio::test]
async fn a_refusal_does_not_tell_which_address_a_name_resolves_to() {
    let err = deny_all().resolve("localhost", 22).await.unwrap_err();

    assert!(matches!(err, EgressError::Denied { .. }), "{err:?}");
    assert_eq!(err.to_string(), NEUTRAL);
}

#[tokio::test]
async fn a_probe_to_a_name_resolving_to_loopback_is_refused_without_naming_the_address() {
    let deny = super::ctx_with(Default::default(), Duration::from_secs(5), Default::default());
    let req: credgate::probes::SftpRequest = serde_json::from_value(serde_json::json!({
        "host": "localhost", "port": 22, "username": "u", "password": "p",
    }))
    .unwrap();

    let result = credgate::probes::sftp::probe(&deny, &super::ORG, &req).await;

    assert_eq!(super::code(&result), "egress_denied", "{result:?}");
    let message = &result.error.as_ref().unwrap().message;
    assert!(!message.contains("127.0.0.1") && !message.contains("::1"), "{message}");
    assert_eq!(message, NEUTRAL);
    assert!(!serde_json::to_string(&result).unwrap().contains("127.0.0.1"));
}

#[test]
fn a_refused_address_is_logged_on_the_server() {
    crate::helpers::run_test(async {
        let err = deny_all().resolve("localhost", 22).await.unwrap_err();
        assert!(matches!(err, EgressError::Denied { .. }), "{err:?}");

        let logs = crate::helpers::captured_logs();
        let line = logs
            .lines()
            .find(|l| l.contains("egress denied"))
            .unwrap_or_else(|| panic!("no egress log line in {logs}"));
        assert!(line.contains("localhost"), "{line}");
        assert!(line.contains("127.0.0.1") || line.contains("::1"), "{line}");
    });
}
