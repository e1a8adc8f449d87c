//! A use decided on this process's earlier read of its credential, with no
//! read of its own: its write finds whether that read is still current,
//! and a change made meanwhile on another replica (the credential's
//! values, its sharing, a user's grant alone, its deletion) decides the
//! use instead. Two app instances on one database; every change is made on
//! the second, every use on the first.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::gateway::{gateway_app, http_credential, upstream, Seen};
use crate::helpers::{TestApp, TestDb};
use crate::sharing::{create, key, resolve_for, share};
use credgate::model::Role;

const REUSED: &str = "credgate_use_reads_reused_total";
const STALE: &str = "credgate_use_reads_stale_total";

/// A second replica with the first's settings.
async fn second_replica(first: &TestApp) -> TestApp {
    let mut config = first.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    TestApp::spawn_with(config).await
}

/// A gateway call through `app` with its engine key: the status.
async fn call(app: &TestApp, id: &str) -> StatusCode {
    let answer = app
        .client
        .get(format!("{}/integrations/credentials/{id}/proxy/items", app.base))
        .bearer_auth(&app.org.engine)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    answer.bytes().await.unwrap();
    status
}

/// The `Authorization` header of each call the stand-in received.
fn authorizations(seen: &Seen) -> Vec<String> {
    let calls = seen.0.lock().unwrap().clone();
    calls
        .iter()
        .map(|c| c["headers"]["authorization"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Uses of credential `id` recorded as `action`, counted in the table.
async fn uses(app: &TestApp, id: &str, action: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_events WHERE credential_id = $1 AND action = $2")
        .bind(id)
        .bind(action)
        .fetch_one(&app.sql().await)
        .await
        .unwrap()
}

/// The credential's row version, read from the table.
async fn row_version(app: &TestApp, id: &str) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT row_version FROM credentials WHERE id = $1")
        .bind(id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap()
}

async fn a_call_after_its_credential_changed_on_another_replica_carries_the_change(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let (base, seen) = upstream().await;
    let first = gateway_app(&db).await;
    let second = second_replica(&first).await;
    let id = http_credential(&first, &base, json!({"scheme": "bearer", "token": "first-token"})).await;

    let warm = [call(&first, &id).await, call(&first, &id).await];
    let reused_before = first.metric(REUSED).await;
    let (changed, _) = second
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{id}"),
            &first.org.admin,
            Some(json!({"fields": {"base_url": format!("{base}/v2"), "scheme": "bearer", "token": "second-token"}})),
        )
        .await;
    let after_change = [call(&first, &id).await, call(&first, &id).await];
    let (deleted, _) = second
        .call(
            Method::DELETE,
            &format!("/integrations/credentials/{id}"),
            &first.org.admin,
            None,
        )
        .await;
    let after_delete = call(&first, &id).await;

    assert_eq!(warm, [StatusCode::CREATED; 2]);
    assert_eq!(reused_before, 1, "the second call was decided on the first's read");
    assert_eq!(changed, StatusCode::OK);
    assert_eq!(after_change, [StatusCode::CREATED; 2]);
    assert_eq!(
        authorizations(&seen),
        [
            "Bearer first-token",
            "Bearer first-token",
            "Bearer second-token",
            "Bearer second-token"
        ],
        "once changed elsewhere, the new value is sent"
    );
    assert_eq!(first.metric(STALE).await, 2, "the change, then the deletion");
    assert_eq!(first.metric(REUSED).await, 2, "the read after the change was reused");
    assert!(deleted.is_success(), "{deleted}");
    assert_eq!(after_delete, StatusCode::NOT_FOUND);
    assert_eq!(seen.0.lock().unwrap().len(), 4, "nothing sent for a deleted credential");
    assert_eq!(uses(&first, &id, "credential.proxy").await, 4, "one use per call sent");
}
both_backends!(a_call_after_its_credential_changed_on_another_replica_carries_the_change);

/// Two replicas, alice's (member) and an engine's keys, and alice's
/// credential shared with bob at `use`.
struct Shared {
    _db: TestDb,
    first: TestApp,
    second: TestApp,
    alice: String,
    engine: String,
    id: String,
}

async fn shared_with_bob(backend: crate::helpers::Backend) -> Shared {
    let db = TestDb::new(backend).await;
    let first = TestApp::spawn(&db).await;
    let second = second_replica(&first).await;
    let alice = key(&first, Role::Member, Some("alice")).await;
    let engine = key(&first, Role::Engine, None).await;
    let id = create(&first, &alice, "alices", "pw").await;
    let bob = json!([{"user_id": "bob", "access": "use"}]);
    assert_eq!(share(&first, &alice, &id, Value::Null, bob).await, StatusCode::OK);
    Shared {
        _db: db,
        first,
        second,
        alice,
        engine,
        id,
    }
}

/// Two resolves on `app` for bob, one after the other: their statuses.
async fn bob_twice(app: &TestApp, engine: &str, id: &str) -> [StatusCode; 2] {
    let for_bob = || Some(json!({"user_id": "bob"}));
    [
        resolve_for(app, engine, id, for_bob()).await.0,
        resolve_for(app, engine, id, for_bob()).await.0,
    ]
}

async fn a_use_after_sharing_changed_on_another_replica_is_decided_on_the_change(backend: crate::helpers::Backend) {
    let Shared {
        _db,
        first,
        second,
        alice,
        engine,
        id,
    } = shared_with_bob(backend).await;
    let for_bob = || Some(json!({"user_id": "bob"}));

    let granted = bob_twice(&first, &engine, &id).await;
    let reused_granted = first.metric(REUSED).await;
    let unshared = share(&second, &alice, &id, Value::Null, json!([])).await;
    let revoked = bob_twice(&first, &engine, &id).await;
    let stale_revoked = first.metric(STALE).await;
    let to_team = share(&second, &alice, &id, json!("use"), json!([])).await;
    let by_team = bob_twice(&first, &engine, &id).await;
    let reused_by_team = first.metric(REUSED).await;
    let from_team = share(&second, &alice, &id, Value::Null, json!([])).await;
    let no_longer = resolve_for(&first, &engine, &id, for_bob()).await.0;

    assert_eq!(granted, [StatusCode::OK; 2]);
    assert_eq!(reused_granted, 1);
    assert_eq!([unshared, to_team, from_team], [StatusCode::OK; 3]);
    assert_eq!(
        revoked,
        [StatusCode::NOT_FOUND; 2],
        "bob's grant, removed on the other replica, is gone here at once"
    );
    assert_eq!(stale_revoked, 1, "the reused read was found stale, then read anew");
    assert_eq!(
        by_team,
        [StatusCode::OK; 2],
        "the team's level, given on the other replica"
    );
    assert_eq!(reused_by_team, 2, "a denial is never reused; a new grant's read is");
    assert_eq!(no_longer, StatusCode::NOT_FOUND);
    assert_eq!(first.metric(STALE).await, 2);
    assert_eq!(
        uses(&first, &id, "credential.resolve").await,
        4,
        "a use only for each resolve answered"
    );
}
both_backends!(a_use_after_sharing_changed_on_another_replica_is_decided_on_the_change);

/// `credgate user remove` deletes a user's grants without changing their
/// credentials' rows: the use's write checks the grant itself.
async fn a_use_after_a_users_grant_alone_was_removed_on_another_replica_is_refused(backend: crate::helpers::Backend) {
    let Shared {
        _db,
        first,
        second,
        engine,
        id,
        ..
    } = shared_with_bob(backend).await;
    let for_bob = || Some(json!({"user_id": "bob"}));

    let granted = bob_twice(&first, &engine, &id).await;
    let reused = first.metric(REUSED).await;
    let version = row_version(&first, &id).await;
    let removal = credgate::credentials::remove_user(
        &second.state.store,
        &first.org.id,
        &credgate::ids::UserId::parse("bob").unwrap(),
        None,
        "test",
    )
    .await
    .unwrap();
    let after = resolve_for(&first, &engine, &id, for_bob()).await.0;
    let alices_own = resolve_for(&first, &engine, &id, Some(json!({"user_id": "alice"})))
        .await
        .0;

    assert_eq!(granted, [StatusCode::OK; 2]);
    assert_eq!(reused, 1);
    assert_eq!(removal.grants_removed, 1);
    assert_eq!(
        row_version(&first, &id).await,
        version,
        "the removal changed the grant alone, not the credential's row"
    );
    assert_eq!(after, StatusCode::NOT_FOUND, "bob's removed grant is gone here at once");
    assert_eq!(first.metric(STALE).await, 1);
    assert_eq!(alices_own, StatusCode::OK, "the owner's use is untouched");
    assert_eq!(uses(&first, &id, "credential.resolve").await, 3);
}
both_backends!(a_use_after_a_users_grant_alone_was_removed_on_another_replica_is_refused);
