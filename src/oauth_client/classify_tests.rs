//! Every token-endpoint answer that `classify` distinguishes, sent by a
//! loopback server through the real `refresh` call (the oauth2 crate's
//! parsing included), and the code each must come out as.

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::refresh;
use crate::oauth_client::{http_client, OAuthError};
use crate::providers::{ClientAuth, IdentityMap, OAuthSettings};

const SENTINEL: &str = "rt-sentinel-5b1c";

fn settings(token_url: String) -> OAuthSettings {
    OAuthSettings {
        authorization_url: "http://127.0.0.1:1/authorize".into(),
        token_url,
        userinfo_url: "http://127.0.0.1:1/userinfo".into(),
        revocation_url: None,
        issuer: None,
        client_id: "client".into(),
        client_secret: SecretString::from("client-secret"),
        scopes: vec![],
        client_auth: ClientAuth::Body,
        authorize_params: BTreeMap::new(),
        identity: IdentityMap {
            id: vec!["sub".into()],
            email: vec![],
            display_name: vec![],
            source: Default::default(),
            headers: BTreeMap::new(),
        },
        tenant: None,
        scope_separator: " ".into(),
        token_body: Default::default(),
        pkce: true,
        reauth_errors: vec![],
        token_error_pointer: None,
        dynamic_registration: false,
        resource: None,
        refresh_lifetime: None,
    }
}

/// Answers one request with `response` (raw HTTP), or never when `None`.
async fn answer_once(response: Option<String>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/token", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buf = vec![0u8; 8192];
        let _ = socket.read(&mut buf).await;
        match response {
            Some(r) => {
                let _ = socket.write_all(r.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
            None => tokio::time::sleep(Duration::from_secs(30)).await,
        }
    });
    url
}

fn http(status: &str, headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
        body.len()
    )
}

async fn refresh_against(response: Option<String>) -> OAuthError {
    let url = answer_once(response).await;
    refresh(
        &http_client(Duration::from_millis(500)),
        &settings(url),
        None,
        &SecretString::from(SENTINEL),
    )
    .await
    .expect_err("the answer is a failure")
}

#[tokio::test]
async fn each_token_endpoint_answer_is_classified_as_the_code_that_decides_what_happens_next() {
    let cases: Vec<(&str, Option<String>, &str, Option<u64>)> = vec![
        (
            "invalid_grant",
            Some(http(
                "400 Bad Request",
                "",
                r#"{"error":"invalid_grant","error_description":"Token has been expired or revoked."}"#,
            )),
            "needs_reauth",
            None,
        ),
        (
            "Microsoft interaction_required",
            Some(http(
                "400 Bad Request",
                "",
                r#"{"error":"interaction_required","error_description":"AADSTS50076: MFA required"}"#,
            )),
            "needs_reauth",
            None,
        ),
        (
            "Microsoft AADSTS70008 (expired grant) as invalid_request",
            Some(http(
                "400 Bad Request",
                "",
                r#"{"error":"invalid_request","error_description":"AADSTS70008: The provided authorization code or refresh token has expired"}"#,
            )),
            "needs_reauth",
            None,
        ),
        (
            "Microsoft AADSTS700082 (refresh token expired by inactivity)",
            Some(http(
                "400 Bad Request",
                "",
                r#"{"error":"invalid_request","error_description":"AADSTS700082: The refresh token has expired due to inactivity."}"#,
            )),
            "needs_reauth",
            None,
        ),
        (
            "Microsoft AADSTS50173 (grant revoked by a password change)",
            Some(http(
                "400 Bad Request",
                "",
                r#"{"error":"invalid_request","error_description":"AADSTS50173: The provided grant has expired due to it being revoked"}"#,
            )),
            "needs_reauth",
            None,
        ),
        (
            "Microsoft AADSTS70043 (expired by conditional access)",
            Some(http(
                "400 Bad Request",
                "",
                r#"{"error":"invalid_request","error_description":"AADSTS70043: The refresh token has expired or is invalid due to sign-in frequency checks"}"#,
            )),
            "needs_reauth",
            None,
        ),
        (
            "invalid_client",
            Some(http(
                "401 Unauthorized",
                "",
                r#"{"error":"invalid_client","error_description":"The OAuth client was not found."}"#,
            )),
            "provider_error",
            None,
        ),
        (
            "another OAuth error",
            Some(http("400 Bad Request", "", r#"{"error":"invalid_scope"}"#)),
            "provider_error",
            None,
        ),
        (
            "HTTP 503",
            Some(http(
                "503 Service Unavailable",
                "",
                r#"{"error":"temporarily_unavailable"}"#,
            )),
            "provider_unavailable",
            None,
        ),
        (
            "HTTP 429 with Retry-After",
            Some(http(
                "429 Too Many Requests",
                "retry-after: 120\r\n",
                r#"{"error":"rate_limited"}"#,
            )),
            "provider_unavailable",
            Some(120),
        ),
        (
            "HTTP 500 with an HTML body",
            Some(http("500 Internal Server Error", "", "<html>oops</html>")),
            "provider_unavailable",
            None,
        ),
        (
            "200 with an unreadable body",
            Some(http("200 OK", "", "not json")),
            "provider_unavailable",
            None,
        ),
        ("no answer in time", None, "provider_unavailable", None),
    ];
    for (case, response, code, retry_after) in cases {
        let err = refresh_against(response).await;
        assert_eq!(err.code, code, "{case}: {err:?}");
        assert_eq!(err.retry_after, retry_after, "{case}: {err:?}");
        assert!(
            !err.message.contains(SENTINEL),
            "{case}: the refresh token is in {}",
            err.message
        );
    }
}

#[tokio::test]
async fn a_token_endpoint_that_cannot_be_reached_is_unavailable_not_a_dead_grant() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let err = refresh(
        &http_client(Duration::from_millis(500)),
        &settings(format!("http://127.0.0.1:{port}/token")),
        None,
        &SecretString::from("rt"),
    )
    .await
    .expect_err("nothing listens");
    assert_eq!(err.code, "provider_unavailable", "{err:?}");
    assert!(err.message.contains("could not be reached"), "{}", err.message);
}

#[tokio::test]
async fn a_timeout_says_the_provider_did_not_answer_in_time() {
    let err = refresh_against(None).await;
    assert!(err.message.contains("did not answer in time"), "{}", err.message);
}
