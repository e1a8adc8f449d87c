//! The SMTP and IMAP probes against real servers started by the tests
//! (`mail_servers`: aiosmtpd with AUTH and STARTTLS, a private dovecot), a
//! server that never stops talking, and the secrecy of the password.

use std::sync::Arc;
use std::time::{Duration, Instant};

use credgate::egress::EgressPolicy;
use credgate::probes::{imap, smtp, ApiBaseUrls, ImapRequest, Probe, SmtpRequest};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use super::mail_servers::{dovecot, smtp as smtp_server, SmtpMode, INBOX_MESSAGES, MAIL_PASSWORD, MAIL_USER};
use super::{assert_no_secret, code, ctx_with, loopback_policy, ORG};
use crate::helpers::{captured_logs, run_test, test_config, Backend, TestApp, TestDb};
use crate::ports::unused_port as free_port;

/// A wrong password that must never show either.
const WRONG_PASSWORD: &str = "SENTINEL-wrong-mail-password-0c77";

fn smtp_request(port: u16, security: &str, password: &str) -> SmtpRequest {
    serde_json::from_value(json!({
        "host": "127.0.0.1", "port": port, "username": MAIL_USER, "password": password,
        "security": security, "tls_verify": false,
    }))
    .unwrap()
}

fn imap_request(host: &str, port: u16, security: &str, password: &str) -> ImapRequest {
    serde_json::from_value(json!({
        "host": host, "port": port, "username": MAIL_USER, "password": password,
        "security": security, "tls_verify": false,
    }))
    .unwrap()
}

/// Probe limits for real servers sharing two cores with the whole suite:
/// there a dovecot login can take seconds (its auth processes start on demand).
fn mail_ctx() -> credgate::probes::ProbeContext {
    ctx_with(
        loopback_policy(),
        Duration::from_secs(15),
        credgate::probes::ApiBaseUrls::default(),
    )
}

fn message(result: &credgate::probes::ProbeResult) -> String {
    result.error.as_ref().map(|e| e.message.clone()).unwrap_or_default()
}

#[tokio::test]
async fn smtp_over_starttls_logs_in_and_reports_greeting_mechanisms_and_tls() {
    let server = smtp_server(SmtpMode::StartTls);

    let result = smtp::probe(&mail_ctx(), &ORG, &smtp_request(server.port, "starttls", MAIL_PASSWORD)).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["tls"], json!(true));
    assert_eq!(result.detail["security"], json!("starttls"));
    assert!(result.detail["greeting"]
        .as_str()
        .unwrap()
        .starts_with("smtp.credgate.test"));
    assert_eq!(result.detail["server_name"], json!("smtp.credgate.test"));
    let mechanisms = result.detail["auth_mechanisms"].as_array().unwrap();
    assert!(
        mechanisms.contains(&json!("PLAIN")) && mechanisms.contains(&json!("LOGIN")),
        "{mechanisms:?}"
    );
    assert_no_secret(&result, &[MAIL_PASSWORD]);
}

#[tokio::test]
async fn smtp_over_implicit_tls_logs_in_and_tries_the_sender() {
    let server = smtp_server(SmtpMode::Tls);
    let mut req = smtp_request(server.port, "tls", MAIL_PASSWORD);
    req.from = Some("robot@credgate.test".into());

    let result = smtp::probe(&mail_ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["tls"], json!(true));
    assert_eq!(result.detail["from_accepted"], json!(true));
}

#[tokio::test]
async fn smtp_without_tls_logs_in_only_when_security_is_none() {
    let server = smtp_server(SmtpMode::Plain);

    let result = smtp::probe(&mail_ctx(), &ORG, &smtp_request(server.port, "none", MAIL_PASSWORD)).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["tls"], json!(false));
}

#[tokio::test]
async fn smtp_with_a_wrong_password_is_auth_failed() {
    let server = smtp_server(SmtpMode::StartTls);

    let result = smtp::probe(
        &mail_ctx(),
        &ORG,
        &smtp_request(server.port, "starttls", WRONG_PASSWORD),
    )
    .await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
    assert!(message(&result).contains("535"), "{result:?}");
    assert_no_secret(&result, &[WRONG_PASSWORD]);
}

#[tokio::test]
async fn smtp_starttls_against_a_server_that_does_not_offer_it_is_tls() {
    let server = smtp_server(SmtpMode::Plain);

    let result = smtp::probe(&mail_ctx(), &ORG, &smtp_request(server.port, "starttls", MAIL_PASSWORD)).await;

    assert_eq!(code(&result), "tls", "{result:?}");
    assert!(message(&result).contains("STARTTLS"), "{result:?}");
    assert_eq!(result.detail["tls"], json!(false));
}

#[tokio::test]
async fn smtp_login_in_clear_text_where_the_server_wants_starttls_first_is_tls() {
    let server = smtp_server(SmtpMode::StartTls);

    let result = smtp::probe(&mail_ctx(), &ORG, &smtp_request(server.port, "none", MAIL_PASSWORD)).await;

    assert_eq!(code(&result), "tls", "{result:?}");
}

#[tokio::test]
async fn smtp_with_tls_verify_rejects_a_self_signed_certificate_as_tls() {
    let server = smtp_server(SmtpMode::Tls);
    let mut req = smtp_request(server.port, "tls", MAIL_PASSWORD);
    req.login.tls_verify = None;

    let result = smtp::probe(&mail_ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "tls", "{result:?}");
    assert!(message(&result).contains("certificate"), "{result:?}");
}

#[tokio::test]
async fn smtp_to_a_closed_port_is_connect_refused() {
    let result = smtp::probe(&mail_ctx(), &ORG, &smtp_request(free_port(), "starttls", MAIL_PASSWORD)).await;

    assert_eq!(code(&result), "connect_refused", "{result:?}");
}

#[tokio::test]
async fn smtp_against_an_imap_port_is_protocol() {
    let result = smtp::probe(
        &mail_ctx(),
        &ORG,
        &smtp_request(dovecot().plain_port, "starttls", MAIL_PASSWORD),
    )
    .await;

    assert_eq!(code(&result), "protocol", "{result:?}");
    assert!(message(&result).contains("not SMTP"), "{result:?}");
}

#[tokio::test]
async fn imap_over_tls_logs_in_and_reports_the_inbox_message_count() {
    let server = dovecot();

    let result = imap::probe(
        &mail_ctx(),
        &ORG,
        &imap_request("127.0.0.1", server.tls_port, "tls", MAIL_PASSWORD),
    )
    .await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["tls"], json!(true));
    assert_eq!(result.detail["inbox_messages"], json!(INBOX_MESSAGES));
    assert!(
        result.detail["greeting"].as_str().unwrap().contains("Dovecot"),
        "{result:?}"
    );
    assert!(result.detail["auth_mechanisms"]
        .as_array()
        .unwrap()
        .contains(&json!("PLAIN")));
    assert_no_secret(&result, &[MAIL_PASSWORD]);
}

#[tokio::test]
async fn imap_over_starttls_logs_in() {
    let server = dovecot();

    let result = imap::probe(
        &mail_ctx(),
        &ORG,
        &imap_request("127.0.0.1", server.plain_port, "starttls", MAIL_PASSWORD),
    )
    .await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["tls"], json!(true));
    assert_eq!(result.detail["inbox_messages"], json!(INBOX_MESSAGES));
}

#[tokio::test]
async fn imap_with_a_wrong_password_is_auth_failed() {
    let server = dovecot();

    let result = imap::probe(
        &mail_ctx(),
        &ORG,
        &imap_request("127.0.0.1", server.tls_port, "tls", WRONG_PASSWORD),
    )
    .await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
    assert!(message(&result).contains("AUTHENTICATIONFAILED"), "{result:?}");
    assert_no_secret(&result, &[WRONG_PASSWORD]);
}

#[tokio::test]
async fn imap_sends_a_non_ascii_password_as_a_literal_and_is_answered() {
    let server = dovecot();

    let result = imap::probe(
        &mail_ctx(),
        &ORG,
        &imap_request("127.0.0.1", server.tls_port, "tls", "SENTINEL-pässwörd-\"quoted\""),
    )
    .await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
}

#[tokio::test]
async fn imap_tls_against_the_plain_port_is_tls() {
    let server = dovecot();

    let result = imap::probe(
        &mail_ctx(),
        &ORG,
        &imap_request("127.0.0.1", server.plain_port, "tls", MAIL_PASSWORD),
    )
    .await;

    assert_eq!(code(&result), "tls", "{result:?}");
}

#[tokio::test]
async fn imap_login_in_clear_text_where_the_server_requires_tls_is_tls() {
    let server = dovecot();

    let result = imap::probe(
        &mail_ctx(),
        &ORG,
        &imap_request("127.0.0.2", server.plain_port, "none", MAIL_PASSWORD),
    )
    .await;

    assert_eq!(code(&result), "tls", "{result:?}");
    assert!(message(&result).contains("LOGIN without TLS"), "{result:?}");
}

#[tokio::test]
async fn imap_with_tls_verify_rejects_a_self_signed_certificate_as_tls() {
    let mut req = imap_request("127.0.0.1", dovecot().tls_port, "tls", MAIL_PASSWORD);
    req.login.tls_verify = Some(true);

    let result = imap::probe(&mail_ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "tls", "{result:?}");
}

#[tokio::test]
async fn imap_to_a_closed_port_is_connect_refused() {
    let result = imap::probe(
        &mail_ctx(),
        &ORG,
        &imap_request("127.0.0.1", free_port(), "tls", MAIL_PASSWORD),
    )
    .await;

    assert_eq!(code(&result), "connect_refused", "{result:?}");
}

#[tokio::test]
async fn without_an_allow_list_loopback_mail_servers_are_egress_denied() {
    let deny = ctx_with(
        Arc::new(EgressPolicy::default()),
        Duration::from_secs(5),
        ApiBaseUrls::default(),
    );
    let smtp_port = smtp_server(SmtpMode::StartTls).port;

    let sent = smtp::probe(&deny, &ORG, &smtp_request(smtp_port, "starttls", MAIL_PASSWORD)).await;
    let read = imap::probe(
        &deny,
        &ORG,
        &imap_request("localhost", dovecot().tls_port, "tls", MAIL_PASSWORD),
    )
    .await;

    assert_eq!(code(&sent), "egress_denied", "{sent:?}");
    assert_eq!(code(&read), "egress_denied", "{read:?}");
    assert!(
        !message(&read).contains("127.0.0.1"),
        "the address stays on the server: {read:?}"
    );
}

/// A server on a loopback port that sends `first`, then `filler` again
/// and again until the probe hangs up.
async fn chatty_server(first: &'static [u8], filler: Vec<u8>) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        socket.write_all(first).await.unwrap();
        while socket.write_all(&filler).await.is_ok() {}
    });
    (port, task)
}

/// One greeting line that never ends, or a greeting of endless lines: the
/// probe stops at its caps with `protocol`, long before its time limit.
#[tokio::test]
async fn a_server_that_never_stops_talking_is_protocol() {
    for (first, filler, expected) in [
        (&b"220-"[..], vec![b'x'; 4096], "line longer"),
        (&b"220-hello\r\n"[..], b"220-more\r\n".repeat(512), "past 100 lines"),
    ] {
        let (port, chatter) = chatty_server(first, filler).await;
        let started = Instant::now();

        let result = smtp::probe(&mail_ctx(), &ORG, &smtp_request(port, "none", MAIL_PASSWORD)).await;

        chatter.abort();
        assert_eq!(code(&result), "protocol", "{result:?}");
        assert!(message(&result).contains(expected), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn the_password_never_shows_in_results_logs_or_debug_output() {
    run_test(async {
        let smtp_port = smtp_server(SmtpMode::StartTls).port;
        let imap_port = dovecot().tls_port;
        let mut results: Vec<Value> = Vec::new();
        for password in [MAIL_PASSWORD, WRONG_PASSWORD] {
            let sent = smtp_request(smtp_port, "starttls", password);
            let read = imap_request("127.0.0.1", imap_port, "tls", password);
            assert!(
                !format!("{sent:?}{read:?}").contains(password),
                "Debug shows the password"
            );
            results.push(serde_json::to_value(smtp::probe(&mail_ctx(), &ORG, &sent).await).unwrap());
            results.push(serde_json::to_value(imap::probe(&mail_ctx(), &ORG, &read).await).unwrap());
        }

        let logs = captured_logs();

        let codes: Vec<&Value> = results.iter().map(|r| &r["ok"]).collect();
        assert_eq!(
            codes,
            [&json!(true), &json!(true), &json!(false), &json!(false)],
            "{results:?}"
        );
        assert!(logs.contains("probe finished"), "the probes logged nothing: {logs}");
        for secret in [MAIL_PASSWORD, WRONG_PASSWORD] {
            assert!(!logs.contains(secret), "a password reached the logs");
            assert!(
                !Value::Array(results.clone()).to_string().contains(secret),
                "{results:?}"
            );
        }
    });
}

/// Saved credentials go through the provider files: their fields must be
/// the requests' fields, defaults included.
#[test]
fn saved_smtp_and_imap_credentials_are_tested_with_their_stored_fields() {
    run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let mut config = test_config(&db);
        config.egress_allow = "127.0.0.0/8".into();
        let app = TestApp::spawn_with(config).await;
        let create = |provider: &str, fields: Value| json!({"name": provider, "provider": provider, "auth_type": "user_password", "fields": fields});
        let login = json!({"host": "127.0.0.1", "username": MAIL_USER, "password": MAIL_PASSWORD, "tls_verify": false});
        let mut smtp_fields = login.clone();
        smtp_fields["port"] = json!(smtp_server(SmtpMode::StartTls).port);
        let mut imap_fields = login;
        imap_fields["port"] = json!(dovecot().tls_port);

        let mut tested = Vec::new();
        for (provider, fields) in [("smtp", smtp_fields), ("imap", imap_fields)] {
            let (status, created) = app
                .call(
                    Method::POST,
                    "/integrations/credentials",
                    &app.org.admin,
                    Some(create(provider, fields)),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{created}");
            let id = created["id"].as_str().unwrap().to_owned();
            let (_, result) = app
                .call(
                    Method::POST,
                    &format!("/integrations/credentials/{id}/test"),
                    &app.org.engine,
                    None,
                )
                .await;
            tested.push(result);
        }

        assert_eq!(tested[0]["ok"], json!(true), "{}", tested[0]);
        assert_eq!(
            tested[0]["detail"]["security"],
            json!("starttls"),
            "the provider's default"
        );
        assert_eq!(tested[1]["ok"], json!(true), "{}", tested[1]);
        assert_eq!(tested[1]["detail"]["security"], json!("tls"), "the provider's default");
        assert!(!format!("{tested:?}{}", captured_logs()).contains(MAIL_PASSWORD));
    });
}

#[test]
fn mail_requests_are_checked_before_anything_is_sent() {
    let smtp_bad: SmtpRequest = serde_json::from_value(json!({
        "port": 0, "security": "ssl", "from": "not an address",
    }))
    .unwrap();
    let imap_bad: ImapRequest = serde_json::from_value(json!({
        "host": "mail.example.com", "username": "u", "password": "line\r\nbreak", "security": "ssl",
    }))
    .unwrap();
    let smtp_good = smtp_request(25, "", "p");

    let fields = |errors: Vec<credgate::probes::FieldError>| errors.into_iter().map(|e| e.field).collect::<Vec<_>>();

    assert_eq!(
        fields(smtp_bad.validate().unwrap_err()),
        ["host", "port", "username", "password", "security", "from"]
    );
    assert_eq!(fields(imap_bad.validate().unwrap_err()), ["password", "security"]);
    assert_eq!(smtp_good.validate(), Ok(()));
    let defaults: ImapRequest = serde_json::from_value(json!({"host": "h", "username": "u", "password": "p"})).unwrap();
    let smtp_defaults: SmtpRequest =
        serde_json::from_value(json!({"host": "h", "username": "u", "password": "p"})).unwrap();
    assert_eq!((defaults.port(), smtp_defaults.port()), (993, 587));
}
