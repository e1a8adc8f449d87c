//! The PostgreSQL probe against a cluster that checks scram passwords and
//! offers TLS with a self-signed certificate.

use std::time::Duration;

use credgate::probes::postgres::{probe, PostgresRequest};
use credgate::probes::ApiBaseUrls;
use serde_json::json;

use super::pg_cluster::{cluster, DATABASE, PASSWORD, USER};
use super::{assert_no_secret, code, ctx, ctx_with, ORG};

fn request(body: serde_json::Value) -> PostgresRequest {
    serde_json::from_value(body).unwrap()
}

fn fields(sslmode: &str) -> PostgresRequest {
    request(json!({
        "host": "127.0.0.1", "port": cluster().port, "database": DATABASE,
        "username": USER, "password": PASSWORD, "sslmode": sslmode,
    }))
}

fn with_string(s: String) -> PostgresRequest {
    request(json!({ "connection_string": s }))
}

#[tokio::test]
async fn fields_with_sslmode_disable_log_in_without_tls() {
    let result = probe(&ctx(), &ORG, &fields("disable")).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["tls"], json!(false));
    assert_eq!(result.detail["database"], json!(DATABASE));
    assert_eq!(result.detail["user"], json!(USER));
    assert!(result.detail["version"].as_str().unwrap().starts_with("PostgreSQL 15"));
    assert!(result.detail["server_version"].as_str().unwrap().starts_with("15"));
    assert_no_secret(&result, &[PASSWORD]);
}

#[tokio::test]
async fn sslmode_require_and_prefer_use_tls_with_a_self_signed_certificate() {
    for mode in ["require", "prefer"] {
        let result = probe(&ctx(), &ORG, &fields(mode)).await;

        assert_eq!(code(&result), "ok", "{mode}: {result:?}");
        assert_eq!(result.detail["tls"], json!(true), "{mode}");
        assert_eq!(result.detail["sslmode"], json!(mode));
    }
}

#[tokio::test]
async fn sslmode_verify_full_rejects_a_self_signed_certificate_as_tls() {
    let result = probe(&ctx(), &ORG, &fields("verify-full")).await;

    assert_eq!(code(&result), "tls", "{result:?}");
    assert!(result.error.unwrap().message.contains("certificate"));
}

#[tokio::test]
async fn a_connection_string_wins_over_the_fields() {
    let mut req = fields("disable");
    req.host = "unused.invalid".into();
    req.connection_string = Some(cluster().url(PASSWORD, "?sslmode=require").into());

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["tls"], json!(true));
    assert_no_secret(&result, &[PASSWORD]);
}

#[tokio::test]
async fn a_key_value_connection_string_with_verify_full_is_understood() {
    let s = format!(
        "host=127.0.0.1 port={} dbname={DATABASE} user={USER} password='{PASSWORD}' sslmode='verify-full'",
        cluster().port
    );

    let result = probe(&ctx(), &ORG, &with_string(s)).await;

    assert_eq!(code(&result), "tls", "{result:?}");
    assert_no_secret(&result, &[PASSWORD]);
}

#[tokio::test]
async fn the_next_host_is_tried_when_the_first_refuses() {
    let closed = crate::ports::unused_port();
    let s = format!(
        "host=127.0.0.1,localhost port={closed},{} dbname={DATABASE} user={USER} password={PASSWORD} sslmode=disable",
        cluster().port
    );

    let result = probe(&ctx(), &ORG, &with_string(s)).await;

    assert_eq!(code(&result), "ok", "{result:?}");
    assert_eq!(result.detail["host"], json!("localhost"));
}

#[tokio::test]
async fn a_wrong_password_is_auth_failed() {
    let result = probe(&ctx(), &ORG, &with_string(cluster().url("SENTINEL-wrong-pg-1", ""))).await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
    assert!(result.error.as_ref().unwrap().message.contains("28P01"));
    assert_no_secret(&result, &["SENTINEL-wrong-pg-1"]);
}

#[tokio::test]
async fn a_missing_password_is_auth_failed() {
    let mut req = fields("disable");
    req.password = None;

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "auth_failed", "{result:?}");
}

#[tokio::test]
async fn a_missing_database_is_database_not_found() {
    let mut req = fields("prefer");
    req.database = "no_such_db".into();

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "database_not_found", "{result:?}");
    assert!(result.error.unwrap().message.contains("no_such_db"));
}

#[tokio::test]
async fn a_unix_socket_host_is_egress_denied() {
    let s = format!("host=/var/run/postgresql dbname={DATABASE} user={USER}");

    let result = probe(&ctx(), &ORG, &with_string(s)).await;

    assert_eq!(code(&result), "egress_denied", "{result:?}");
}

#[tokio::test]
async fn a_denied_hostaddr_is_egress_denied_whatever_the_host_name() {
    let s = format!(
        "host=db.example.com hostaddr=169.254.169.254 port={} dbname={DATABASE} user={USER}",
        cluster().port
    );

    let result = probe(&ctx(), &ORG, &with_string(s)).await;

    assert_eq!(code(&result), "egress_denied", "{result:?}");
}

#[tokio::test]
async fn an_allowed_hostaddr_is_used_instead_of_resolving_the_host() {
    let s = format!(
        "host=db.no-such-host.invalid hostaddr=127.0.0.1 port={} dbname={DATABASE} user={USER} password={PASSWORD} sslmode=disable",
        cluster().port
    );

    let result = probe(&ctx(), &ORG, &with_string(s)).await;

    assert_eq!(code(&result), "ok", "{result:?}");
}

#[tokio::test]
async fn loopback_without_an_allow_list_is_egress_denied() {
    let deny = ctx_with(Default::default(), Duration::from_secs(5), ApiBaseUrls::default());

    let result = probe(&deny, &ORG, &fields("disable")).await;

    assert_eq!(code(&result), "egress_denied", "{result:?}");
}

#[tokio::test]
async fn a_closed_port_is_connect_refused() {
    let mut req = fields("disable");
    req.port = Some(i64::from(crate::ports::unused_port()));

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "connect_refused", "{result:?}");
}

#[tokio::test]
async fn a_server_that_is_not_postgres_is_protocol() {
    let mut req = fields("disable");
    req.port = Some(i64::from(super::sshd::sshd().port));

    let result = probe(&ctx(), &ORG, &req).await;

    assert_eq!(code(&result), "protocol", "{result:?}");
}
