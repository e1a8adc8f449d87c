//! The provider has answered a connection's code exchange (the code is
//! used, the tokens issued) and the database blinks as credgate stores the
//! grant (PostgreSQL silent; SQLite's write lock held by another
//! connection): the callback waits for the database and stores the grant.
//! Before, the tokens were dropped and the browser got `internal`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;

use super::fault_proxy::FaultProxy;
use crate::helpers::{Backend, TestDb};
use crate::oauth::{authorize, callback, consent, oauth_app, RETURN_TO};
use crate::oauth_server::{Answer, AuthServer, Flavor, Gate};
use crate::refresh::resolve;

async fn a_grant_stored_while_the_database_blinks_waits_for_it(backend: Backend) {
    let db = TestDb::new(backend).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let proxy = match backend {
        Backend::Postgres => Some(FaultProxy::start(&db.url).await),
        Backend::Sqlite => None,
    };
    let through = proxy.as_ref().map(|p| p.url.clone());
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |c| {
        // Each store operation gives up after a second: the grant's first
        // write fails well inside the blink.
        c.db_timeout = Duration::from_secs(1);
        if let Some(url) = through {
            c.database_url = url;
        }
    })
    .await;
    let return_to: String = url::form_urlencoded::byte_serialize(RETURN_TO.as_bytes()).collect();
    let url = authorize(&app, "sharepoint", &format!("name=Blink&return_to={return_to}")).await;
    let back = consent(&app, &url).await;
    let held = Arc::new(Gate::default());
    ms.with(|i| i.answer_gate = Some(held.clone()));

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
        tokio::time::sleep(Duration::from_millis(2500)).await;
        match (&proxy, lock) {
            (Some(proxy), _) => proxy.heal(),
            (None, Some(mut conn)) => {
                sqlx::query("COMMIT").execute(&mut *conn).await.unwrap();
            }
            (None, None) => unreachable!(),
        }
    };
    let (answered, ()) = tokio::join!(finishing, heal);
    let location = answered.headers()["location"].to_str().unwrap().to_owned();
    let result: std::collections::HashMap<String, String> =
        url::Url::parse(&location).unwrap().query_pairs().into_owned().collect();
    let id = result.get("credential_id").cloned().unwrap_or_default();
    let (resolved, body) = resolve(&app, &id).await;

    assert_eq!(answered.status(), StatusCode::FOUND);
    assert_eq!(result.get("result").map(String::as_str), Some("success"), "{location}");
    assert_eq!(resolved, StatusCode::OK, "{body}");
    assert!(ms.access_valid(body["access_token"].as_str().unwrap_or_default()));
    drop(proxy);
}
crate::both_backends!(a_grant_stored_while_the_database_blinks_waits_for_it);
