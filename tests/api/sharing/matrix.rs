//! Every route × every level of the caller, from one table: each level
//! granted by name and by the team, owners and admins.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use super::{authorize_as, connect_as, create, resolve_for, share, People, Via, LEVELS};
use crate::both_backends;
use crate::helpers::{sentinel, TestApp, TestDb};
use crate::oauth::oauth_app;
use crate::oauth_server::{AuthServer, Flavor};

/// The expected answer of each route for each level (columns as
/// [`LEVELS`]). Where a route answers 200 whatever it found, the answer is
/// what it showed:
/// - `list` (filtered to this credential's name): 200 listed with the
///   caller's `access` and counted in `total`; 404 absent and not counted.
/// - `batch-delete` (a twin credential and a missing id): 200 the twin
///   deleted and the missing id in `not_found`; 404 both in `not_found`
///   alike and the twin still there.
///
/// `resolve` is engine-only: the engine asks, acting for the caller's user,
/// except in the admin column, where the admin key itself asks and its role
/// is refused (403) whatever its level.
const MATRIX: &[(&str, [u16; 6])] = &[
    //                  none  use  view manage owner admin
    ("list", [404, 200, 200, 200, 200, 200]),
    ("get", [404, 200, 200, 200, 200, 200]),
    ("patch", [404, 403, 403, 200, 200, 200]),
    ("test", [404, 200, 200, 200, 200, 200]),
    ("refresh", [404, 403, 403, 409, 409, 409]),
    ("audit", [404, 403, 200, 200, 200, 200]),
    ("usage", [404, 403, 200, 200, 200, 200]),
    ("sharing", [404, 403, 403, 200, 200, 200]),
    ("resolve", [404, 200, 200, 200, 200, 403]),
    ("batch-delete", [404, 404, 404, 200, 200, 200]),
    ("delete", [404, 403, 403, 204, 204, 204]),
];

/// One column of the matrix: who calls, on which credential (and its twin).
struct Subject {
    caller: String,
    id: String,
    twin: String,
    name: String,
    /// The `access` a listing must show.
    access: &'static str,
}

/// Creates the credential (and its twin) of one column, shared `via`.
async fn arrange(app: &TestApp, people: &People, via: Via, level: &str, secret: &str) -> Subject {
    let (owner, caller) = match level {
        "owner" => (&people.bob, &people.bob),
        "admin" => (&people.alice, &people.admin),
        _ => (&people.alice, &people.bob),
    };
    let name = format!("main-{via:?}-{level}").to_lowercase();
    let id = create(app, owner, &name, secret).await;
    let twin = create(app, owner, &format!("twin-{via:?}-{level}"), secret).await;
    let (team, users) = via.sharing(level);
    for shared in [&id, &twin] {
        let status = share(app, owner, shared, team.clone(), users.clone()).await;
        assert_eq!(status, StatusCode::OK);
    }
    let access = match level {
        "use" => "use",
        "view" => "view",
        _ => "manage",
    };
    Subject {
        caller: caller.clone(),
        id,
        twin,
        name,
        access,
    }
}

/// Whether the listing shows the credential as it must: 200 listed and
/// counted, 404 absent and not counted, 500 anything else.
fn list_outcome(page: &Value, s: &Subject) -> u16 {
    let item = page["items"]
        .as_array()
        .and_then(|items| items.iter().find(|i| i["id"] == s.id));
    match (item, page["total"].as_i64()) {
        (Some(item), Some(1)) if item["access"] == s.access => 200,
        (None, Some(0)) => 404,
        _ => 500,
    }
}

/// Calls `route` on the subject; returns the status (or outcome) and body.
async fn call(app: &TestApp, people: &People, via: Via, level: &str, route: &str, s: &Subject) -> (u16, Value) {
    let path = format!("/integrations/credentials/{}", s.id);
    let caller = s.caller.as_str();
    let (status, body) = match route {
        "list" => {
            let (status, page) = app
                .call(
                    Method::GET,
                    &format!("/integrations/credentials?q={}", s.name),
                    caller,
                    None,
                )
                .await;
            let outcome = if status == StatusCode::OK {
                list_outcome(&page, s)
            } else {
                status.as_u16()
            };
            return (outcome, page);
        }
        "batch-delete" => {
            let missing = Uuid::new_v4().to_string();
            let ids = json!({"ids": [s.twin, missing]});
            let (status, body) = app
                .call(
                    Method::POST,
                    "/integrations/credentials/batch-delete",
                    caller,
                    Some(ids),
                )
                .await;
            let (twin_now, _) = app
                .call(
                    Method::GET,
                    &format!("/integrations/credentials/{}", s.twin),
                    &people.admin,
                    None,
                )
                .await;
            let outcome = match (status, twin_now) {
                (StatusCode::OK, StatusCode::NOT_FOUND)
                    if body == json!({"deleted": [s.twin], "not_found": [missing]}) =>
                {
                    200
                }
                (StatusCode::OK, StatusCode::OK) if body == json!({"deleted": [], "not_found": [s.twin, missing]}) => {
                    404
                }
                (StatusCode::OK, _) => 500,
                (other, _) => other.as_u16(),
            };
            return (outcome, body);
        }
        "get" => app.call(Method::GET, &path, caller, None).await,
        "patch" => {
            app.call(Method::PATCH, &path, caller, Some(json!({"name": "renamed"})))
                .await
        }
        "test" => app.call(Method::POST, &format!("{path}/test"), caller, None).await,
        "refresh" => app.call(Method::POST, &format!("{path}/refresh"), caller, None).await,
        "audit" => app.call(Method::GET, &format!("{path}/audit"), caller, None).await,
        "usage" => app.call(Method::GET, &format!("{path}/usage"), caller, None).await,
        "sharing" => {
            let (team, users) = via.sharing(level);
            let body = json!({"team": team, "users": users});
            app.call(Method::PUT, &format!("{path}/sharing"), caller, Some(body))
                .await
        }
        "resolve" if level == "admin" => resolve_for(app, &people.admin, &s.id, None).await,
        "resolve" => resolve_for(app, &people.engine, &s.id, Some(json!({"user_id": "bob"}))).await,
        "delete" => app.call(Method::DELETE, &path, caller, None).await,
        other => panic!("no route {other} in the matrix"),
    };
    (status.as_u16(), body)
}

async fn every_route_answers_as_the_callers_level_allows(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let people = People::new(&app).await;
    let secret = sentinel();
    let mut seen = Vec::new();

    for via in [Via::User, Via::Team] {
        for (i, level) in via.levels().iter().enumerate() {
            let subject = arrange(&app, &people, via, level, &secret).await;
            for (route, expected) in MATRIX {
                let (got, body) = call(&app, &people, via, level, route, &subject).await;
                assert!(
                    *route == "resolve" || !body.to_string().contains(&secret),
                    "{route} at {level} via {via:?} showed the secret"
                );
                seen.push(((via, *route, *level), got, expected[i]));
            }
        }
    }

    let wrong: Vec<_> = seen.iter().filter(|(_, got, want)| got != want).collect();
    assert!(wrong.is_empty(), "(via, route, level), got, expected: {wrong:?}");
    assert_eq!(seen.len(), MATRIX.len() * (LEVELS.len() + 4), "every cell ran");
}
both_backends!(every_route_answers_as_the_callers_level_allows);

/// `GET /integrations/google/authorize?credential_id=` (re-authorizing in
/// place) for each level (columns as [`LEVELS`]): it needs `manage`.
const AUTHORIZE: [u16; 6] = [404, 403, 403, 200, 200, 200];

async fn reauthorizing_an_oauth_credential_needs_manage_granted_by_name_or_by_the_team(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let app = oauth_app(&db, &[(&google, "google")], |_| {}).await;
    let people = People::new(&app).await;
    let id = connect_as(&app, &people.alice, "google").await;
    let issued = google.with(|i| i.issued.clone());
    let mut seen = Vec::new();

    for via in [Via::User, Via::Team] {
        for (i, level) in via.levels().iter().enumerate() {
            let (team, users) = via.sharing(level);
            assert_eq!(share(&app, &people.alice, &id, team, users).await, StatusCode::OK);
            let caller = match *level {
                "owner" => &people.alice,
                "admin" => &people.admin,
                _ => &people.bob,
            };
            let (status, body) = authorize_as(&app, caller, "google", &format!("credential_id={id}")).await;
            assert!(
                issued.iter().all(|t| !body.to_string().contains(t)),
                "a token showed at {level}"
            );
            seen.push(((via, *level), status.as_u16(), AUTHORIZE[i]));
        }
    }

    assert!(!issued.is_empty(), "the connect handed out tokens to look for");
    let wrong: Vec<_> = seen.iter().filter(|(_, got, want)| got != want).collect();
    assert!(wrong.is_empty(), "(via, level), got, expected: {wrong:?}");
}
both_backends!(reauthorizing_an_oauth_credential_needs_manage_granted_by_name_or_by_the_team);
