//! `credgate user remove`: a user's credentials handed on, their grants and
//! keys gone, and every part of it in the audit log.

use credgate::model::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{create, key, share};
use crate::both_backends;
use crate::helpers::{TestApp, TestDb};

/// The organization's events that concern no credential, oldest first.
async fn org_events(app: &TestApp) -> Vec<(String, Value)> {
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT action, detail FROM audit_events WHERE credential_id IS NULL ORDER BY id")
            .fetch_all(&app.sql().await)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(action, detail)| {
            (
                action,
                detail.map_or(Value::Null, |d| serde_json::from_str(&d).unwrap()),
            )
        })
        .collect()
}

/// A credential's events with `action`, newest first (read by an admin).
async fn events(app: &TestApp, id: &str, action: &str) -> Vec<Value> {
    let (_, events) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/audit"),
            &app.org.admin,
            None,
        )
        .await;
    events
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == action)
        .cloned()
        .collect()
}

async fn removing_a_user_transfers_their_credentials_and_revokes_their_keys(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let dave = key(&app, Role::Member, Some("dave")).await;
    let erin = key(&app, Role::Member, Some("erin")).await;
    key(&app, Role::Member, Some("frank")).await;
    let keys = crate::helpers::master_keys(&app.config);
    let first = create(&app, &dave, "dave 1", "pw").await;
    let second = create(&app, &erin, "erin 1", "pw").await;
    let grants = json!([{"user_id": "dave", "access": "view"}, {"user_id": "frank", "access": "use"}]);
    share(&app, &erin, &second, json!("use"), grants).await;
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_credgate"))
            .args(args)
            .env("CREDGATE_DATABASE_URL", &db.url)
            .env("CREDGATE_MASTER_KEYS", &keys)
            .env(
                "CREDGATE_PROVIDERS_DIR",
                concat!(env!("CARGO_MANIFEST_DIR"), "/providers"),
            )
            .output()
            .unwrap()
    };

    let to_erin = cli(&[
        "user",
        "remove",
        "--org",
        &app.org.id,
        "--user",
        "dave",
        "--transfer-to",
        "erin",
    ]);
    tokio::time::sleep(std::time::Duration::from_millis(5200)).await; // the key cache
    let (dave_now, _) = app.call(Method::GET, "/integrations/credentials", &dave, None).await;
    let (_, owned) = app
        .call(Method::GET, &format!("/integrations/credentials/{first}"), &erin, None)
        .await;
    let (_, without_dave) = app
        .call(Method::GET, &format!("/integrations/credentials/{second}"), &erin, None)
        .await;
    // frank has a grant and a key, but no credential of his own.
    let frank_to_org = cli(&[
        "user",
        "remove",
        "--org",
        &app.org.id,
        "--user",
        "frank",
        "--transfer-to",
        "org",
    ]);
    let to_org = cli(&[
        "user",
        "remove",
        "--org",
        &app.org.id,
        "--user",
        "erin",
        "--transfer-to",
        "org",
    ]);
    let (_, as_org) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{first}"),
            &app.org.admin,
            None,
        )
        .await;
    let bad = cli(&[
        "user",
        "remove",
        "--org",
        &app.org.id,
        "--user",
        "x",
        "--transfer-to",
        "x",
    ]);
    let transfers = events(&app, &first, "credential.transfer").await;
    let shares: Vec<Value> = events(&app, &second, "credential.share")
        .await
        .into_iter()
        .filter(|e| e["actor"] == "cli")
        .collect();
    let org = org_events(&app).await;

    assert!(to_erin.status.success(), "{}", String::from_utf8_lossy(&to_erin.stderr));
    assert_eq!(dave_now, StatusCode::UNAUTHORIZED, "dave's keys are revoked");
    assert_eq!(owned["owner"], "erin");
    assert_eq!(
        without_dave["sharing"]["users"],
        json!([{"user_id": "frank", "access": "use"}]),
        "dave's grant is gone"
    );
    assert!(frank_to_org.status.success() && to_org.status.success());
    assert_eq!(as_org["owner"], Value::Null, "now an organization credential");
    assert!(!bad.status.success());

    assert_eq!(transfers.len(), 2, "{transfers:?}");
    assert_eq!(transfers[1]["detail"], json!({"from": "dave", "to": "erin"}));
    assert_eq!(transfers[0]["detail"], json!({"from": "erin", "to": null}));
    assert_eq!(shares.len(), 2, "each removed grant is a sharing change: {shares:?}");
    assert_eq!(shares[1]["detail"]["removed_user"], "dave");
    assert_eq!(
        shares[1]["detail"]["before"],
        json!({"team": "use", "users": [{"user_id": "dave", "access": "view"}, {"user_id": "frank", "access": "use"}]})
    );
    assert_eq!(
        shares[1]["detail"]["after"],
        json!({"team": "use", "users": [{"user_id": "frank", "access": "use"}]})
    );
    assert_eq!(shares[0]["detail"]["removed_user"], "frank");
    assert_eq!(shares[0]["detail"]["after"], json!({"team": "use", "users": []}));

    let actions: Vec<&str> = org.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "api_key.revoke",
            "user.remove",
            "api_key.revoke",
            "user.remove",
            "api_key.revoke",
            "user.remove"
        ]
    );
    let (revoked, dave_removed, frank_revoked, frank_removed) = (&org[0].1, &org[1].1, &org[2].1, &org[3].1);
    assert_eq!(revoked["user_id"], "dave");
    assert_eq!(
        dave_removed,
        &json!({"user_id": "dave", "transfer_to": "erin", "transferred": [first], "grants_removed": 1, "keys_revoked": [revoked["key_id"]], "flows_ended": 0})
    );
    assert_eq!(frank_revoked["user_id"], "frank");
    assert_eq!(
        frank_removed,
        &json!({"user_id": "frank", "transfer_to": null, "transferred": [], "grants_removed": 1, "keys_revoked": [frank_revoked["key_id"]], "flows_ended": 0}),
        "a user with no credentials still leaves a trace"
    );
}
both_backends!(removing_a_user_transfers_their_credentials_and_revokes_their_keys);
