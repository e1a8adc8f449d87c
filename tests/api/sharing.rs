//! Personal and shared credentials: `use` < `view` < `manage`, checked in
//! one place for every route, and who used what.

use credgate::apikeys::NewKey;
use credgate::model::Role;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::both_backends;
use crate::helpers::{pg_body, sentinel, TestApp, TestDb};

/// A key of the test organization for `user` (or none) with `role`.
async fn key(app: &TestApp, role: Role, user: Option<&str>) -> String {
    let new = NewKey {
        user_id: user,
        ..NewKey::default()
    };
    credgate::apikeys::create(&app.state.store, &app.org.id, role, new)
        .await
        .unwrap()
}

async fn create(app: &TestApp, key: &str, name: &str, secret: &str) -> String {
    let (status, body) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            key,
            Some(pg_body(name, secret)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn share(app: &TestApp, key: &str, id: &str, team: Value, users: Value) -> StatusCode {
    let body = json!({"team": team, "users": users});
    app.call(
        Method::PUT,
        &format!("/integrations/credentials/{id}/sharing"),
        key,
        Some(body),
    )
    .await
    .0
}

async fn resolve_for(app: &TestApp, engine: &str, id: &str, body: Option<Value>) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/integrations/credentials/{id}/resolve"),
        engine,
        body,
    )
    .await
}

fn listed(page: &Value, id: &str) -> bool {
    page["items"].as_array().unwrap().iter().any(|i| i["id"] == id)
}

/// The expected status of each route for each level of bob on alice's credential.
const MATRIX: &[(&str, [u16; 6])] = &[
    //                    none  use  view manage owner admin
    ("get", [404, 200, 200, 200, 200, 200]),
    ("patch", [404, 403, 403, 200, 200, 200]),
    ("test", [404, 200, 200, 200, 200, 200]),
    ("refresh", [404, 403, 403, 409, 409, 409]),
    ("audit", [404, 403, 200, 200, 200, 200]),
    ("usage", [404, 403, 200, 200, 200, 200]),
    ("sharing", [404, 403, 403, 200, 200, 200]),
    ("resolve", [404, 200, 200, 200, 200, 404]),
    ("delete", [404, 403, 403, 204, 204, 204]),
];
const LEVELS: [&str; 6] = ["none", "use", "view", "manage", "owner", "admin"];

both_backends! {
    async fn every_route_answers_as_the_callers_level_allows(backend: Backend) {
        let db = TestDb::new(backend).await;
        let app = TestApp::spawn(&db).await;
        let alice = key(&app, Role::Member, Some("alice")).await;
        let bob = key(&app, Role::Member, Some("bob")).await;
        let admin = key(&app, Role::Admin, Some("root")).await;
        let engine = key(&app, Role::Engine, None).await;
        let secret = sentinel();
        let mut seen = Vec::new();

        for (i, level) in LEVELS.iter().enumerate() {
            let (caller, id, acting_user) = match *level {
                "owner" => (bob.clone(), create(&app, &bob, "bob's", &secret).await, "bob"),
                "admin" => (admin.clone(), create(&app, &alice, "alice's", &secret).await, "root"),
                _ => {
                    let id = create(&app, &alice, "alice's", &secret).await;
                    if *level != "none" {
                        assert_eq!(share(&app, &alice, &id, Value::Null, json!([{"user_id": "bob", "access": level}])).await, StatusCode::OK);
                    }
                    (bob.clone(), id, "bob")
                }
            };
            let path = format!("/integrations/credentials/{id}");
            let keep = if *level == "none" || *level == "owner" || *level == "admin" { json!([]) } else { json!([{"user_id": "bob", "access": level}]) };
            for (route, expected) in MATRIX {
                let (status, body) = match *route {
                    "get" => app.call(Method::GET, &path, &caller, None).await,
                    "patch" => app.call(Method::PATCH, &path, &caller, Some(json!({"name": "renamed"}))).await,
                    "test" => app.call(Method::POST, &format!("{path}/test"), &caller, None).await,
                    "refresh" => app.call(Method::POST, &format!("{path}/refresh"), &caller, None).await,
                    "audit" => app.call(Method::GET, &format!("{path}/audit"), &caller, None).await,
                    "usage" => app.call(Method::GET, &format!("{path}/usage"), &caller, None).await,
                    "sharing" => app.call(Method::PUT, &format!("{path}/sharing"), &caller, Some(json!({"team": null, "users": keep}))).await,
                    "resolve" => resolve_for(&app, &engine, &id, Some(json!({"user_id": acting_user}))).await,
                    _ => app.call(Method::DELETE, &path, &caller, None).await,
                };
                assert!(*route == "resolve" || !body.to_string().contains(&secret), "{route} at {level} showed the secret");
                seen.push(((*route, *level), status.as_u16(), expected[i]));
            }
        }

        let wrong: Vec<_> = seen.iter().filter(|(_, got, want)| got != want).collect();
        assert!(wrong.is_empty(), "(route, level), got, expected: {wrong:?}");
    }
}

both_backends! {
    async fn a_personal_credential_is_invisible_until_shared_and_each_level_opens_more(backend: Backend) {
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
        let (_, shared_list) = app.call(Method::GET, "/integrations/credentials?shared=true", &bob, None).await;
        let (_, summary) = app.call(Method::GET, &path, &bob, None).await;
        let (patch, _) = app.call(Method::PATCH, &path, &bob, Some(json!({"name": "mine"}))).await;
        let (resolved, values) = resolve_for(&app, &engine, &id, Some(json!({"user_id": "bob", "workflow_id": "wf-1"}))).await;
        share(&app, &alice, &id, json!("view"), json!([])).await;
        let (_, full) = app.call(Method::GET, &path, &bob, None).await;
        share(&app, &alice, &id, Value::Null, json!([{"user_id": "bob", "access": "manage"}])).await;
        let (managed, _) = app.call(Method::PATCH, &path, &bob, Some(json!({"name": "ours"}))).await;
        let (_, mine) = app.call(Method::GET, "/integrations/credentials?owner=me", &bob, None).await;
        let (_, audit) = app.call(Method::GET, &format!("{path}/audit"), &alice, None).await;

        assert_eq!(bobs_list["total"], 0, "absent from bob's listing and total");
        assert_eq!(hidden, StatusCode::NOT_FOUND);
        assert_eq!(for_bob, StatusCode::NOT_FOUND, "the engine acting for bob cannot resolve it");
        assert!(listed(&shared_list, &id));
        assert_eq!(shared_list["items"][0]["access"], "use");
        assert!(summary.get("fields").is_none() && summary["access"] == "use" && summary["owner"] == "alice", "{summary}");
        assert_eq!(patch, StatusCode::FORBIDDEN);
        assert_eq!(resolved, StatusCode::OK);
        assert_eq!(values["fields"]["password"], secret.as_str());
        assert_eq!(full["fields"]["host"], "db.example.com");
        assert_eq!(full["access"], "view");
        assert!(full.get("secret_fields").is_some() && !full.to_string().contains(&secret));
        assert_eq!(managed, StatusCode::OK);
        assert_eq!(mine["total"], 0, "it is still alice's");
        let shares: Vec<&Value> = audit.as_array().unwrap().iter().filter(|e| e["action"] == "credential.share").collect();
        assert_eq!(shares.len(), 3, "every sharing change is audited");
        assert_eq!(shares[0]["detail"]["before"]["team"], "view");
        assert_eq!(shares[0]["detail"]["after"]["users"][0]["user_id"], "bob");
    }
}

both_backends! {
    async fn the_engine_resolves_for_its_user_a_named_user_or_the_organization(backend: Backend) {
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

        let for_carol = resolve_for(&app, &engine, &personal, Some(json!({"user_id": "carol"}))).await.0;
        let bound = resolve_for(&app, &alices_engine, &personal, None).await.0;
        let bound_other = resolve_for(&app, &alices_engine, &personal, Some(json!({"user_id": "carol"}))).await.0;
        let as_org = [
            resolve_for(&app, &engine, &personal, None).await.0,
            resolve_for(&app, &engine, &team, None).await.0,
            resolve_for(&app, &engine, &organization, None).await.0,
        ];

        assert_eq!(for_carol, StatusCode::NOT_FOUND);
        assert_eq!(bound, StatusCode::OK);
        assert_eq!(bound_other, StatusCode::UNPROCESSABLE_ENTITY, "a bound key acts for its own user only");
        assert_eq!(as_org, [StatusCode::NOT_FOUND, StatusCode::OK, StatusCode::OK]);
    }
}

both_backends! {
    async fn usage_counts_uses_by_workflow_most_recent_first(backend: Backend) {
        let db = TestDb::new(backend).await;
        let app = TestApp::spawn(&db).await;
        let id = app.create_pg(&app.org, "db", "pw").await;
        for (workflow, n) in [("wf-a", 3), ("wf-b", 2)] {
            for r in 0..n {
                let body = json!({"workflow_id": workflow, "run_id": format!("run-{r}")});
                assert_eq!(resolve_for(&app, &app.org.engine, &id, Some(body)).await.0, StatusCode::OK);
            }
            app.clock.advance(5);
        }
        resolve_for(&app, &app.org.engine, &id, None).await;
        let too_long = resolve_for(&app, &app.org.engine, &id, Some(json!({"workflow_id": "x".repeat(201)}))).await.0;

        let (status, usage) = app.call(Method::GET, &format!("/integrations/credentials/{id}/usage"), &app.org.admin, None).await;

        assert_eq!(status, StatusCode::OK);
        assert_eq!(usage["uses_total"], 6);
        assert_eq!(usage["workflows"][0]["workflow_id"], "wf-b", "most recent first: {usage}");
        assert_eq!(usage["workflows"][0]["uses"], 2);
        assert_eq!(usage["workflows"][1]["workflow_id"], "wf-a");
        assert_eq!(usage["workflows"][1]["uses"], 3);
        assert_eq!(too_long, StatusCode::UNPROCESSABLE_ENTITY);
    }
}

both_backends! {
    async fn removing_a_user_transfers_their_credentials_and_revokes_their_keys(backend: Backend) {
        let db = TestDb::new(backend).await;
        let app = TestApp::spawn(&db).await;
        let dave = key(&app, Role::Member, Some("dave")).await;
        let erin = key(&app, Role::Member, Some("erin")).await;
        let keys = crate::helpers::master_keys(&app.config);
        let first = create(&app, &dave, "dave 1", "pw").await;
        let second = create(&app, &erin, "erin 1", "pw").await;
        share(&app, &erin, &second, Value::Null, json!([{"user_id": "dave", "access": "view"}])).await;
        let cli = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_credgate"))
                .args(args)
                .env("CREDGATE_DATABASE_URL", &db.url)
                .env("CREDGATE_MASTER_KEYS", &keys)
                .env("CREDGATE_PROVIDERS_DIR", concat!(env!("CARGO_MANIFEST_DIR"), "/providers"))
                .output()
                .unwrap()
        };

        let to_erin = cli(&["user", "remove", "--org", &app.org.id, "--user", "dave", "--transfer-to", "erin"]);
        tokio::time::sleep(std::time::Duration::from_millis(5200)).await; // the key cache
        let (dave_now, _) = app.call(Method::GET, "/integrations/credentials", &dave, None).await;
        let (_, owned) = app.call(Method::GET, &format!("/integrations/credentials/{first}"), &erin, None).await;
        let (_, grants) = app.call(Method::GET, &format!("/integrations/credentials/{second}"), &erin, None).await;
        let to_org = cli(&["user", "remove", "--org", &app.org.id, "--user", "erin", "--transfer-to", "org"]);
        let (_, as_org) = app.call(Method::GET, &format!("/integrations/credentials/{first}"), &app.org.admin, None).await;
        let bad = cli(&["user", "remove", "--org", &app.org.id, "--user", "x", "--transfer-to", "x"]);

        assert!(to_erin.status.success(), "{}", String::from_utf8_lossy(&to_erin.stderr));
        assert_eq!(dave_now, StatusCode::UNAUTHORIZED, "dave's keys are revoked");
        assert_eq!(owned["owner"], "erin");
        assert_eq!(grants["sharing"]["users"], json!([]), "dave's grants are gone");
        assert!(to_org.status.success());
        assert_eq!(as_org["owner"], Value::Null, "now an organization credential");
        assert!(!bad.status.success());
    }
}
