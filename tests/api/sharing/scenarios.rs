//! The contract's sharing scenarios: a personal credential opened level by
//! level, resolving for a user or the organization, and usage by workflow.

use credgate::model::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use super::{create, key, listed, resolve_for, share};
use crate::both_backends;
use crate::helpers::{sentinel, TestApp, TestDb};

async fn a_personal_credential_is_invisible_until_shared_and_each_level_opens_more(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let alice = key(&app, Role::Member, Some("alice")).await;
    let bob = key(&app, Role::Member, Some("bob")).await;
    let engine = key(&app, Role::Engine, None).await;
    let secret = sentinel();
    let id = create(&app, &alice, "alice's google", &secret).await;
    let path = format!("/integrations/credentials/{id}");

    let (_, bobs_list) = app.call(Method::GET, "/integrations/credentials", &bob, None).await;
    let (hidden, _) = app.call(Method::GET, &path, &bob, None).await;
    let (for_bob, _) = resolve_for(&app, &engine, &id, Some(json!({"user_id": "bob"}))).await;
    share(&app, &alice, &id, json!("use"), json!([])).await;
    let (_, shared_list) = app
        .call(Method::GET, "/integrations/credentials?shared=true", &bob, None)
        .await;
    let (_, summary) = app.call(Method::GET, &path, &bob, None).await;
    let (patch, _) = app
        .call(Method::PATCH, &path, &bob, Some(json!({"name": "mine"})))
        .await;
    let (resolved, values) = resolve_for(
        &app,
        &engine,
        &id,
        Some(json!({"user_id": "bob", "workflow_id": "wf-1"})),
    )
    .await;
    share(&app, &alice, &id, json!("view"), json!([])).await;
    let (_, full) = app.call(Method::GET, &path, &bob, None).await;
    share(
        &app,
        &alice,
        &id,
        Value::Null,
        json!([{"user_id": "bob", "access": "manage"}]),
    )
    .await;
    let (managed, _) = app
        .call(Method::PATCH, &path, &bob, Some(json!({"name": "ours"})))
        .await;
    let (_, mine) = app
        .call(Method::GET, "/integrations/credentials?owner=me", &bob, None)
        .await;
    let (_, audit) = app.call(Method::GET, &format!("{path}/audit"), &alice, None).await;

    assert_eq!(bobs_list["total"], 0, "absent from bob's listing and total");
    assert_eq!(hidden, StatusCode::NOT_FOUND);
    assert_eq!(
        for_bob,
        StatusCode::NOT_FOUND,
        "the engine acting for bob cannot resolve it"
    );
    assert!(listed(&shared_list, &id));
    assert_eq!(shared_list["items"][0]["access"], "use");
    assert!(
        summary.get("fields").is_none() && summary["access"] == "use" && summary["owner"] == "alice",
        "{summary}"
    );
    assert_eq!(patch, StatusCode::FORBIDDEN);
    assert_eq!(resolved, StatusCode::OK);
    assert_eq!(values["fields"]["password"], secret.as_str());
    assert_eq!(full["fields"]["host"], "db.example.com");
    assert_eq!(full["access"], "view");
    assert!(full.get("secret_fields").is_some() && !full.to_string().contains(&secret));
    assert_eq!(managed, StatusCode::OK);
    assert_eq!(mine["total"], 0, "it is still alice's");
    let shares: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "credential.share")
        .collect();
    assert_eq!(shares.len(), 3, "every sharing change is audited");
    assert_eq!(shares[0]["detail"]["before"]["team"], "view");
    assert_eq!(shares[0]["detail"]["after"]["users"][0]["user_id"], "bob");
}
both_backends!(a_personal_credential_is_invisible_until_shared_and_each_level_opens_more);

async fn the_engine_resolves_for_its_user_a_named_user_or_the_organization(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let alice = key(&app, Role::Member, Some("alice")).await;
    let org_admin = key(&app, Role::Admin, None).await;
    let alices_engine = key(&app, Role::Engine, Some("alice")).await;
    let engine = key(&app, Role::Engine, None).await;
    let personal = create(&app, &alice, "personal", "pw").await;
    let team = create(&app, &alice, "team", "pw").await;
    share(&app, &alice, &team, json!("use"), json!([])).await;
    let organization = create(&app, &org_admin, "org", "pw").await;

    let for_carol = resolve_for(&app, &engine, &personal, Some(json!({"user_id": "carol"})))
        .await
        .0;
    let bound = resolve_for(&app, &alices_engine, &personal, None).await.0;
    let bound_other = resolve_for(&app, &alices_engine, &personal, Some(json!({"user_id": "carol"})))
        .await
        .0;
    let as_org = [
        resolve_for(&app, &engine, &personal, None).await.0,
        resolve_for(&app, &engine, &team, None).await.0,
        resolve_for(&app, &engine, &organization, None).await.0,
    ];

    assert_eq!(for_carol, StatusCode::NOT_FOUND);
    assert_eq!(bound, StatusCode::OK);
    assert_eq!(
        bound_other,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a bound key acts for its own user only"
    );
    assert_eq!(as_org, [StatusCode::NOT_FOUND, StatusCode::OK, StatusCode::OK]);
}
both_backends!(the_engine_resolves_for_its_user_a_named_user_or_the_organization);

async fn usage_counts_uses_by_workflow_most_recent_first(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let id = app.create_pg(&app.org, "db", "pw").await;
    for (workflow, n) in [("wf-a", 3), ("wf-b", 2)] {
        for r in 0..n {
            let body = json!({"workflow_id": workflow, "run_id": format!("run-{r}")});
            assert_eq!(
                resolve_for(&app, &app.org.engine, &id, Some(body)).await.0,
                StatusCode::OK
            );
        }
        app.clock.advance(5);
    }
    resolve_for(&app, &app.org.engine, &id, None).await;
    let too_long = resolve_for(
        &app,
        &app.org.engine,
        &id,
        Some(json!({"workflow_id": "x".repeat(201)})),
    )
    .await
    .0;

    let (status, usage) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{id}/usage"),
            &app.org.admin,
            None,
        )
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(usage["uses_total"], 6);
    assert_eq!(
        usage["workflows"][0]["workflow_id"], "wf-b",
        "most recent first: {usage}"
    );
    assert_eq!(usage["workflows"][0]["uses"], 2);
    assert_eq!(usage["workflows"][1]["workflow_id"], "wf-a");
    assert_eq!(usage["workflows"][1]["uses"], 3);
    assert_eq!(too_long, StatusCode::UNPROCESSABLE_ENTITY);
}
both_backends!(usage_counts_uses_by_workflow_most_recent_first);
