//! Listing filters (`owner=me`, `shared=true|false`) from one member's
//! view, and the quota, which counts every owner's credentials together.

use std::collections::BTreeSet;

use credgate::model::Role;
use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{create, key, share, People};
use crate::both_backends;
use crate::helpers::{pg_body, TestApp, TestDb};

/// The ids on a listing page, and its total.
async fn listing(app: &TestApp, key: &str, query: &str) -> (BTreeSet<String>, i64) {
    let (status, page) = app
        .call(Method::GET, &format!("/integrations/credentials?{query}"), key, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let ids = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect();
    (ids, page["total"].as_i64().unwrap())
}

fn set(ids: &[&String]) -> BTreeSet<String> {
    ids.iter().map(|id| (*id).clone()).collect()
}

async fn owner_me_and_shared_filters_list_exactly_the_callers_matching_credentials(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let people = People::new(&app).await;
    let organization_admin = key(&app, Role::Admin, None).await;
    let alices_personal = create(&app, &people.alice, "a personal", "pw").await;
    let alices_for_team = create(&app, &people.alice, "a team", "pw").await;
    let alices_for_bob = create(&app, &people.alice, "a for bob", "pw").await;
    let bobs_personal = create(&app, &people.bob, "b personal", "pw").await;
    let bobs_for_carol = create(&app, &people.bob, "b for carol", "pw").await;
    let organizations = create(&app, &organization_admin, "org", "pw").await;
    share(&app, &people.alice, &alices_for_team, json!("use"), json!([])).await;
    share(
        &app,
        &people.alice,
        &alices_for_bob,
        json!(null),
        json!([{"user_id": "bob", "access": "view"}]),
    )
    .await;
    share(
        &app,
        &people.bob,
        &bobs_for_carol,
        json!(null),
        json!([{"user_id": "carol", "access": "use"}]),
    )
    .await;

    let all = listing(&app, &people.bob, "").await;
    let mine = listing(&app, &people.bob, "owner=me").await;
    let unshared = listing(&app, &people.bob, "shared=false").await;
    let shared = listing(&app, &people.bob, "shared=true").await;
    let mine_unshared = listing(&app, &people.bob, "owner=me&shared=false").await;
    let alices_own = listing(&app, &people.alice, "owner=me").await;

    let visible = set(&[
        &alices_for_team,
        &alices_for_bob,
        &bobs_personal,
        &bobs_for_carol,
        &organizations,
    ]);
    assert_eq!(all, (visible, 5), "everything bob may use, and only that");
    assert_eq!(
        mine,
        (set(&[&bobs_personal, &bobs_for_carol]), 2),
        "owner=me: bob's own, shared or not"
    );
    assert_eq!(
        unshared,
        (set(&[&bobs_personal, &organizations]), 2),
        "shared=false: never alice's personal one"
    );
    assert_eq!(shared, (set(&[&alices_for_team, &alices_for_bob, &bobs_for_carol]), 3));
    assert_eq!(mine_unshared, (set(&[&bobs_personal]), 1));
    assert_eq!(
        alices_own,
        (set(&[&alices_personal, &alices_for_team, &alices_for_bob]), 3)
    );
}
both_backends!(owner_me_and_shared_filters_list_exactly_the_callers_matching_credentials);

async fn the_quota_counts_every_owners_credentials_of_a_provider_together(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let people = People::new(&app).await;
    app.state
        .store
        .set_org_limit(&app.org.id, "postgresql", 3)
        .await
        .unwrap();
    create(&app, &people.alice, "alice 1", "pw").await;
    create(&app, &people.alice, "alice 2", "pw").await;
    create(&app, &people.bob, "bob 1", "pw").await;

    let (bobs_second, problem) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &people.bob,
            Some(pg_body("bob 2", "pw")),
        )
        .await;
    let (alices_third, _) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &people.alice,
            Some(pg_body("alice 3", "pw")),
        )
        .await;
    let (_, bobs_view) = listing(&app, &people.bob, "").await;
    let (_, everyone) = listing(&app, &people.admin, "").await;

    assert_eq!(
        bobs_second,
        StatusCode::CONFLICT,
        "alice's personal credentials count against bob's create"
    );
    assert_eq!(problem["code"], "quota_exceeded");
    assert_eq!(alices_third, StatusCode::CONFLICT);
    assert_eq!(bobs_view, 1, "bob cannot see the credentials that fill the quota");
    assert_eq!(everyone, 3);
}
both_backends!(the_quota_counts_every_owners_credentials_of_a_provider_together);
