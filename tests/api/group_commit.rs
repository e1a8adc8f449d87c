//! Resolves commit their use events in groups: many at once are each
//! recorded exactly once, and when a group's commit fails every request in
//! it fails too — none is answered without its audit event. Creates commit
//! in groups too: each is checked on its own (data key, limit), one the
//! database refuses fails alone, and a group that cannot be written is
//! written not at all.

use axum::http::Method;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Row;

use credgate::ids::{CredentialId, OrgId, UserId};
use credgate::model::{Access, AuthKind};
use credgate::store::{
    AuditEvent, CredentialRead, NewCredential, Notification, PendingCreate, StoreError, Usage, UseOutcome, UseRecord,
};

use crate::helpers::{cid, pg_body, sentinel, test_config, Backend, TestApp, TestDb};

async fn resolve(app: &TestApp, id: &str, run: usize) -> (StatusCode, Value) {
    app.call(
        Method::POST,
        &format!("/integrations/credentials/{id}/resolve"),
        &app.org.engine,
        Some(json!({"workflow_id": "wf-burst", "run_id": format!("run-{run}")})),
    )
    .await
}

async fn resolve_events(app: &TestApp) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM audit_events WHERE action = 'credential.resolve'")
        .fetch_one(&app.sql().await)
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

async fn a_burst_of_resolves_records_each_use_exactly_once(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let ids = [
        app.create_pg(&app.org, "a", &sentinel()).await,
        app.create_pg(&app.org, "b", &sentinel()).await,
    ];

    let answers = join_all((0..96).map(|n| resolve(&app, &ids[n % 2], n))).await;
    let (_, usage) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials/{}/usage", ids[0]),
            &app.org.admin,
            None,
        )
        .await;
    let runs: i64 = sqlx::query("SELECT COUNT(DISTINCT run_id) FROM audit_events WHERE action = 'credential.resolve'")
        .fetch_one(&app.sql().await)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();

    assert!(
        answers.iter().all(|(s, _)| *s == StatusCode::OK),
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert_eq!(resolve_events(&app).await, 96);
    assert_eq!(runs, 96, "each request's own event");
    assert_eq!(usage["uses_total"], 48);
    assert_eq!(usage["workflows"][0]["workflow_id"], "wf-burst");
}
crate::both_backends!(a_burst_of_resolves_records_each_use_exactly_once);

/// A resolve's use of credential `id`, as the domain records it.
fn use_record(org: &OrgId, id: &str, workflow: Option<&str>, run: Option<&str>) -> UseRecord {
    let mut event = AuditEvent::success(org, &cid(id), "credential.resolve", "api_key:engine");
    if workflow.is_some() || run.is_some() {
        event = event.with_detail(json!({"workflow_id": workflow, "run_id": run}));
    }
    UseRecord {
        event,
        usage: Usage {
            workflow_id: workflow.map(str::to_owned),
            run_id: run.map(str::to_owned),
        },
        read_at: None,
    }
}

/// The event ids of uses each written (none decided on an earlier read).
pub fn ids_of(ids: Vec<Option<i64>>) -> Vec<i64> {
    ids.into_iter()
        .map(|id| id.expect("an unchecked use is written"))
        .collect()
}

/// A `credential.resolve` row: organization, credential, action, actor,
/// detail, workflow, run, time.
type StoredUse = (
    String,
    String,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

async fn a_group_of_uses_records_each_event_as_given_and_last_use_once_a_minute(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let other = app.new_org("Other").await;
    let a = app.create_pg(&app.org, "a", &sentinel()).await;
    let b = app.create_pg(&app.org, "b", &sentinel()).await;
    let theirs = app.create_pg(&other, "theirs", &sentinel()).await;
    // Values a statement built from them could mangle: quotes,
    // backslashes, JSON-looking text, non-ASCII.
    let odd = r#"wf "quoted" \back\slash {"not": "json"} é 日本"#;
    let uses = [
        use_record(&app.org.id, &a, Some(odd), Some("run-1")),
        use_record(&app.org.id, &b, None, None),
        use_record(&app.org.id, &a, Some("wf-2"), None),
        use_record(&other.id, &theirs, None, Some("run-3")),
    ];
    let first = app.state.store.now();

    app.state.store.record_uses(&uses).await.unwrap();
    app.clock.advance(30);
    app.state.store.record_uses(&uses[1..2]).await.unwrap();
    app.clock.advance(31);
    app.state.store.record_uses(&uses[2..3]).await.unwrap();
    // The manual clock follows the wall clock between its moves: a
    // second boundary passed meanwhile shifts the times by that much.
    let drift = app.state.store.now() - first - 61;
    assert!((0..=5).contains(&drift), "{drift}");
    let near = |at: i64, want: i64| (want..=want + drift).contains(&at);

    let sql = app.sql().await;
    let events: Vec<StoredUse> = sqlx::query_as(
        "SELECT org_id, credential_id, action, actor, detail, workflow_id, run_id, at FROM audit_events \
             WHERE action = 'credential.resolve' ORDER BY id",
    )
    .fetch_all(&sql)
    .await
    .unwrap();
    let detail = |e: &StoredUse| e.4.as_deref().map(|d| serde_json::from_str::<Value>(d).unwrap());
    let expected = [
        (&app.org.id, &a, Some(odd), Some("run-1"), first),
        (&app.org.id, &b, None, None, first),
        (&app.org.id, &a, Some("wf-2"), None, first),
        (&other.id, &theirs, None, Some("run-3"), first),
        (&app.org.id, &b, None, None, first + 30),
        (&app.org.id, &a, Some("wf-2"), None, first + 61),
    ];
    assert_eq!(events.len(), expected.len(), "{events:?}");
    for (event, (org, id, workflow, run, at)) in events.iter().zip(expected) {
        assert_eq!(
            (event.0.as_str(), &event.1, event.2.as_str(), event.3.as_str()),
            (org.as_str(), id, "credential.resolve", "api_key:engine")
        );
        assert_eq!((event.5.as_deref(), event.6.as_deref()), (workflow, run), "{event:?}");
        assert!(near(event.7, at), "{event:?}: at {at} (+{drift})");
        let want = (workflow.is_some() || run.is_some()).then(|| json!({"workflow_id": workflow, "run_id": run}));
        assert_eq!(detail(event), want);
    }
    let last_used = |id: String| {
        let sql = sql.clone();
        async move {
            sqlx::query_scalar::<_, Option<i64>>("SELECT last_used_at FROM credentials WHERE id = $1")
                .bind(id)
                .fetch_one(&sql)
                .await
                .unwrap()
        }
    };
    // b's second use came 30 s after its first: not rewritten; a's came
    // 61 s after: rewritten.
    let (a_used, b_used, theirs_used) = (
        last_used(a.clone()).await,
        last_used(b.clone()).await,
        last_used(theirs.clone()).await,
    );
    assert!(a_used.is_some_and(|t| near(t, first + 61)), "{a_used:?}");
    // Not rewritten: b's first use, with every other event of that group.
    assert_eq!(b_used, Some(events[1].7));
    assert!(b_used.is_some_and(|t| near(t, first)), "{b_used:?}");
    assert_eq!(theirs_used, Some(events[3].7));
}
crate::both_backends!(a_group_of_uses_records_each_event_as_given_and_last_use_once_a_minute);

/// Gateway calls: uses written in one group, each answered with its
/// event's id, then their outcomes in one group; each outcome lands on its
/// own use (its detail kept, the facts added), an id with no use changes
/// nothing.
async fn each_outcome_of_a_group_lands_on_its_own_use(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let a = app.create_pg(&app.org, "a", &sentinel()).await;
    let proxied = |n: usize| {
        let mut record = use_record(&app.org.id, &a, Some(&format!("wf-{n}")), None);
        record.event.action = "credential.proxy";
        record
    };
    let uses: Vec<UseRecord> = (0..5).map(proxied).collect();

    let ids = ids_of(app.state.store.record_uses(&uses).await.unwrap());
    let outcome = |n: usize, status: Option<u16>| UseOutcome {
        event_id: ids.get(n).copied().unwrap_or(ids[4] + 1000),
        org_id: app.org.id.clone(),
        detail: uses.get(n).and_then(|u| u.event.detail.clone()),
        status,
        error: status.is_none().then_some("unreachable"),
        latency_ms: n as u64 * 10,
    };
    let as_written: Vec<(Option<String>, String, Option<String>)> =
        sqlx::query_as("SELECT workflow_id, outcome, detail FROM audit_events ORDER BY id")
            .fetch_all(&app.sql().await)
            .await
            .unwrap();
    app.state
        .store
        .record_outcomes(&[
            outcome(3, Some(503)),
            outcome(0, Some(200)),
            outcome(4, None),
            outcome(9, Some(200)),
        ])
        .await
        .unwrap();
    // An event's outcome is written once: a second changes nothing.
    app.state.store.record_outcomes(&[outcome(0, Some(500))]).await.unwrap();
    let events = app.state.store.audit_events(&app.org.id, &cid(&a), 100).await.unwrap();
    let seen: Vec<(String, String, Value, Value, Value)> = events
        .into_iter()
        .rev()
        .filter(|e| e.action == "credential.proxy")
        .map(|e| {
            let d = e.detail.unwrap();
            (
                d["workflow_id"].as_str().unwrap().to_owned(),
                e.outcome,
                d["status"].clone(),
                d["latency_ms"].clone(),
                d["workflow_id"].clone(),
            )
        })
        .collect();
    // The audit log itself is append-only: outcomes are kept beside it.
    let after: Vec<(Option<String>, String, Option<String>)> =
        sqlx::query_as("SELECT workflow_id, outcome, detail FROM audit_events ORDER BY id")
            .fetch_all(&app.sql().await)
            .await
            .unwrap();
    assert_eq!(after, as_written, "no event was written over");
    let kept: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM use_outcomes")
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    assert_eq!(kept, 3, "the outcome of an event that does not exist is not kept");
    let want =
        |w: &str, o: &str, status: Value, latency: Value| (w.to_owned(), o.to_owned(), status, latency, json!(w));
    assert_eq!(
        seen,
        vec![
            want("wf-0", "success", json!(200), json!(0)),
            want("wf-1", "success", Value::Null, Value::Null),
            want("wf-2", "success", Value::Null, Value::Null),
            want("wf-3", "failure", json!(503), json!(30)),
            want("wf-4", "failure", Value::Null, json!(40)),
        ]
    );
}
crate::both_backends!(each_outcome_of_a_group_lands_on_its_own_use);

/// A group mixing uses decided on their own reads, on current earlier
/// reads and on stale ones (another row version, another grant, another
/// organization's credential): the stale ones alone are left out, and
/// every other gets its own event, in its place.
async fn a_group_writes_each_use_whose_read_is_current_and_no_other(backend: crate::helpers::Backend) {
    use credgate::store::ReadAt;
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let alice = crate::sharing::key(&app, credgate::model::Role::Member, Some("alice")).await;
    let a = crate::sharing::create(&app, &alice, "a", &sentinel()).await;
    let bob = json!([{"user_id": "bob", "access": "view"}]);
    assert_eq!(
        crate::sharing::share(&app, &alice, &a, Value::Null, bob).await,
        StatusCode::OK
    );
    let other = app.new_org("Other").await;
    let version: i64 = sqlx::query_scalar("SELECT row_version FROM credentials WHERE id = $1")
        .bind(&a)
        .fetch_one(&app.sql().await)
        .await
        .unwrap();
    let bob = || UserId::parse("bob").unwrap();
    let read = |n: usize, org: &OrgId, at: Option<ReadAt>| UseRecord {
        read_at: at,
        ..use_record(org, &a, Some(&format!("wf-{n}")), None)
    };
    let at = |row_version: i64, grant: Option<(UserId, Option<Access>)>| Some(ReadAt { row_version, grant });
    let uses = [
        read(0, &app.org.id, None),
        read(1, &app.org.id, at(version, None)),
        read(2, &app.org.id, at(version + 1, None)),
        read(3, &app.org.id, at(version, Some((bob(), Some(Access::View))))),
        read(4, &app.org.id, at(version, Some((bob(), Some(Access::Use))))),
        read(
            5,
            &app.org.id,
            at(version, Some((UserId::parse("carol").unwrap(), None))),
        ),
        read(6, &other.id, at(version, None)),
        read(
            7,
            &app.org.id,
            at(version, Some((UserId::parse("dave").unwrap(), Some(Access::Use)))),
        ),
    ];

    let ids = app.state.store.record_uses(&uses).await.unwrap();
    let written: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT id, workflow_id FROM audit_events WHERE action = 'credential.resolve' ORDER BY workflow_id",
    )
    .fetch_all(&app.sql().await)
    .await
    .unwrap();

    let kept = [0, 1, 3, 5];
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(id.is_some(), kept.contains(&n), "use {n}: {ids:?}");
    }
    let expected: Vec<(i64, Option<String>)> = kept
        .iter()
        .map(|&n| (ids[n].unwrap(), Some(format!("wf-{n}"))))
        .collect();
    assert_eq!(
        written, expected,
        "each kept use has its own event, and no other use has one"
    );
}
crate::both_backends!(a_group_writes_each_use_whose_read_is_current_and_no_other);

/// The ids a group of uses is answered with are its events' ids, and an id
/// is never given twice, not even after the newest events are gone (a
/// late outcome would land on another call's use).
async fn a_use_id_is_never_given_twice(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let a = app.create_pg(&app.org, "a", &sentinel()).await;
    let uses: Vec<UseRecord> = (0..3)
        .map(|n| use_record(&app.org.id, &a, Some(&format!("wf-{n}")), None))
        .collect();

    let first = ids_of(app.state.store.record_uses(&uses).await.unwrap());
    let stored: Vec<(i64, Option<String>)> = sqlx::query_as(
        "SELECT id, workflow_id FROM audit_events WHERE action = 'credential.resolve' ORDER BY workflow_id",
    )
    .fetch_all(&app.sql().await)
    .await
    .unwrap();
    sqlx::query("DELETE FROM audit_events")
        .execute(&app.sql().await)
        .await
        .unwrap();
    let second = ids_of(app.state.store.record_uses(&uses[..1]).await.unwrap());

    let by_place: Vec<(i64, Option<String>)> = first
        .iter()
        .enumerate()
        .map(|(n, id)| (*id, Some(format!("wf-{n}"))))
        .collect();
    assert_eq!(stored, by_place, "each place got its own event's id");
    assert!(second[0] > *first.iter().max().unwrap(), "{first:?} then {second:?}");
}
crate::both_backends!(a_use_id_is_never_given_twice);

async fn groups_of_uses_on_two_replicas_over_the_same_credentials_all_commit(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    // A second replica: its own store (pool, writer) on the same database.
    let replica = credgate::store::Store::connect(&db.url, app.clock.clone())
        .await
        .unwrap();
    let mut ids = Vec::new();
    for n in 0..16 {
        ids.push(app.create_pg(&app.org, &format!("c{n}"), &sentinel()).await);
    }
    let uses = |ids: &[String], round: usize| -> Vec<UseRecord> {
        let run = format!("run-{round}");
        ids.iter()
            .map(|id| use_record(&app.org.id, id, None, Some(&run)))
            .collect()
    };
    let sql = app.sql().await;
    let rounds = 40;
    for round in 0..rounds {
        // Every group sets last_used_at (each row is locked), the two
        // groups overlap in 8 credentials and name them in opposite
        // orders: locked in different orders, they would deadlock.
        sqlx::query("UPDATE credentials SET last_used_at = NULL")
            .execute(&sql)
            .await
            .unwrap();
        let mut mine = ids[..12].to_vec();
        let mut theirs = ids[4..].to_vec();
        theirs.reverse();
        if round % 2 == 1 {
            std::mem::swap(&mut mine, &mut theirs);
        }
        let (a, b) = (uses(&mine, round), uses(&theirs, round));
        let (first, second) = tokio::join!(app.state.store.record_uses(&a), replica.record_uses(&b));
        assert!(first.is_ok() && second.is_ok(), "round {round}: {first:?} {second:?}");
    }

    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE action = 'credential.resolve'")
        .fetch_one(&sql)
        .await
        .unwrap();
    let unused: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM credentials WHERE last_used_at IS NULL")
        .fetch_one(&sql)
        .await
        .unwrap();
    assert_eq!(recorded, rounds as i64 * 24);
    assert_eq!(unused, 0);
}
crate::both_backends!(groups_of_uses_on_two_replicas_over_the_same_credentials_all_commit);

async fn when_a_groups_commit_fails_every_request_in_it_fails_and_no_secret_is_returned(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let secret = sentinel();
    let id = app.create_pg(&app.org, "db", &secret).await;
    let sql = app.sql().await;
    // The database refuses every use event, as a full disk would.
    match backend {
        Backend::Postgres => {
            sqlx::query("CREATE FUNCTION refuse_uses() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                             IF NEW.action = 'credential.resolve' THEN RAISE EXCEPTION 'disk full' USING ERRCODE = 'disk_full'; \
                             END IF; RETURN NEW; END $$").execute(&sql).await.unwrap();
            sqlx::query(
                "CREATE TRIGGER refuse_uses BEFORE INSERT ON audit_events FOR EACH ROW EXECUTE FUNCTION refuse_uses()",
            )
            .execute(&sql)
            .await
            .unwrap();
        }
        Backend::Sqlite => {
            sqlx::query(
                "CREATE TRIGGER refuse_uses BEFORE INSERT ON audit_events \
                             WHEN NEW.action = 'credential.resolve' BEGIN SELECT RAISE(ABORT, 'refused'); END",
            )
            .execute(&sql)
            .await
            .unwrap();
        }
    }

    let refused = join_all((0..24).map(|n| resolve(&app, &id, n))).await;
    let recorded_while_refused = resolve_events(&app).await;
    sqlx::query("DROP TRIGGER refuse_uses ON audit_events")
        .execute(&sql)
        .await
        .ok();
    sqlx::query("DROP TRIGGER refuse_uses").execute(&sql).await.ok();
    let (after, resolved) = resolve(&app, &id, 99).await;

    for (status, body) in &refused {
        assert!(status.is_server_error(), "{status} {body}");
        if backend == Backend::Postgres {
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["code"], "store_unavailable");
        }
        assert!(!body.to_string().contains(&secret), "no secret without its audit event");
    }
    assert_eq!(recorded_while_refused, 0);
    assert_eq!(after, StatusCode::OK, "{resolved}");
    assert_eq!(resolved["fields"]["password"], json!(secret));
    assert_eq!(resolve_events(&app).await, 1);
}
crate::both_backends!(when_a_groups_commit_fails_every_request_in_it_fails_and_no_secret_is_returned);

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(&app.sql().await)
        .await
        .unwrap()
        .try_get(0)
        .unwrap()
}

/// Rows, create events, notifications and the counter of `org`'s
/// PostgreSQL credentials: all four agree when nothing was half-written.
async fn written(app: &TestApp, org: &str) -> [i64; 4] {
    [
        count(app, &format!("SELECT COUNT(*) FROM credentials WHERE org_id = '{org}'")).await,
        count(app, &format!("SELECT COUNT(*) FROM audit_events WHERE org_id = '{org}' AND action = 'credential.create'")).await,
        count(app, &format!("SELECT COUNT(*) FROM outbox WHERE org_id = '{org}' AND kind = 'credential.created'")).await,
        count(app, &format!("SELECT CAST(COALESCE(SUM(count), 0) AS BIGINT) FROM credential_counts WHERE org_id = '{org}' AND provider = 'postgresql'")).await,
    ]
}

/// A create as `credentials::create` hands it to the group commit, sealed
/// under `org`'s current data key (or the version given).
async fn pending(app: &TestApp, org: &OrgId, name: &str, key_version: Option<i64>) -> PendingCreate {
    let id = CredentialId::generate();
    let (version, _) = app.state.vault.current_key(org).await.unwrap();
    let (secret_ct, _) = app.state.vault.seal(org, &id, &[]).await.unwrap();
    PendingCreate {
        new: NewCredential {
            id: id.clone(),
            org_id: org.to_owned(),
            name: credgate::ids::CredentialName::parse(name).unwrap(),
            provider: "postgresql".into(),
            auth_type: AuthKind::UserPassword,
            fields: "{}".into(),
            secret_names: "[]".into(),
            secret_ct,
            key_version: key_version.unwrap_or(version),
            created_by: "test".into(),
            owner: None,
            expires_at: None,
            refresh_after: None,
            account_id: None,
            account_email: None,
            scopes: None,
            secret_expires_at: None,
        },
        default_limit: 50,
        event: AuditEvent::success(org, &id, "credential.create", "test"),
        notify: Notification::new("credential.created", org, &id, "postgresql", json!({"name": name})),
        idempotency: None,
    }
}

async fn a_burst_of_creates_admits_exactly_the_room_under_the_limit_and_writes_each_whole(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let mut config = test_config(&db);
    config.max_per_provider = 10;
    let app = TestApp::spawn_with(config).await;
    let created = |n: usize| {
        let app = &app;
        async move {
            app.call(
                Method::POST,
                "/integrations/credentials",
                &app.org.admin,
                Some(pg_body(&format!("c{n}"), "pw")),
            )
            .await
        }
    };
    let first = created(0).await;

    let answers = join_all((1..48).map(created)).await;
    let refused: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::CONFLICT)
        .map(|(_, b)| b)
        .collect();

    assert_eq!(first.0, StatusCode::CREATED, "{}", first.1);
    assert_eq!(
        answers.iter().filter(|(s, _)| *s == StatusCode::CREATED).count(),
        9,
        "{:?}",
        answers.iter().map(|a| a.0).collect::<Vec<_>>()
    );
    assert_eq!(refused.len(), 38);
    assert!(refused.iter().all(|b| b["code"] == "quota_exceeded"), "{refused:?}");
    assert_eq!(written(&app, &app.org.id).await, [10; 4]);
}
crate::both_backends!(a_burst_of_creates_admits_exactly_the_room_under_the_limit_and_writes_each_whole);

async fn a_group_of_creates_refuses_each_that_fails_its_own_checks_and_writes_the_rest(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let (org, small) = (app.org.id.clone(), app.new_org("Small").await.id);
    sqlx::query(&format!(
        "INSERT INTO org_limits (org_id, provider, max_count) VALUES ('{small}', 'postgresql', 1)"
    ))
    .execute(&app.sql().await)
    .await
    .unwrap();
    let (current, _) = app.state.vault.current_key(&org).await.unwrap();
    let group = vec![
        pending(&app, &org, "first", None).await,
        pending(&app, &org, "stale key", Some(current + 1)).await,
        pending(&app, &small, "fits", None).await,
        pending(&app, &small, "over the limit", None).await,
        pending(&app, &org, "last", None).await,
    ];
    let mut gone = pending(&app, &org, "no such organization", None).await;
    gone.new.org_id = OrgId::generate();
    let mut group = group;
    group.insert(2, gone);

    let outcomes = app.state.store.insert_credentials(&group).await;

    let shown: Vec<String> = outcomes.iter().map(|o| format!("{o:?}")).collect();
    assert!(outcomes[0].is_ok(), "{shown:?}");
    assert!(matches!(outcomes[1], Err(StoreError::KeyRotated)), "{shown:?}");
    assert!(matches!(outcomes[2], Err(StoreError::NotFound)), "{shown:?}");
    assert!(outcomes[3].is_ok(), "{shown:?}");
    assert!(
        matches!(outcomes[4], Err(StoreError::QuotaExceeded { limit: 1, count: 1 })),
        "{shown:?}"
    );
    assert!(outcomes[5].is_ok(), "{shown:?}");
    assert_eq!(written(&app, &org).await, [2; 4]);
    assert_eq!(written(&app, &small).await, [1; 4]);
    let names: Vec<String> = sqlx::query("SELECT name FROM credentials ORDER BY name")
        .fetch_all(&app.sql().await)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get(0).unwrap())
        .collect();
    assert_eq!(names, ["first", "fits", "last"]);
    if backend == Backend::Postgres {
        let transactions = count(&app, "SELECT COUNT(DISTINCT xmin::text) FROM credentials").await;
        assert_eq!(transactions, 1, "the group is written in one transaction");
    }
}
crate::both_backends!(a_group_of_creates_refuses_each_that_fails_its_own_checks_and_writes_the_rest);

/// Makes the database refuse to insert credentials named `name` (every
/// name: `None`), as a statement error (`disk`: false) or as a full disk.
async fn refuse_credentials(app: &TestApp, backend: Backend, name: Option<&str>, disk: bool) {
    let sql = app.sql().await;
    let when = name.map(|n| format!("NEW.name = '{n}'"));
    match backend {
        Backend::Postgres => {
            let code = if disk { "disk_full" } else { "raise_exception" };
            let when = when.unwrap_or_else(|| "true".into());
            sqlx::query(&format!(
                "CREATE FUNCTION refuse_credentials() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
                 IF {when} THEN RAISE EXCEPTION 'refused' USING ERRCODE = '{code}'; END IF; RETURN NEW; END $$"
            ))
            .execute(&sql)
            .await
            .unwrap();
            sqlx::query("CREATE TRIGGER refuse_credentials BEFORE INSERT ON credentials FOR EACH ROW EXECUTE FUNCTION refuse_credentials()")
                .execute(&sql)
                .await
                .unwrap();
        }
        Backend::Sqlite => {
            let when = when.map(|w| format!("WHEN {w} ")).unwrap_or_default();
            sqlx::query(&format!(
                "CREATE TRIGGER refuse_credentials BEFORE INSERT ON credentials {when}BEGIN SELECT RAISE(ABORT, 'refused'); END"
            ))
            .execute(&sql)
            .await
            .unwrap();
        }
    }
}

async fn a_create_the_database_refuses_fails_alone_and_the_rest_of_its_group_is_written(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let org = app.org.id.clone();
    refuse_credentials(&app, backend, Some("refused"), false).await;
    let group = vec![
        pending(&app, &org, "before", None).await,
        pending(&app, &org, "refused", None).await,
        pending(&app, &org, "after", None).await,
    ];

    let outcomes = app.state.store.insert_credentials(&group).await;

    let shown: Vec<String> = outcomes.iter().map(|o| format!("{o:?}")).collect();
    assert!(outcomes[0].is_ok() && outcomes[2].is_ok(), "{shown:?}");
    assert!(matches!(outcomes[1], Err(StoreError::Database(_))), "{shown:?}");
    assert_eq!(written(&app, &org).await, [2; 4]);
}
crate::both_backends!(a_create_the_database_refuses_fails_alone_and_the_rest_of_its_group_is_written);

async fn when_a_group_of_creates_cannot_be_written_every_create_in_it_fails_and_nothing_is_written(
    backend: crate::helpers::Backend,
) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    refuse_credentials(&app, backend, None, true).await;

    let refused = join_all((0..24).map(|n| {
        app.call(
            Method::POST,
            "/integrations/credentials",
            &app.org.admin,
            Some(pg_body(&format!("c{n}"), "pw")),
        )
    }))
    .await;
    let while_refused = written(&app, &app.org.id).await;
    let sql = app.sql().await;
    sqlx::query("DROP TRIGGER refuse_credentials ON credentials")
        .execute(&sql)
        .await
        .ok();
    sqlx::query("DROP TRIGGER refuse_credentials").execute(&sql).await.ok();
    let (after, body) = app
        .call(
            Method::POST,
            "/integrations/credentials",
            &app.org.admin,
            Some(pg_body("after", "pw")),
        )
        .await;

    for (status, body) in &refused {
        assert!(status.is_server_error(), "{status} {body}");
        if backend == Backend::Postgres {
            assert_eq!(*status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["code"], "store_unavailable");
        }
    }
    assert_eq!(while_refused, [0; 4]);
    assert_eq!(after, StatusCode::CREATED, "{body}");
    assert_eq!(written(&app, &app.org.id).await, [1; 4]);
}
crate::both_backends!(when_a_group_of_creates_cannot_be_written_every_create_in_it_fails_and_nothing_is_written);

/// The access check's reads go out in groups, one statement each: every
/// reader gets what a read of its own would give, whoever shares the
/// statement — not another organization's row, only its own grant, and
/// a malformed row fails only its own readers.
async fn reads_grouped_in_one_statement_answer_each_reader_for_itself(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let other = app.new_org("Other").await;
    let shared = app.create_pg(&app.org, "shared", &sentinel()).await;
    let theirs = app.create_pg(&other, "theirs", &sentinel()).await;
    let broken = app.create_pg(&app.org, "broken", &sentinel()).await;
    let body =
        json!({"team": null, "users": [{"user_id": "alice", "access": "view"}, {"user_id": "bob", "access": "use"}]});
    let (status, _) = app
        .call(
            Method::PUT,
            &format!("/integrations/credentials/{shared}/sharing"),
            &app.org.admin,
            Some(body),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    sqlx::query("UPDATE credentials SET fields = 'not json' WHERE id = $1")
        .bind(&broken)
        .execute(&app.sql().await)
        .await
        .unwrap();
    let read = |org: &OrgId, id: &str, user: Option<&str>| CredentialRead {
        org_id: org.to_owned(),
        id: cid(id),
        user: user.map(|u| UserId::parse(u).unwrap()),
    };
    let reads = [
        read(&app.org.id, &shared, Some("alice")),
        read(&app.org.id, &shared, Some("bob")),
        read(&app.org.id, &shared, Some("carol")),
        read(&app.org.id, &shared, None),
        read(&app.org.id, &theirs, None),
        read(&other.id, &theirs, Some("alice")),
        read(&other.id, &shared, None),
        read(&app.org.id, &broken, None),
        read(&app.org.id, CredentialId::generate().as_str(), None),
    ];

    let answers = app.state.store.credentials_with_grants(&reads).await.unwrap();
    let seen: Vec<Option<(String, Option<Access>)>> = answers
        .iter()
        .map(|a| {
            a.as_ref()
                .ok()
                .and_then(|found| found.as_ref().map(|f| (f.row.name.to_string(), f.grant)))
        })
        .collect();

    let some = |name: &str, grant: Option<Access>| Some((name.to_owned(), grant));
    assert_eq!(
        seen,
        [
            some("shared", Some(Access::View)),
            some("shared", Some(Access::Use)),
            some("shared", None),
            some("shared", None),
            None,
            some("theirs", None),
            None,
            None,
            None,
        ]
    );
    assert!(
        matches!(answers[7], Err(StoreError::Corrupt { column: "fields", .. })),
        "only the malformed row's reader fails: {:?}",
        answers[7].as_ref().err()
    );
    assert!(answers.iter().enumerate().all(|(i, a)| i == 7 || a.is_ok()));
}
crate::both_backends!(reads_grouped_in_one_statement_answer_each_reader_for_itself);

/// Many requests at once, of two organizations and several users, each
/// get their own answer from the grouped reads: a resolve of the other
/// organization's credential is a 404, a member's level is their own.
async fn concurrent_access_checks_of_many_callers_each_get_their_own_answer(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let other = app.new_org("Other").await;
    let ours = app.create_pg(&app.org, "ours", &sentinel()).await;
    let theirs = app.create_pg(&other, "theirs", &sentinel()).await;
    let calls = (0..64).map(|n| {
        let (key, id, want) = match n % 4 {
            0 => (&app.org.engine, &ours, StatusCode::OK),
            1 => (&other.engine, &theirs, StatusCode::OK),
            2 => (&other.engine, &ours, StatusCode::NOT_FOUND),
            _ => (&app.org.engine, &theirs, StatusCode::NOT_FOUND),
        };
        let app = &app;
        async move {
            let (status, body) = app
                .call(
                    Method::POST,
                    &format!("/integrations/credentials/{id}/resolve"),
                    key,
                    None,
                )
                .await;
            (n, status, want, body)
        }
    });
    for (n, status, want, body) in join_all(calls).await {
        assert_eq!(status, want, "request {n}: {body}");
        if status == StatusCode::OK {
            assert_eq!(
                body["id"].as_str(),
                Some(if n % 4 == 0 { ours.as_str() } else { theirs.as_str() })
            );
        }
    }
}
crate::both_backends!(concurrent_access_checks_of_many_callers_each_get_their_own_answer);

/// The group writers keep their connections between groups (sqlx pings a
/// connection handed back to the pool): when the server drops them, the
/// requests that meet a dead one get 503, and the next ones work again on
/// fresh connections.
#[tokio::test]
async fn when_postgres_drops_the_kept_connections_resolves_work_again_on_fresh_ones() {
    let db = TestDb::new(Backend::Postgres).await;
    let app = TestApp::spawn(&db).await;
    let secret = sentinel();
    let id = app.create_pg(&app.org, "db", &secret).await;
    for run in 0..3 {
        assert_eq!(resolve(&app, &id, run).await.0, StatusCode::OK);
    }
    let sql = app.sql().await;
    // Every connection of the app (not this one, nor the test's other pool).
    let killed: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'idle') t",
    )
    .fetch_one(&sql)
    .await
    .unwrap();
    assert!(killed >= 2, "the kept connections, at least: {killed}");
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let mut answers = Vec::new();
    for run in 3..(3 + killed as usize + 5) {
        answers.push(resolve(&app, &id, run).await);
    }

    let statuses: Vec<StatusCode> = answers.iter().map(|a| a.0).collect();
    for (status, body) in &answers {
        assert!(
            *status == StatusCode::OK || *status == StatusCode::SERVICE_UNAVAILABLE,
            "{status} {body}"
        );
        if *status != StatusCode::OK {
            assert!(!body.to_string().contains(&secret));
        }
    }
    // A dead connection fails one request at most, and is then replaced.
    let failed = statuses.iter().filter(|s| **s != StatusCode::OK).count();
    assert!(failed <= killed as usize, "{killed} killed: {statuses:?}");
    assert!(
        statuses[statuses.len() - 5..].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    let (status, body) = resolve(&app, &id, 99).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["fields"]["password"], json!(secret));
}

/// Sequential scans of `audit_events` counted by PostgreSQL, once every
/// credgate connection to `db` has closed (a backend reports its counts
/// when it exits).
async fn audit_seq_scans(db: &TestDb) -> i64 {
    seq_scans(db, "audit_events").await
}

/// Sequential scans of `table` counted by PostgreSQL, once every credgate
/// connection to `db` has closed.
async fn seq_scans(db: &TestDb, table: &str) -> i64 {
    for _ in 0..100 {
        if crate::helpers::credgate_connections(db).await == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    sqlx::query_scalar("SELECT seq_scan FROM pg_stat_user_tables WHERE relname = $1")
        .bind(table)
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

/// A group of gateway outcomes finds each use by its id's index, however
/// few events the planner believes there are: a plan made on a small table
/// (and kept by the connection) scanned every event for every group, which
/// held the gateway at a fraction of its speed as the audit log grew.
#[test]
fn outcomes_find_their_uses_by_index_however_small_the_table() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Postgres).await;
        let app = TestApp::spawn(&db).await;
        let a = app.create_pg(&app.org, "a", &sentinel()).await;
        let uses: Vec<UseRecord> = (0..8)
            .map(|_| {
                let mut record = use_record(&app.org.id, &a, None, None);
                record.event.action = "credential.proxy";
                record
            })
            .collect();
        let ids = ids_of(app.state.store.record_uses(&uses).await.unwrap());
        let (clock, org_id) = (app.clock.clone(), app.org.id.clone());
        drop(app);
        let before = audit_seq_scans(&db).await;

        let store = credgate::store::Store::connect(&db.url, clock).await.unwrap();
        for id in ids {
            let outcome = UseOutcome {
                event_id: id,
                org_id: org_id.clone(),
                detail: None,
                status: Some(200),
                error: None,
                latency_ms: 1,
            };
            store.record_outcomes(&[outcome]).await.unwrap();
        }
        drop(store);
        let after = audit_seq_scans(&db).await;

        assert_eq!(after, before, "no outcome scanned the audit log");
    });
}

/// Uses decided on an earlier read find their credential's row version
/// and their user's grant by key, however few rows the planner believes
/// there are (a plan made on small tables is kept by the connection): a
/// scan per use would cost the gateway more than the read it saves.
#[test]
fn uses_decided_on_an_earlier_read_check_it_by_index_however_small_the_tables() {
    crate::helpers::run_test(async {
        use credgate::store::ReadAt;
        let db = TestDb::new(Backend::Postgres).await;
        let app = TestApp::spawn(&db).await;
        let alice = crate::sharing::key(&app, credgate::model::Role::Member, Some("alice")).await;
        let a = crate::sharing::create(&app, &alice, "a", &sentinel()).await;
        let bob = json!([{"user_id": "bob", "access": "use"}]);
        let shared = crate::sharing::share(&app, &alice, &a, Value::Null, bob).await;
        assert_eq!(shared, StatusCode::OK);
        let version: i64 = sqlx::query_scalar("SELECT row_version FROM credentials WHERE id = $1")
            .bind(&a)
            .fetch_one(&app.sql().await)
            .await
            .unwrap();
        let (clock, org_id) = (app.clock.clone(), app.org.id.clone());
        drop(app);
        let before = [
            seq_scans(&db, "credentials").await,
            seq_scans(&db, "credential_grants").await,
        ];

        let store = credgate::store::Store::connect(&db.url, clock).await.unwrap();
        let checked = |row_version: i64, grant: Option<Access>| UseRecord {
            read_at: Some(ReadAt {
                row_version,
                grant: Some((UserId::parse("bob").unwrap(), grant)),
            }),
            ..use_record(&org_id, &a, None, None)
        };
        let mut written = Vec::new();
        for _ in 0..12 {
            let group = [checked(version, Some(Access::Use)), checked(version, Some(Access::Use))];
            written.extend(store.record_uses(&group).await.unwrap());
        }
        let stale = [
            checked(version + 1, Some(Access::Use)),
            checked(version, Some(Access::View)),
            checked(version, None),
        ];
        let refused = store.record_uses(&stale).await.unwrap();
        drop(store);
        let after = [
            seq_scans(&db, "credentials").await,
            seq_scans(&db, "credential_grants").await,
        ];

        assert!(written.iter().all(Option::is_some), "{written:?}");
        assert_eq!(refused, [None, None, None], "another version, another grant, no grant");
        assert_eq!(after, before, "no use scanned the credentials or the grants");
    });
}
