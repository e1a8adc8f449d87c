//! The provider has answered a connection's code exchange (the code is
//! used, the tokens issued) and the database blinks as credgate stores the
//! grant (PostgreSQL silent; SQLite's write lock held by another
//! connection): the callback waits for the database and stores the grant.
//! Before, the tokens were dropped and the browser got `internal`. A
//! database that stays away longer than the callback waits (20 s) gets the
//! tokens revoked at the provider, and the browser `store_unavailable`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use super::fault_proxy::FaultProxy;
use crate::helpers::{Backend, TestApp, TestDb};
use crate::oauth::{authorize, callback, consent, oauth_app, RETURN_TO};
use crate::oauth_server::{Answer, AuthServer, Flavor, Gate};
use crate::refresh::resolve;

/// Connects a `provider` credential at `ms`; the database blinks for
/// `blink` once the provider has answered the code exchange. Returns the
/// app, the fault proxy its PostgreSQL store goes through (kept as long as
/// the app), the callback's answer and where it redirects.
async fn connect_through_a_blink(
    db: &TestDb,
    backend: Backend,
    ms: &AuthServer,
    provider: &str,
    blink: Duration,
) -> (TestApp, Option<FaultProxy>, reqwest::Response, String) {
    let proxy = match backend {
        Backend::Postgres => Some(FaultProxy::start(&db.url).await),
        Backend::Sqlite => None,
    };
    let through = proxy.as_ref().map(|p| p.url.clone());
    let app = oauth_app(db, &[(ms, provider)], |c| {
        // Each store operation gives up after a second: the grant's first
        // write fails well inside the blink.
        c.db_timeout = Duration::from_secs(1);
        if let Some(url) = through {
            c.database_url = url;
        }
    })
    .await;
    let return_to: String = url::form_urlencoded::byte_serialize(RETURN_TO.as_bytes()).collect();
    let url = authorize(&app, provider, &format!("name=Blink&return_to={return_to}")).await;
    let back = consent(&app, &url).await;
    let held = Arc::new(Gate::default());
    ms.with(|i| i.answer_gate = Some(held.clone()));

    let answered = {
        let finishing = callback(&app, &back);
        tokio::pin!(finishing);
        tokio::select! {
            _ = &mut finishing => panic!("the callback was answered while the provider's answer was held"),
            _ = held.arrivals(1) => {}
        }
        let lock = match &proxy {
            Some(proxy) => {
                proxy.fall_silent();
                None
            }
            None => {
                let mut conn = app.sql().await.acquire().await.unwrap();
                sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await.unwrap();
                Some(conn)
            }
        };
        ms.with(|i| i.answer_gate = None);
        held.release(1, Answer::Normal);
        let heal = async {
            tokio::time::sleep(blink).await;
            match (&proxy, lock) {
                (Some(proxy), _) => proxy.heal(),
                (None, Some(mut conn)) => {
                    sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
                }
                (None, None) => unreachable!(),
            }
        };
        tokio::join!(finishing, heal).0
    };
    let location = answered.headers()["location"].to_str().unwrap().to_owned();
    (app, proxy, answered, location)
}

fn query(location: &str) -> std::collections::HashMap<String, String> {
    url::Url::parse(location).unwrap().query_pairs().into_owned().collect()
}

async fn a_grant_stored_while_the_database_blinks_waits_for_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let (app, _proxy, answered, location) =
        connect_through_a_blink(&db, backend, &ms, "sharepoint", Duration::from_millis(2500)).await;
    let result = query(&location);
    let id = result.get("credential_id").cloned().unwrap_or_default();
    let (resolved, body) = resolve(&app, &id).await;

    assert_eq!(answered.status(), StatusCode::FOUND);
    assert_eq!(result.get("result").map(String::as_str), Some("success"), "{location}");
    assert_eq!(resolved, StatusCode::OK, "{body}");
    assert!(ms.access_valid(body["access_token"].as_str().unwrap_or_default()));
}
crate::both_backends!(a_grant_stored_while_the_database_blinks_waits_for_it);

async fn a_grant_the_database_never_takes_is_revoked(backend: Backend) {
    let db = TestDb::new(backend).await;
    let google = AuthServer::start(Flavor::Google).await;
    let (app, _proxy, answered, location) =
        connect_through_a_blink(&db, backend, &google, "google", Duration::from_secs(25)).await;
    let issued = google.with(|i| i.issued.clone());
    let mut revoked = Vec::new();
    for _ in 0..50 {
        revoked = google.with(|i| i.revoked.clone());
        if !revoked.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, listed) = app
        .call(reqwest::Method::GET, "/integrations/credentials", &app.org.admin, None)
        .await;

    assert_eq!(answered.status(), StatusCode::FOUND);
    let result = query(&location);
    assert_eq!(result.get("result").map(String::as_str), Some("error"), "{location}");
    assert_eq!(
        result.get("code").map(String::as_str),
        Some("store_unavailable"),
        "{location}"
    );
    let refresh_token = issued
        .iter()
        .find(|t| t.starts_with("RT-"))
        .expect("a refresh token was issued");
    assert!(
        revoked.contains(refresh_token),
        "the grant's refresh token was revoked: {revoked:?}"
    );
    assert_eq!(listed["total"], 0, "nothing stored: {listed}");
}
crate::both_backends!(a_grant_the_database_never_takes_is_revoked);
