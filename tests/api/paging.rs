//! Keyset paging: `next` from one page, `after` on the next, the same order
//! as `page`, with filters, and clear errors for a bad cursor.

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Backend, TestApp, TestDb};

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

async fn keyset_pages_walk_the_same_order_as_numbered_pages(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    for n in 0..7 {
        app.create_pg(&app.org, &format!("db-{n}"), "pw").await;
        app.clock.advance(1);
    }
    let get = |path: String| {
        let app = &app;
        async move { app.call(Method::GET, &path, &app.org.member, None).await }
    };

    let (_, numbered) = get("/integrations/credentials?per_page=50".into()).await;
    let (_, first) = get("/integrations/credentials?per_page=3".into()).await;
    let next = first["next"].as_str().unwrap().to_owned();
    let (_, second) = get(format!("/integrations/credentials?per_page=3&after={next}")).await;
    let next = second["next"].as_str().unwrap().to_owned();
    let (_, third) = get(format!("/integrations/credentials?per_page=3&after={next}")).await;
    let (_, filtered) = get(format!(
        "/integrations/credentials?per_page=3&q=db-1&after={}",
        first["next"].as_str().unwrap()
    ))
    .await;
    let (both, both_problem) = get(format!("/integrations/credentials?page=2&after={next}")).await;
    let (bad, bad_problem) = get("/integrations/credentials?after=nope".into()).await;

    let walked: Vec<String> = [names(&first), names(&second), names(&third)].concat();
    assert_eq!(walked, names(&numbered));
    assert_eq!(names(&first), ["db-6", "db-5", "db-4"]);
    assert_eq!(names(&third), ["db-0"]);
    assert!(third.get("next").is_none(), "the last page has no next");
    assert_eq!(third["total"], 7, "the total counts every match");
    assert_eq!(names(&filtered), ["db-1"]);
    assert_eq!(both, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(both_problem["errors"][0]["field"], "page");
    assert_eq!(bad, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_problem["errors"][0]["field"], "after");
}
crate::both_backends!(keyset_pages_walk_the_same_order_as_numbered_pages);

/// Credentials created in the same second are ordered by id: the cursor
/// (one row comparison) must pass exactly the rows before it, whether a
/// page starts after it (`after`) or at it (a remembered page start).
async fn pages_within_one_second_neither_repeat_nor_skip_a_credential(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    for n in 0..8 {
        app.create_pg(&app.org, &format!("same-{n}"), "pw").await;
    }
    app.clock.advance(1);
    app.create_pg(&app.org, "later", "pw").await;
    let get = |path: String| {
        let app = &app;
        async move { app.call(Method::GET, &path, &app.org.member, None).await.1 }
    };
    let all = ids(&get("/integrations/credentials?per_page=50".into()).await);
    assert_eq!(all.len(), 9);

    let mut walked = Vec::new();
    let mut path = "/integrations/credentials?per_page=2".to_owned();
    loop {
        let page = get(path.clone()).await;
        walked.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => path = format!("/integrations/credentials?per_page=2&after={next}"),
            None => break,
        }
    }
    assert_eq!(walked, all, "the keyset walk");
    // Twice, out of order: the first round starts pages from the
    // nearest page read before; the second from where each started.
    for round in 0..2 {
        let mut pages = vec![Vec::new(); 5];
        for n in [3, 1, 2, 5, 4] {
            pages[n - 1] = ids(&get(format!("/integrations/credentials?per_page=2&page={n}")).await);
        }
        let pages = pages.concat();
        assert_eq!(pages, all, "numbered pages, round {round}");
    }
}
crate::both_backends!(pages_within_one_second_neither_repeat_nor_skip_a_credential);

/// Each listing's total as `key` sees it on `app`.
async fn totals(app: &TestApp, key: &str, queries: &[&str]) -> Vec<i64> {
    let mut out = Vec::new();
    for query in queries {
        let (status, page) = app
            .call(Method::GET, &format!("/integrations/credentials?{query}"), key, None)
            .await;
        assert_eq!(status, StatusCode::OK, "{page}");
        out.push(page["total"].as_i64().unwrap());
    }
    out
}

/// Two app instances on one database, and keys for alice and bob
/// (members) and the organization (admin).
async fn replicas(backend: crate::helpers::Backend) -> (TestDb, TestApp, TestApp, [String; 3]) {
    use crate::sharing::key;
    use credgate::model::Role;
    let db = TestDb::new(backend).await;
    let first = TestApp::spawn(&db).await;
    let mut config = first.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let second = TestApp::spawn_with(config).await;
    let keys = [
        key(&first, Role::Member, Some("alice")).await,
        key(&first, Role::Member, Some("bob")).await,
        key(&first, Role::Admin, None).await,
    ];
    (db, first, second, keys)
}

async fn a_total_counted_on_one_replica_follows_every_change_made_on_another(backend: crate::helpers::Backend) {
    use crate::sharing::{create, share};
    use serde_json::json;

    let (_db, first, second, [alice, bob, admin]) = replicas(backend).await;
    // bob's listing, then shared ones, a name, a status, and the admin's all.
    let queries = ["", "shared=true", "q=renamed", "status=active", "owner=me"];
    let seen = |expected: [i64; 5], what: &'static str| {
        let (first, bob) = (&first, &bob);
        async move {
            // Twice: the second answer is the one a cached total would give.
            for _ in 0..2 {
                assert_eq!(totals(first, bob, &queries).await, expected, "after {what}");
            }
        }
    };

    let org_a = create(&second, &admin, "org a", "pw").await;
    seen([1, 0, 0, 1, 0], "the first credential").await;
    let org_b = create(&second, &admin, "org b", "pw").await;
    seen([2, 0, 0, 2, 0], "a create on the other replica").await;
    let alices = create(&second, &alice, "alice's", "pw").await;
    seen([2, 0, 0, 2, 0], "a personal credential bob cannot see").await;
    share(
        &second,
        &alice,
        &alices,
        json!(null),
        json!([{"user_id": "bob", "access": "use"}]),
    )
    .await;
    seen([3, 1, 0, 3, 0], "a grant to bob").await;
    share(&second, &alice, &alices, json!("use"), json!([])).await;
    seen([3, 1, 0, 3, 0], "the grant replaced by team sharing").await;
    share(&second, &alice, &alices, json!(null), json!([])).await;
    seen([2, 0, 0, 2, 0], "sharing taken away").await;
    let (status, _) = second
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{org_b}"),
            &admin,
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    seen([2, 0, 1, 2, 0], "a rename").await;
    let bobs = create(&second, &bob, "bob's", "pw").await;
    seen([3, 0, 1, 3, 1], "bob's own").await;
    // Any writer is seen, even one behind the API's back.
    sqlx::query("UPDATE credentials SET status = 'needs_reauth' WHERE id = $1")
        .bind(&bobs)
        .execute(&second.sql().await)
        .await
        .unwrap();
    seen([3, 0, 1, 2, 1], "a status change").await;
    let (status, _) = second
        .call(
            Method::DELETE,
            &format!("/integrations/credentials/{org_a}"),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    seen([2, 0, 1, 1, 1], "a delete").await;
    sqlx::query("DELETE FROM credentials WHERE id = $1")
        .bind(&bobs)
        .execute(&second.sql().await)
        .await
        .unwrap();
    seen([1, 0, 1, 1, 0], "a delete behind the API's back").await;
}
crate::both_backends!(a_total_counted_on_one_replica_follows_every_change_made_on_another);

/// The ids of a listing page's items.
fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Every id of a listing for `key`, walked by numbered pages and by cursor.
async fn walked(app: &TestApp, key: &str, query: &str) -> (Vec<String>, Vec<String>, i64) {
    let (mut numbered, mut by_cursor, mut total) = (Vec::new(), Vec::new(), 0);
    for n in 1.. {
        let page = numbered_page(app, key, query, n).await;
        total = page["total"].as_i64().unwrap();
        if page["items"].as_array().unwrap().is_empty() {
            break;
        }
        numbered.extend(ids(&page));
    }
    let mut after = String::new();
    loop {
        let (_, page) = app
            .call(
                Method::GET,
                &format!("/integrations/credentials?per_page=2&after={after}{query}"),
                key,
                None,
            )
            .await;
        by_cursor.extend(ids(&page));
        match page["next"].as_str() {
            Some(next) => after = next.to_owned(),
            None => break,
        }
    }
    (numbered, by_cursor, total)
}

async fn a_members_pages_merge_every_way_they_see_credentials_in_order(backend: crate::helpers::Backend) {
    use crate::sharing::{create, key, share};
    use credgate::model::Role;
    use serde_json::json;

    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let alice = key(&app, Role::Member, Some("alice")).await;
    let bob = key(&app, Role::Member, Some("bob")).await;
    let organization = key(&app, Role::Admin, None).await;
    // Interleaved in time: each way of seeing a credential, and some bob
    // cannot see; some names match `q=match`.
    let mut visible = Vec::new(); // (id, name)
    for n in 0..4 {
        let name = |what: &str| format!("{what} {n} {}", if n % 2 == 0 { "match" } else { "other" });
        visible.push((create(&app, &organization, &name("org"), "pw").await, name("org")));
        app.clock.advance(1);
        visible.push((create(&app, &bob, &name("bob's"), "pw").await, name("bob's")));
        app.clock.advance(1);
        let granted = create(&app, &alice, &name("granted"), "pw").await;
        share(
            &app,
            &alice,
            &granted,
            json!(null),
            json!([{"user_id": "bob", "access": "use"}]),
        )
        .await;
        visible.push((granted, name("granted")));
        app.clock.advance(1);
        let team = create(&app, &alice, &name("team"), "pw").await;
        share(
            &app,
            &alice,
            &team,
            json!("use"),
            json!([{"user_id": "bob", "access": "view"}]),
        )
        .await;
        visible.push((team, name("team")));
        app.clock.advance(1);
        let hidden = create(&app, &alice, &name("hidden"), "pw").await;
        share(
            &app,
            &alice,
            &hidden,
            json!(null),
            json!([{"user_id": "carol", "access": "use"}]),
        )
        .await;
        app.clock.advance(1);
    }
    visible.reverse(); // newest first
    let ids = |only: &str| -> Vec<String> {
        visible
            .iter()
            .filter(|(_, name)| name.contains(only))
            .map(|(id, _)| id.clone())
            .collect()
    };
    let (numbered, by_cursor, total) = walked(&app, &bob, "").await;
    assert_eq!(numbered, ids(""), "numbered pages: each credential once, newest first");
    assert_eq!(by_cursor, ids(""), "cursor pages: the same");
    assert_eq!(total, 16);
    let (numbered, by_cursor, total) = walked(&app, &bob, "&q=match").await;
    assert_eq!(
        (numbered, by_cursor, total),
        (ids("match"), ids("match"), 8),
        "a filter keeps the order"
    );
    let (numbered, _, total) = walked(&app, &bob, "&owner=me").await;
    assert_eq!((numbered, total), (ids("bob's"), 4));
    let (all, _, total) = walked(&app, &organization, "").await;
    assert_eq!(
        (all.len(), total),
        (20, 20),
        "the organization's admin key sees the hidden ones too"
    );
}
crate::both_backends!(a_members_pages_merge_every_way_they_see_credentials_in_order);

/// Page `n` (of 2) of a listing for `key` on `app`, read by number.
async fn numbered_page(app: &TestApp, key: &str, query: &str, n: usize) -> Value {
    let (status, page) = app
        .call(
            Method::GET,
            &format!("/integrations/credentials?per_page=2&page={n}{query}"),
            key,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page
}

/// Pages 1 to 3 (of 2) of a listing for `key` on `app`, read by number.
async fn numbered_pages(app: &TestApp, key: &str, query: &str) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    for n in [1, 2, 3] {
        pages.push(ids(&numbered_page(app, key, query, n).await));
    }
    pages
}

async fn a_numbered_page_read_from_where_it_started_is_still_that_page_after_every_change_on_another_replica(
    backend: crate::helpers::Backend,
) {
    use crate::sharing::{create, share};
    use serde_json::json;

    let (_db, first, second, [alice, bob, admin]) = replicas(backend).await;
    let mut made = Vec::new();
    for n in 0..7 {
        made.push(create(&second, &admin, &format!("org {n}"), "pw").await);
        second.clock.advance(1);
    }
    let alices = create(&second, &alice, "alice's", "pw").await;
    second.clock.advance(1);
    // The admin's listing, bob's, and filtered ones.
    let views = [(&admin, ""), (&bob, ""), (&admin, "&status=active"), (&bob, "&q=org")];
    let agree = |what: &'static str| {
        let (first, views) = (&first, &views);
        async move {
            for (key, query) in views {
                // The truth: the cursor walk, cut into pages of 2.
                let (_, by_cursor, _) = walked(first, key, query).await;
                let expected: Vec<Vec<String>> = [1, 2, 3]
                    .iter()
                    .map(|n| by_cursor.iter().skip((n - 1) * 2).take(2).cloned().collect())
                    .collect();
                // Twice: the second read starts where the first found the page.
                for _ in 0..2 {
                    assert_eq!(
                        numbered_pages(first, key, query).await,
                        expected,
                        "{query:?} after {what}"
                    );
                }
            }
        }
    };

    agree("the first credentials").await;
    made.push(create(&second, &admin, "org newest", "pw").await);
    agree("a newer credential on the other replica").await;
    let (status, _) = second
        .call(
            Method::DELETE,
            &format!("/integrations/credentials/{}", made[6]),
            &admin,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    agree("a delete of a row on page 1").await;
    share(
        &second,
        &alice,
        &alices,
        json!(null),
        json!([{"user_id": "bob", "access": "use"}]),
    )
    .await;
    agree("a grant to bob").await;
    sqlx::query("UPDATE credentials SET status = 'needs_reauth' WHERE id = $1")
        .bind(&made[5])
        .execute(&second.sql().await)
        .await
        .unwrap();
    agree("a status change behind the API's back").await;
    let (status, _) = second
        .call(
            Method::PATCH,
            &format!("/integrations/credentials/{}", made[4]),
            &admin,
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    agree("a rename out of q=org").await;
    sqlx::query("DELETE FROM credentials WHERE id = $1")
        .bind(&made[3])
        .execute(&second.sql().await)
        .await
        .unwrap();
    agree("a delete behind the API's back").await;
}
crate::both_backends!(
    a_numbered_page_read_from_where_it_started_is_still_that_page_after_every_change_on_another_replica
);

/// Reads pages `order` (of 2) of a listing for `key` on `first`, checking
/// each against the cursor walk on `second` (which remembers its own page
/// starts).
async fn pages_agree(first: &TestApp, second: &TestApp, key: &str, query: &str, order: &[usize], what: &str) {
    let (_, by_cursor, _) = walked(second, key, query).await;
    for &n in order {
        let expected: Vec<String> = by_cursor.iter().skip((n - 1) * 2).take(2).cloned().collect();
        let got = ids(&numbered_page(first, key, query, n).await);
        assert_eq!(got, expected, "page {n} of {query:?}, {what}");
    }
}

async fn a_page_not_read_yet_starts_from_the_nearest_page_read_before_it(backend: crate::helpers::Backend) {
    use crate::sharing::create;

    let (_db, first, second, [_alice, bob, admin]) = replicas(backend).await;
    for n in 0..20 {
        create(&second, &admin, &format!("org {n}"), "pw").await;
        second.clock.advance(1);
    }
    let views = [(&admin, ""), (&bob, ""), (&admin, "&q=org")];

    // Gaps: page 5 starts from page 2's start, 4 from 2's, 7 from 5's.
    for (key, query) in views {
        pages_agree(
            &first,
            &second,
            key,
            query,
            &[2, 5, 4, 7, 8],
            "each from the nearest page before it",
        )
        .await;
    }
    create(&second, &admin, "org newest", "pw").await;
    // Every start remembered so far is of the old version: each one tried
    // is refused by the version read with it. Page 10 then starts from
    // page 9's new start.
    for (key, query) in views {
        pages_agree(
            &first,
            &second,
            key,
            query,
            &[3, 6, 9, 2, 10],
            "after a newer credential on the other replica",
        )
        .await;
    }
}
crate::both_backends!(a_page_not_read_yet_starts_from_the_nearest_page_read_before_it);

/// How listing pages were served so far on `app`: read, served again
/// (reused), served again with their use times read anew.
async fn served(app: &TestApp) -> [i64; 3] {
    [
        app.metric("credgate_listing_pages_read_total").await,
        app.metric("credgate_listing_pages_reused_total").await,
        app.metric("credgate_listing_pages_uses_read_total").await,
    ]
}

/// A listing page on `app`, and whether it was read, served again
/// (reused), or served again with its use times read anew ("uses read"):
/// one of the metrics moves by one.
async fn page_and_how(app: &TestApp, key: &str, query: &str) -> (Value, &'static str) {
    let before = served(app).await;
    let (status, page) = app
        .call(Method::GET, &format!("/integrations/credentials?{query}"), key, None)
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let after = served(app).await;
    let moved = [0, 1, 2].map(|i| after[i] - before[i]);
    let how = match moved {
        [1, 0, 0] => "read",
        [0, 1, 0] => "reused",
        [0, 0, 1] => "uses read",
        other => panic!("one page, counted {other:?}"),
    };
    (page, how)
}

/// The page as a replica that kept nothing reads it (on `app`'s clock).
async fn page_read_anew(app: &TestApp, key: &str, query: &str) -> Value {
    let mut config = app.config.clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let fresh = TestApp::spawn_with_clock(config, app.clock.clone()).await;
    let (page, how) = page_and_how(&fresh, key, query).await;
    assert_eq!(how, "read");
    page
}

/// The listed item `id` on a page.
fn item<'a>(page: &'a Value, id: &str) -> &'a Value {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["id"] == id)
        .unwrap()
}

async fn a_page_served_again_follows_every_change_to_its_rows_made_on_another_replica(
    backend: crate::helpers::Backend,
) {
    use crate::sharing::{create, key, resolve_for};
    use credgate::model::Role;
    use serde_json::json;

    let (_db, first, second, [_alice, _bob, admin]) = replicas(backend).await;
    let engine = key(&first, Role::Engine, None).await;
    let one = create(&second, &admin, "one", "pw").await;
    let two = create(&second, &admin, "two", "pw").await;
    // The first page, a numbered page (the second credential in the
    // listing's order, alone) and the page after the first by its cursor.
    let (cursor, newer) = {
        let (page, _) = page_and_how(&first, &admin, "per_page=1").await;
        (page["next"].as_str().unwrap().to_owned(), ids(&page)[0].clone())
    };
    let older = if newer == one { two } else { one };
    let queries = [
        "per_page=50".to_owned(),
        "per_page=1&page=2".to_owned(),
        format!("per_page=1&after={cursor}"),
    ];
    let mut pages = Vec::new();
    for query in &queries {
        let (page, how) = page_and_how(&first, &admin, query).await;
        assert_eq!(how, "read", "{query}: the first time");
        let (again, how) = page_and_how(&first, &admin, query).await;
        assert_eq!(how, "reused", "{query}: nothing changed");
        assert_eq!(again, page, "{query}: a page served again is the page");
        // The third time its items come as rendered the second time.
        let (third, how) = page_and_how(&first, &admin, query).await;
        assert_eq!(how, "reused", "{query}: nothing changed");
        assert_eq!(
            third, page,
            "{query}: a page served from its rendered items is the page"
        );
        pages.push(page);
    }
    assert!(item(&pages[1], &older)["last_used_at"].is_null());

    // Changes to the rows' content on the other replica, none of which
    // changes which rows a listing shows (the listing version).
    // A page whose rows were only used since is served with their use
    // times read anew ("uses read"); any other change reads it again.
    let check_read_as = |what: &'static str, read_as: &'static str, changed: fn(&Value) -> bool| {
        let (first, admin, queries, older) = (&first, &admin, &queries, &older);
        async move {
            for query in queries {
                let (page, how) = page_and_how(first, admin, query).await;
                // Every one of the pages shows the changed credential.
                assert_eq!(how, read_as, "{query}: after {what}");
                // As a page read anew would be.
                let fresh = page_read_anew(first, admin, query).await;
                assert_eq!(page, fresh, "{query}: after {what}");
                assert!(changed(item(&page, older)), "{query}: after {what}: {page}");
                let (again, how) = page_and_how(first, admin, query).await;
                assert_eq!(
                    (how, &again),
                    ("reused", &page),
                    "{query}: nothing changed since {what}"
                );
                let (third, how) = page_and_how(first, admin, query).await;
                assert_eq!((how, &third), ("reused", &page), "{query}: rendered after {what}");
            }
        }
    };
    let check = |what: &'static str, changed: fn(&Value) -> bool| check_read_as(what, "read", changed);
    let path = format!("/integrations/credentials/{older}");
    let (status, body) = second
            .call(Method::PATCH, &path, &admin, Some(json!({"fields": {"host": "moved.example.com", "database": "sales", "username": "etl", "password": "pw"}})))
            .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    check("a field changed", |i| i["fields"]["host"] == "moved.example.com").await;

    let (status, body) = resolve_for(&second, &engine, &older, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    check_read_as("a use", "uses read", |i| i["last_used_at"].is_string()).await;
    // A later use (a minute on), and one behind the API's back.
    first.clock.advance(61);
    second.clock.advance(61);
    let used_at = item(&pages[1], &older)["last_used_at"].clone();
    let (status, body) = resolve_for(&second, &engine, &older, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (page, how) = page_and_how(&first, &admin, &queries[1]).await;
    assert_eq!(how, "uses read");
    assert_ne!(item(&page, &older)["last_used_at"], used_at, "{page}");
    for query in &queries {
        page_and_how(&first, &admin, query).await;
    }
    sqlx::query("UPDATE credentials SET last_used_at = last_used_at + 3600 WHERE id = $1")
        .bind(&older)
        .execute(&second.sql().await)
        .await
        .unwrap();
    check_read_as("a use behind the API's back", "uses read", |i| {
        i["last_used_at"].is_string()
    })
    .await;
    // A use together with any other change: the page is read again.
    sqlx::query("UPDATE credentials SET last_used_at = last_used_at + 3600, name = 'used and renamed' WHERE id = $1")
        .bind(&older)
        .execute(&second.sql().await)
        .await
        .unwrap();
    check("a use and a change at once", |i| i["name"] == "used and renamed").await;

    // Any writer is seen, even one behind the API's back, and any column.
    sqlx::query("UPDATE credentials SET account_id = 'acct-1', account_email = 'someone@example.com' WHERE id = $1")
        .bind(&older)
        .execute(&second.sql().await)
        .await
        .unwrap();
    check("a column written behind the API's back", |i| {
        i["account"]["email"] == "someone@example.com"
    })
    .await;
    sqlx::query("UPDATE credentials SET expires_at = 4102444800 WHERE id = $1")
        .bind(&older)
        .execute(&second.sql().await)
        .await
        .unwrap();
    check("the expiry behind the API's back", |i| i["expires_at"].is_string()).await;
    // The newer credential changed: only the first page shows it.
    sqlx::query("UPDATE credentials SET account_id = 'acct-2', account_name = 'Newer' WHERE id = $1")
        .bind(&newer)
        .execute(&second.sql().await)
        .await
        .unwrap();
    let (page, how) = page_and_how(&first, &admin, &queries[0]).await;
    assert_eq!(how, "read");
    assert_eq!(item(&page, &newer)["account"]["display_name"], "Newer", "{page}");
    let (_, how) = page_and_how(&first, &admin, &queries[1]).await;
    assert_eq!(how, "reused", "a page without the changed row is still good");
}
crate::both_backends!(a_page_served_again_follows_every_change_to_its_rows_made_on_another_replica);

/// A row's version rises with every change to it but a use or a refresh
/// lease (behind the API's back too); an update that changes nothing
/// leaves it.
async fn a_rows_version_rises_with_any_change_but_a_use_or_a_refresh_lease(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let id = app.create_pg(&app.org, "versioned", "pw").await;
    let sql = app.sql().await;
    let cases = [
        ("last_used_at = 1000", false),
        ("last_used_at = 2000", false),
        ("lease_owner = 'worker', lease_until = 5", false),
        ("lease_owner = NULL, lease_until = NULL", false),
        ("name = name", false),
        ("last_used_at = 3000, name = 'renamed'", true),
        ("name = 'again'", true),
        ("status = 'needs_reauth'", true),
        ("fields = '{}'", true),
        ("account_email = 'a@example.com'", true),
        ("expires_at = 5", true),
        ("last_error = 'broken'", true),
        ("secret_version = secret_version + 1", true),
        ("team_access = 'use'", true),
        ("owner = 'alice'", true),
        ("updated_at = updated_at + 1", true),
    ];
    for (set, raises) in cases {
        let version = || async {
            sqlx::query_scalar::<_, i64>("SELECT row_version FROM credentials WHERE id = $1")
                .bind(&id)
                .fetch_one(&sql)
                .await
                .unwrap()
        };
        let before = version().await;
        sqlx::query(&format!("UPDATE credentials SET {set} WHERE id = $1"))
            .bind(&id)
            .execute(&sql)
            .await
            .unwrap();
        assert_eq!(version().await - before, i64::from(raises), "SET {set}");
    }
}
crate::both_backends!(a_rows_version_rises_with_any_change_but_a_use_or_a_refresh_lease);

/// SQLite's row-version trigger names the columns whose change raises the
/// version: every column of the table but the use time, the lease and the
/// version itself (a column added without it would change rows unseen by a
/// page kept before).
#[test]
fn sqlites_row_version_trigger_names_every_column_but_the_use_time_and_the_lease() {
    crate::helpers::run_test(async {
        let db = TestDb::new(Backend::Sqlite).await;
        let app = TestApp::spawn(&db).await;
        let sql = app.sql().await;
        let trigger: String = sqlx::query_scalar(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'credentials_row_version'",
        )
        .fetch_one(&sql)
        .await
        .unwrap();
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info('credentials')")
            .fetch_all(&sql)
            .await
            .unwrap();
        assert!(columns.len() > 20, "{columns:?}");
        for column in columns {
            let named = trigger.contains(&format!("NEW.{column} IS NOT OLD.{column}"));
            let left_out = ["last_used_at", "lease_owner", "lease_until", "row_version"].contains(&column.as_str());
            assert_eq!(named, !left_out, "{column}: {trigger}");
        }
    });
}

/// Requests of the same pages that meet, while the first reads are held up
/// (a session behind the API's back locks the credentials table): each page
/// is read once, and every other request is served what that read kept,
/// after its check. PostgreSQL only: SQLite cannot hold a reader up (its
/// readers never wait in WAL mode); `flights`' unit test covers the waiting.
#[tokio::test]
async fn requests_of_a_page_that_meet_read_it_once() {
    let db = TestDb::new(crate::helpers::Backend::Postgres).await;
    let app = TestApp::spawn(&db).await;
    for n in 0..7 {
        app.create_pg(&app.org, &format!("db-{n}"), "pw").await;
        app.clock.advance(1);
    }
    let (read, reused) = (
        app.metric("credgate_listing_pages_read_total").await,
        app.metric("credgate_listing_pages_reused_total").await,
    );
    let mut other = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url)
        .await
        .unwrap();
    for statement in ["BEGIN", "LOCK TABLE credentials IN ACCESS EXCLUSIVE MODE"] {
        sqlx::Executor::execute(&mut other, statement).await.unwrap();
    }
    let requests = (0..16).map(|n| {
        let app = &app;
        let query = format!("/integrations/credentials?per_page=3&q=db&page={}", 1 + n % 2);
        async move { app.call(Method::GET, &query, &app.org.member, None).await }
    });
    let release = async {
        crate::helpers::until_a_lock_is_awaited(&app).await;
        // Time for every request to arrive and meet the held-up reads.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        sqlx::Executor::execute(&mut other, "ROLLBACK").await.unwrap();
    };
    let (answers, ()) = tokio::join!(futures::future::join_all(requests), release);
    let moved = (
        app.metric("credgate_listing_pages_read_total").await - read,
        app.metric("credgate_listing_pages_reused_total").await - reused,
    );

    for (n, (status, page)) in answers.iter().enumerate() {
        assert_eq!(*status, StatusCode::OK, "{page}");
        assert_eq!(page, &answers[n % 2].1, "every request of a page gets the same page");
        assert_eq!(page["total"], 7);
    }
    assert_eq!(names(&answers[0].1), ["db-6", "db-5", "db-4"]);
    assert_eq!(names(&answers[1].1), ["db-3", "db-2", "db-1"]);
    assert_eq!(
        moved,
        (2, 14),
        "two pages read, the other requests served what was kept"
    );
}
