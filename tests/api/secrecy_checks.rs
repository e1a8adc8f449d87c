//! Secrets stay secret: not in responses, logs or the database's bytes;
//! ciphertexts are bound to their row; wrong keys are refused.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::both_backends;
use crate::helpers::{captured_logs, sentinel, TestApp, TestDb};

async fn a_sentinel_secret_never_reaches_logs_or_the_database_bytes(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let secret = sentinel();
    let id = app.create_pg(&app.org, "a", &secret).await;
    let path = format!("/integrations/credentials/{id}");
    // Every route that touches the credential, including failing ones.
    app.call(Method::GET, &path, &app.org.admin, None).await;
    app.call(Method::POST, &format!("{path}/resolve"), &app.org.engine, None)
        .await;
    app.call(Method::POST, &format!("{path}/resolve"), &app.org.member, None)
        .await;
    app.call(
        Method::PATCH,
        &path,
        &app.org.admin,
        Some(json!({"fields": {"password": secret, "port": "x"}})),
    )
    .await;
    app.call(
        Method::POST,
        "/integrations/credentials",
        &app.org.admin,
        Some(json!({"name": "b", "provider": "telegram", "auth_type": "api_key", "fields": {"bot_token": secret}})),
    )
    .await;

    let logs = captured_logs();
    let bytes = db.raw_bytes();

    assert!(logs.contains("request refused"), "the log capture works");
    assert!(!logs.contains(&secret), "secret in logs");
    assert!(!bytes.is_empty());
    assert!(
        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
        "secret in the database bytes"
    );
}
both_backends!(a_sentinel_secret_never_reaches_logs_or_the_database_bytes);

async fn a_ciphertext_moved_to_another_row_or_tampered_does_not_decrypt(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let a = app.create_pg(&app.org, "a", &sentinel()).await;
    let b = app.create_pg(&app.org, "b", &sentinel()).await;
    let pool = &app.sql().await;

    sqlx::query("UPDATE credentials SET secret_ct = (SELECT secret_ct FROM credentials WHERE id = $1) WHERE id = $2")
        .bind(&a)
        .bind(&b)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("UPDATE credentials SET secret_ct = 'gAAAAAB' || substr(secret_ct, 8) || 'x' WHERE id = $1")
        .bind(&a)
        .execute(pool)
        .await
        .unwrap();
    let (moved, body) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{b}/resolve"),
            &app.org.engine,
            None,
        )
        .await;
    let (tampered, _) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{a}/resolve"),
            &app.org.engine,
            None,
        )
        .await;

    assert_eq!(moved, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["code"], json!("internal"));
    assert!(body.get("fields").is_none());
    assert_eq!(tampered, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(captured_logs().contains("belongs to another record"));
}
both_backends!(a_ciphertext_moved_to_another_row_or_tampered_does_not_decrypt);

async fn a_ciphertext_moved_to_another_organization_does_not_decrypt(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let other = app.new_org("Other").await;
    let mine = app.create_pg(&app.org, "a", &sentinel()).await;
    let theirs = app.create_pg(&other, "b", &sentinel()).await;

    sqlx::query("UPDATE credentials SET secret_ct = (SELECT secret_ct FROM credentials WHERE id = $1) WHERE id = $2")
        .bind(&mine)
        .bind(&theirs)
        .execute(&app.sql().await)
        .await
        .unwrap();
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{theirs}/resolve"),
            &other.engine,
            None,
        )
        .await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.get("fields").is_none());
}
both_backends!(a_ciphertext_moved_to_another_organization_does_not_decrypt);

#[test]
fn nothing_that_holds_a_secret_prints_it_in_debug() {
    use credgate::credentials::{Changes, CredentialSecrets, NewCredentialInput, OAuthTokens};
    use secrecy::SecretString;
    let secret = sentinel();
    let fields = json!({"host": "h", "password": secret}).as_object().unwrap().clone();
    let mut secrets = CredentialSecrets::default();
    secrets.fields.insert("password", SecretString::from(secret.clone()));
    secrets.tokens = Some(OAuthTokens {
        access_token: SecretString::from(secret.clone()),
        refresh_token: Some(SecretString::from(secret.clone())),
    });
    let query: credgate::oauth::flow::CallbackQuery =
        serde_json::from_value(json!({"state": secret, "code": secret, "iss": "https://issuer"})).unwrap();
    let mut config = credgate::config::Config::for_database(&format!("postgres://u:{secret}@h/db"));
    config.master_keys = Some(SecretString::from(secret.clone()));
    config
        .provider_overrides
        .insert("CREDGATE_PROVIDER_GOOGLE_CLIENT_SECRET".into(), secret.clone());

    let printed = [
        format!(
            "{:?}",
            NewCredentialInput {
                name: "n".into(),
                provider: "p".into(),
                auth_type: "a".into(),
                fields: fields.clone(),
                public: Vec::new(),
                expires_at: None,
            }
        ),
        format!(
            "{:?}",
            Changes {
                name: None,
                fields: Some(fields),
                public: Vec::new(),
                expires_at: None,
            }
        ),
        format!("{secrets:?}"),
        format!("{query:?}"),
        format!("{config:?}"),
    ];

    for text in &printed {
        assert!(!text.contains(&secret), "{text}");
    }
    assert!(
        printed[0].contains("password"),
        "field names stay visible: {}",
        printed[0]
    );
    assert!(printed[3].contains("https://issuer"), "{}", printed[3]);
}
