//! Keyset paging: `next` from one page, `after` on the next, the same order
//! as `page`, with filters, and clear errors for a bad cursor.

use axum::http::Method;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{TestApp, TestDb};

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_owned())
        .collect()
}

crate::both_backends! {
    async fn keyset_pages_walk_the_same_order_as_numbered_pages(backend: Backend) {
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
        let (_, filtered) = get(format!("/integrations/credentials?per_page=3&q=db-1&after={}", first["next"].as_str().unwrap())).await;
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
}
