//! Refreshed tokens commit in groups: refreshes whose writes meet share one
//! transaction, each still written only where its own refresh holds (its
//! lease, the secrets it read, the organization's data key), and one the
//! database refuses fails alone.

use std::time::Duration;

use credgate::oauth::worker::{try_refresh_due, Step};
use credgate::store::{AuditEvent, CredentialRow, Notification, PendingRefresh, RefreshedTokens, StoreError};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection, Row};

use crate::helpers::{until_a_lock_is_awaited, Backend, TestApp, TestDb};
use crate::oauth::{connect, oauth_app};
use crate::oauth_server::{AuthServer, Flavor, User};

/// Far in the future: the expiry each written refresh sets.
const EXPIRES_AT: i64 = 4_102_444_800;

/// PostgreSQL credentials named `names`, each leased to `me` (or, where
/// named `taken`, to another holder), as read afterwards.
async fn leased(app: &TestApp, names: &[&str]) -> Vec<CredentialRow> {
    let mut rows = Vec::new();
    for name in names {
        let id = crate::helpers::cid(&app.create_pg(&app.org, name, "pw").await);
        let owner = if *name == "taken" { "someone else" } else { "me" };
        let store = &app.state.store;
        assert!(store
            .claim_refresh(&app.org.id, &id, owner, app.clock.now() + 60)
            .await
            .unwrap());
        rows.push(store.credential(&app.org.id, &id).await.unwrap().unwrap());
    }
    rows
}

/// A refresh's write as the refresh of `row` under `me`'s lease hands it to
/// the group commit: the same ciphertext (it still opens), a new expiry.
fn pending(row: &CredentialRow) -> PendingRefresh {
    PendingRefresh {
        org_id: row.org_id.clone(),
        id: row.id.clone(),
        expected: row.secret_version,
        owner: "me".into(),
        tokens: RefreshedTokens {
            secret_ct: row.secret_ct.clone(),
            key_version: row.key_version,
            expires_at: Some(EXPIRES_AT),
            refresh_after: None,
            refresh_expires_at: None,
            scopes: None,
        },
        event: AuditEvent {
            org_id: row.org_id.clone(),
            credential_id: Some(row.id.clone()),
            action: "credential.refresh",
            outcome: "success",
            actor: "refresh-group-test".into(),
            detail: None,
        },
        notify: None,
    }
}

/// A credential's secret version, expiry and lease holder now.
async fn state(app: &TestApp, row: &CredentialRow) -> (i64, Option<i64>, Option<String>) {
    let r = sqlx::query("SELECT secret_version, expires_at, lease_owner FROM credentials WHERE id = $1")
        .bind(&row.id)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// The ids `sql` returns, sorted.
async fn ids(app: &TestApp, sql: &str) -> Vec<String> {
    let mut ids: Vec<String> = sqlx::query_scalar(sql).fetch_all(&app.sql().await).await.unwrap();
    ids.sort();
    ids
}

fn sorted(rows: &[&CredentialRow]) -> Vec<String> {
    let mut ids: Vec<String> = rows.iter().map(|r| r.id.to_string()).collect();
    ids.sort();
    ids
}

async fn refreshed_tokens_written_together_are_each_written_only_where_their_own_refresh_holds(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let rows = leased(
        &app,
        &["recovered", "plain", "read older secrets", "taken", "stale key", "gone"],
    )
    .await;
    let mut group: Vec<PendingRefresh> = rows.iter().map(pending).collect();
    group[0].notify = Some(Notification::new(
        "credential.recovered",
        &app.org.id,
        &rows[0].id,
        "postgresql",
        json!({}),
    ));
    group[2].expected += 1;
    group[4].tokens.key_version += 1;
    let gone = credgate::ids::OrgId::generate();
    group[5].org_id = gone.clone();
    group[5].event.org_id = gone;

    let outcomes = app.state.store.store_refreshed(&group).await;

    let shown: Vec<String> = outcomes.iter().map(|o| format!("{o:?}")).collect();
    assert!(
        matches!(outcomes[0], Ok(true)) && matches!(outcomes[1], Ok(true)),
        "{shown:?}"
    );
    assert!(
        matches!(outcomes[2], Ok(false)),
        "secrets written since its read: {shown:?}"
    );
    assert!(matches!(outcomes[3], Ok(false)), "another holder's lease: {shown:?}");
    assert!(matches!(outcomes[4], Err(StoreError::KeyRotated)), "{shown:?}");
    assert!(matches!(outcomes[5], Err(StoreError::NotFound)), "{shown:?}");
    for row in &rows[..2] {
        let written = (row.secret_version + 1, Some(EXPIRES_AT), None);
        assert_eq!(state(&app, row).await, written, "{}: written, lease released", row.name);
    }
    for row in &rows[2..] {
        let holder = if row.name == "taken" { "someone else" } else { "me" };
        let untouched = (row.secret_version, row.expires_at, Some(holder.to_owned()));
        assert_eq!(state(&app, row).await, untouched, "{}: nothing written", row.name);
    }
    let events = ids(
        &app,
        "SELECT credential_id FROM audit_events WHERE actor = 'refresh-group-test'",
    )
    .await;
    assert_eq!(
        events,
        sorted(&[&rows[0], &rows[1]]),
        "an audit event for each write, none for the others"
    );
    let notes = ids(
        &app,
        "SELECT credential_id FROM outbox WHERE kind = 'credential.recovered'",
    )
    .await;
    assert_eq!(notes, [rows[0].id.clone()]);
    if backend == Backend::Postgres {
        let transactions: i64 = sqlx::query_scalar(&format!(
            "SELECT COUNT(DISTINCT xmin::text) FROM credentials WHERE id IN ('{}', '{}')",
            rows[0].id, rows[1].id
        ))
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
        assert_eq!(transactions, 1, "the group is written in one transaction");
    }
    // What was written is the credential's: it resolves.
    let (status, body) = app
        .call(
            Method::POST,
            &format!("/integrations/credentials/{}/resolve", rows[0].id),
            &app.org.engine,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["fields"]["password"], "pw");
}
crate::both_backends!(refreshed_tokens_written_together_are_each_written_only_where_their_own_refresh_holds);

/// Makes the database refuse a secrets write (not a lease) of the
/// credential named `refused`.
async fn refuse_secret_writes(app: &TestApp, backend: Backend) {
    let sql = app.sql().await;
    let when = "NEW.name = 'refused' AND NEW.secret_version <> OLD.secret_version";
    match backend {
        Backend::Postgres => {
            sqlx::query(&format!(
                "CREATE FUNCTION refuse_secret_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF {when} THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$"
            ))
            .execute(&sql)
            .await
            .unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse_secret_writes BEFORE UPDATE ON credentials \
                 FOR EACH ROW EXECUTE FUNCTION refuse_secret_writes()",
            )
            .execute(&sql)
            .await
            .unwrap();
        }
        Backend::Sqlite => {
            sqlx::query(&format!(
                "CREATE TRIGGER refuse_secret_writes BEFORE UPDATE ON credentials WHEN {when} \
                 BEGIN SELECT RAISE(ABORT, 'refused'); END"
            ))
            .execute(&sql)
            .await
            .unwrap();
        }
    }
}

async fn a_refreshed_token_write_the_database_refuses_fails_alone_and_the_rest_of_its_group_is_written(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let rows = leased(&app, &["before", "refused", "after"]).await;
    refuse_secret_writes(&app, backend).await;
    let group: Vec<PendingRefresh> = rows.iter().map(pending).collect();

    let outcomes = app.state.store.store_refreshed(&group).await;

    let shown: Vec<String> = outcomes.iter().map(|o| format!("{o:?}")).collect();
    assert!(
        matches!(outcomes[0], Ok(true)) && matches!(outcomes[2], Ok(true)),
        "{shown:?}"
    );
    assert!(matches!(outcomes[1], Err(StoreError::Database(_))), "{shown:?}");
    assert_eq!(
        state(&app, &rows[0]).await,
        (rows[0].secret_version + 1, Some(EXPIRES_AT), None)
    );
    assert_eq!(
        state(&app, &rows[1]).await,
        (rows[1].secret_version, None, Some("me".into()))
    );
    assert_eq!(
        state(&app, &rows[2]).await,
        (rows[2].secret_version + 1, Some(EXPIRES_AT), None)
    );
    let events = ids(
        &app,
        "SELECT credential_id FROM audit_events WHERE actor = 'refresh-group-test'",
    )
    .await;
    assert_eq!(events, sorted(&[&rows[0], &rows[2]]));
}
crate::both_backends!(a_refreshed_token_write_the_database_refuses_fails_alone_and_the_rest_of_its_group_is_written);

/// Time passes until every one of `ids` is due (about half its token's
/// lifetime), before any expires.
async fn make_all_due(app: &TestApp, ids: &[String]) {
    let mut latest = app.clock.now();
    for id in ids {
        let (_, after, _) = app.refresh_state(id).await;
        latest = latest.max(after.unwrap());
    }
    app.clock.advance(latest - app.clock.now() + 1);
}

/// The worker's refreshes meet at the group commit while a session behind
/// the API's back holds the organization's row (which the first group's
/// key check waits for): the first waits alone, the seven behind it are
/// written in one transaction. Every rotated refresh token is stored (none
/// is used twice), each with its audit event. PostgreSQL: its `xmin` names
/// each row's writing transaction. (One transaction per refresh, before
/// the group commit: eight.)
#[test]
fn refreshes_whose_writes_meet_are_committed_in_one_transaction() {
    crate::helpers::run_test(refreshes_meet());
}

async fn refreshes_meet() {
    let db = TestDb::new(Backend::Postgres).await;
    let ms = AuthServer::start(Flavor::Microsoft).await;
    let app = oauth_app(&db, &[(&ms, "sharepoint")], |_| {}).await;
    let mut ids = Vec::new();
    for n in 0..8 {
        ms.with(|i| i.user = User::new(100 + n));
        ids.push(connect(&app, "sharepoint", "").await["credential_id"].clone());
    }
    make_all_due(&app, &ids).await;
    let mut other = PgConnection::connect(&db.url).await.unwrap();
    other.execute("BEGIN").await.unwrap();
    sqlx::query("SELECT id FROM organizations WHERE id = $1 FOR UPDATE")
        .bind(app.org.id.as_str())
        .execute(&mut other)
        .await
        .unwrap();

    let step = try_refresh_due(&app.state, 100);
    let release = async {
        let held = async {
            until_a_lock_is_awaited(&app).await;
            while ms.with(|i| i.refresh_grants) < 8 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let waited = tokio::time::timeout(Duration::from_secs(30), held).await;
        // The seven others hand their writes to the group commit meanwhile.
        tokio::time::sleep(Duration::from_millis(300)).await;
        other.execute("ROLLBACK").await.unwrap();
        assert!(
            waited.is_ok(),
            "a write waited for the organization, and all eight asked the provider"
        );
    };
    let (step, ()) = tokio::join!(step, release);

    assert_eq!(
        step.unwrap(),
        Step {
            claimed: 8,
            refreshed: 8,
            failed: 0
        }
    );
    let list = ids.iter().map(|id| format!("'{id}'")).collect::<Vec<_>>().join(", ");
    let count = |sql: String| {
        let app = &app;
        async move {
            sqlx::query_scalar::<_, i64>(&sql)
                .fetch_one(&app.sql().await)
                .await
                .unwrap()
        }
    };
    let transactions = count(format!(
        "SELECT COUNT(DISTINCT xmin::text) FROM credentials WHERE id IN ({list})"
    ))
    .await;
    assert_eq!(
        transactions, 2,
        "the first write alone, the seven that met it in one transaction"
    );
    let events = count(format!(
        "SELECT COUNT(*) FROM audit_events WHERE action = 'credential.refresh' AND outcome = 'success' AND credential_id IN ({list})"
    ))
    .await;
    assert_eq!(events, 8);
    // Each stored refresh token is the rotated one: the next refresh of each
    // uses it once, and nothing is reused.
    make_all_due(&app, &ids).await;
    let again = try_refresh_due(&app.state, 100).await.unwrap();
    assert_eq!(
        again,
        Step {
            claimed: 8,
            refreshed: 8,
            failed: 0
        }
    );
    assert_eq!(ms.with(|i| (i.refresh_grants, i.reuse_detected)), (16, 0));
}
