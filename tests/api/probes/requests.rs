//! Request validation (422 material) and redaction of secrets in `Debug`.

use credgate::probes::{LlmRequest, PostgresRequest, Probe, SftpRequest, TelegramRequest};
use serde_json::json;

fn fields_of(errors: Vec<credgate::probes::FieldError>) -> Vec<String> {
    errors.into_iter().map(|e| e.field).collect()
}

fn sftp(body: serde_json::Value) -> SftpRequest {
    serde_json::from_value(body).unwrap()
}

#[test]
fn sftp_requires_host_username_and_a_password_or_key() {
    let errors = sftp(json!({ "port": 70000 })).validate().unwrap_err();

    assert_eq!(fields_of(errors), ["host", "port", "username", "password"]);
}

#[test]
fn sftp_rejects_a_malformed_key_and_fingerprint() {
    let req = sftp(json!({
        "host": "h", "username": "u", "private_key": "SENTINEL-not-a-key",
        "host_key_sha256": "MD5:aa:bb",
    }));

    assert_eq!(
        fields_of(req.validate().unwrap_err()),
        ["private_key", "host_key_sha256"]
    );
}

#[test]
fn a_well_formed_sftp_request_is_valid_and_defaults_to_port_22() {
    let req = sftp(json!({
        "host": "sftp.example.com", "username": "u", "password": "p",
        "host_key_sha256": format!("SHA256:{}", "a".repeat(43)),
    }));

    assert_eq!(req.validate(), Ok(()));
    assert_eq!(req.port(), 22);
}

#[test]
fn postgres_fields_need_host_database_and_username_unless_a_connection_string_is_given() {
    let empty: PostgresRequest = serde_json::from_value(json!({})).unwrap();
    let with_string: PostgresRequest =
        serde_json::from_value(json!({ "connection_string": "postgres://u:p@db.example.com/app" })).unwrap();

    assert_eq!(
        fields_of(empty.validate().unwrap_err()),
        ["host", "database", "username"]
    );
    assert_eq!(with_string.validate(), Ok(()));
}

#[test]
fn postgres_rejects_an_unknown_sslmode_and_an_unparsable_connection_string() {
    let mode: PostgresRequest = serde_json::from_value(json!({
        "host": "h", "database": "d", "username": "u", "sslmode": "sometimes",
    }))
    .unwrap();
    let string: PostgresRequest =
        serde_json::from_value(json!({ "connection_string": "host=h port=notaport user=u" })).unwrap();

    assert_eq!(fields_of(mode.validate().unwrap_err()), ["sslmode"]);
    assert_eq!(fields_of(string.validate().unwrap_err()), ["connection_string"]);
}

#[test]
fn llm_needs_a_known_provider_a_key_and_a_base_url_for_openai_compatible() {
    let unknown: LlmRequest = serde_json::from_value(json!({ "provider_type": "gemini" })).unwrap();
    let compatible: LlmRequest =
        serde_json::from_value(json!({ "provider_type": "openai_compatible", "api_key": "k" })).unwrap();
    let with_creds: LlmRequest = serde_json::from_value(json!({
        "provider_type": "openai", "api_key": "k", "base_url": "https://user:pw@example.com",
    }))
    .unwrap();

    assert_eq!(fields_of(unknown.validate().unwrap_err()), ["provider_type", "api_key"]);
    assert_eq!(fields_of(compatible.validate().unwrap_err()), ["base_url"]);
    assert_eq!(fields_of(with_creds.validate().unwrap_err()), ["base_url"]);
}

#[test]
fn telegram_token_shape_is_checked_before_any_call() {
    for bad in [
        "",
        "abc",
        "123:short",
        "abc:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "123:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA!",
    ] {
        let req: TelegramRequest = serde_json::from_value(json!({ "bot_token": bad })).unwrap();
        assert_eq!(fields_of(req.validate().unwrap_err()), ["bot_token"], "{bad}");
    }
    let good: TelegramRequest =
        serde_json::from_value(json!({ "bot_token": "123456:AAH_abcdefghijklmnopqrstuvwxyz-0123" })).unwrap();
    assert_eq!(good.validate(), Ok(()));
}

#[test]
fn debug_output_of_every_request_hides_its_secrets() {
    let secret = "SENTINEL-debug-secret-77f0";
    let token = "123456:SENTINEL_debug_token_abcdefghijklmnop";
    let printed = [
        format!(
            "{:?}",
            sftp(json!({ "password": secret, "private_key": secret, "passphrase": secret }))
        ),
        format!(
            "{:?}",
            serde_json::from_value::<PostgresRequest>(json!({
                "password": secret, "connection_string": format!("postgres://u:{secret}@h/d"),
            }))
            .unwrap()
        ),
        format!(
            "{:?}",
            serde_json::from_value::<LlmRequest>(json!({ "provider_type": "openai", "api_key": secret })).unwrap()
        ),
        format!(
            "{:?}",
            serde_json::from_value::<TelegramRequest>(json!({ "bot_token": token })).unwrap()
        ),
    ];

    for text in printed {
        assert!(!text.contains("SENTINEL"), "{text}");
        assert!(text.contains("REDACTED"), "{text}");
    }
}
