//! The SFTP probe against a real OpenSSH server.

use std::time::Duration;

use credgate::probes::sftp::{probe, SftpRequest};
use credgate::probes::ApiBaseUrls;
use serde_json::json;

use super::sshd::{sshd, KEY_USER, PASSPHRASE, PASSWORD, PASSWORD_USER};
use super::{assert_no_secret, code, ctx, ctx_with, loopback_policy, ORG};

fn request(body: serde_json::Value) -> SftpRequest {
    serde_json::from_value(body).unwrap()
}

fn password_login(path: Option<&str>) -> SftpRequest {
    request(json!({
        "host": "127.0.0.1", "port": sshd().port, "username": PASSWORD_USER,
        "password": PASSWORD, "path": path,
    }))
}

fn key_login(key_name: &str, passphrase: Option<&str>) -> SftpRequest {
    let s = sshd();
    request(json!({
        "host": "127.0.0.1", "port": s.port, "username": KEY_USER,
        "private_key": s.key(key_name), "passphrase": passphrase, "path": s.listing_dir(),
    }))
}

fn secrets() -> Vec<String> {
    let s = sshd();
    let mut all = vec![PASSWORD.to_owned(), PASSPHRASE.to_owned()];
    for name in ["id_ed25519", "id_ed25519_pass", "id_rsa_pem_pass", "id_unauthorized"] {
        // The base64 body of a key, without its armour lines.
        let key = s.key(name);
        all.extend(key.lines().filter(|l| l.len() > 40).map(str::to_owned));
    }
    all
}

fn assert_clean(result: &credgate::probes::ProbeResult) {
    let owned = secrets();
    let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
    assert_no_secret(result, &refs);
}

#[tokio::test]
async fn password_login_lists_the_home_directory_and_reports_the_server() {
    let result = probe(&ctx(), &ORG, &password_login(None)).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["host_key_sha256"], json!(sshd().fingerprint));
    assert!(result.detail["banner"].as_str().unwrap().contains("OpenSSH"));
    assert_eq!(result.detail["path"], json!("."));
    assert!(result.detail["entry_count"].as_u64().unwrap() >= 1);
    assert_eq!(result.detail["auth_method"], json!("password"));
    assert_clean(&result);
}

#[tokio::test]
async fn listing_a_given_path_counts_its_entries() {
    let result = probe(&ctx(), &ORG, &password_login(Some(&sshd().listing_dir()))).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["entry_count"], json!(3));
}

#[tokio::test]
async fn an_openssh_ed25519_key_logs_in_without_a_passphrase() {
    let result = probe(&ctx(), &ORG, &key_login("id_ed25519", None)).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["auth_method"], json!("publickey"));
    assert_eq!(result.detail["entry_count"], json!(3));
    assert_clean(&result);
}

#[tokio::test]
async fn an_encrypted_openssh_key_logs_in_with_its_passphrase() {
    let result = probe(&ctx(), &ORG, &key_login("id_ed25519_pass", Some(PASSPHRASE))).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_clean(&result);
}

#[tokio::test]
async fn an_encrypted_pem_rsa_key_logs_in_with_its_passphrase() {
    let result = probe(&ctx(), &ORG, &key_login("id_rsa_pem_pass", Some(PASSPHRASE))).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_clean(&result);
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed() {
    let mut req = password_login(None);
    req.password = Some("SENTINEL-wrong-password-93ab".into());

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
    assert!(result.error.as_ref().unwrap().message.contains(PASSWORD_USER));
    assert_no_secret(&result, &["SENTINEL-wrong-password-93ab"]);
    // The fingerprint is still reported, so a person can compare it.
    assert_eq!(result.detail["host_key_sha256"], json!(sshd().fingerprint));
}

#[tokio::test]
async fn a_key_the_server_does_not_know_is_auth_failed() {
    let result = probe(&ctx(), &ORG, &key_login("id_unauthorized", None)).await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
    assert_clean(&result);
}

#[tokio::test]
async fn a_wrong_passphrase_is_invalid_key() {
    let result = probe(
        &ctx(),
        &ORG,
        &key_login("id_ed25519_pass", Some("SENTINEL-bad-phrase-1")),
    )
    .await;

    assert_eq!(code(&result), "invalid_key", "{result:?}");
    assert_no_secret(&result, &["SENTINEL-bad-phrase-1"]);
    assert_clean(&result);
}

#[tokio::test]
async fn the_expected_fingerprint_is_accepted_with_or_without_its_prefix() {
    let fingerprint = sshd().fingerprint.clone();
    for given in [
        fingerprint.clone(),
        fingerprint.trim_start_matches("SHA256:").to_owned(),
    ] {
        let mut req = password_login(None);
        req.host_key_sha256 = Some(given);

        let result = probe(&ctx(), &ORG, &req).await;

        assert_eq!(code(&result), "ok", "{result:?}");
    }
}

#[tokio::test]
async fn a_different_host_key_is_host_key_mismatch_before_login() {
    let mut req = password_login(None);
    req.host_key_sha256 = Some(format!("SHA256:{}", "A".repeat(43)));

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "host_key_mismatch", "{result:?}");
    assert!(result.error.as_ref().unwrap().message.contains(&sshd().fingerprint));
    assert!(result.detail.get("auth_method").is_none());
}

#[tokio::test]
async fn a_missing_directory_is_not_found() {
    let result = probe(&ctx(), &ORG, &password_login(Some("/no/such/dir"))).await;

    assert_eq!(code(&result), "not_found", "{result:?}");
    assert!(result.error.unwrap().message.contains("/no/such/dir"));
}

#[tokio::test]
async fn an_unreadable_directory_is_permission_denied() {
    let result = probe(&ctx(), &ORG, &password_login(Some(&sshd().private_dir()))).await;

    assert_eq!(code(&result), "permission_denied", "{result:?}");
}

#[tokio::test]
async fn a_closed_port_is_connect_refused() {
    let mut req = password_login(None);
    req.port = Some(i64::from(crate::ports::unused_port()));

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "connect_refused", "{result:?}");
}

#[tokio::test]
async fn an_unknown_host_is_dns() {
    let mut req = password_login(None);
    req.host = "sftp.no-such-host.invalid".into();

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "dns", "{result:?}");
}

#[tokio::test]
async fn loopback_without_an_allow_list_is_egress_denied() {
    let mut req = password_login(None);
    req.host = "localhost".into();
    let deny = ctx_with(Default::default(), Duration::from_secs(5), ApiBaseUrls::default());

    let result = probe(&deny, &ORG, &req).await;

    assert_eq!(code(&result), "egress_denied", "{result:?}");
}

#[tokio::test]
async fn a_server_that_never_speaks_is_a_timeout() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut req = password_login(None);
    req.port = Some(i64::from(silent.local_addr().unwrap().port()));
    let impatient = ctx_with(loopback_policy(), Duration::from_millis(700), ApiBaseUrls::default());

    let result = probe(&impatient, &ORG, &req).await;

    assert_eq!(code(&result), "timeout", "{result:?}");
    assert!(result.latency_ms < 5_000, "{result:?}");
}

#[tokio::test]
async fn a_server_that_is_not_ssh_is_protocol() {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.write_all(b"220 FTP server ready\r\n").await;
        }
    });
    let mut req = password_login(None);
    req.port = Some(i64::from(port));

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "protocol", "{result:?}");
}

/// A loopback relay to the test sshd that counts connections open at once.
async fn counting_relay() -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (open, peak) = (
        std::sync::Arc::new(AtomicUsize::new(0)),
        std::sync::Arc::new(AtomicUsize::new(0)),
    );
    let target = sshd().port;
    let peak_out = peak.clone();
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let (open, peak) = (open.clone(), peak.clone());
            tokio::spawn(async move {
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                if let Ok(outbound) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await {
                    let (mut from_client, mut to_client) = inbound.split();
                    let (mut from_server, mut to_server) = outbound.into_split();
                    // The client's session ends when it closes its socket:
                    // count it closed then, not when the server side drains.
                    tokio::select! {
                        _ = tokio::io::copy(&mut from_client, &mut to_server) => {}
                        _ = tokio::io::copy(&mut from_server, &mut to_client) => {}
                    }
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (port, peak_out)
}

/// The relay sees a session end a moment after the probe released its
/// slot, so under load it may count one or two that are already over.
/// Uncapped, every probe would connect at once (20 and 12 here).
const RELAY_LAG: usize = 2;

/// Peak SSH sessions at once while `orgs` each run `per_org` probes at once.
async fn peak_sessions(orgs: &[&str], per_org: usize) -> usize {
    let ctx = ctx();
    let (port, peak) = counting_relay().await;
    let mut req = key_login("id_ed25519", None);
    req.port = Some(i64::from(port));
    let orgs: Vec<_> = orgs.iter().map(|name| super::org(name)).collect();
    let runs = orgs.iter().flat_map(|org| std::iter::repeat_n(org, per_org));

    let results = futures::future::join_all(runs.map(|org| probe(&ctx, org, &req))).await;

    let failed: Vec<_> = results.iter().filter(|r| !r.ok).collect();
    assert!(failed.is_empty(), "{failed:?}");
    peak.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test]
async fn twenty_concurrent_probes_succeed_with_at_most_eight_ssh_sessions_at_once() {
    let peak = peak_sessions(&["org-a", "org-b", "org-c", "org-d"], 5).await;

    assert!(
        peak <= credgate::probes::ProbeContext::MAX_SSH_SESSIONS + RELAY_LAG,
        "{peak} sessions at once"
    );
    assert!(peak >= 2, "the probes ran concurrently: {peak}");
}

#[tokio::test]
async fn one_organization_has_at_most_four_ssh_sessions_at_once() {
    let peak = peak_sessions(&["org-probes"], 12).await;

    assert!(
        peak <= credgate::probes::ProbeContext::MAX_SSH_SESSIONS_PER_ORG + RELAY_LAG,
        "{peak} sessions at once"
    );
    assert!(peak >= 2, "the probes ran concurrently: {peak}");
}
