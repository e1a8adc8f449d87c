//! `/openapi.json` describes every answer's body: every 2xx response of
//! every operation (but a 204, which has none) has a schema, so a client
//! generated from it is typed end to end.

use crate::helpers::{TestApp, TestDb};

#[tokio::test]
async fn every_2xx_answer_of_every_operation_has_a_schema() {
    let db = TestDb::new(crate::helpers::Backend::Sqlite).await;
    let app = TestApp::spawn(&db).await;
    let doc: serde_json::Value = reqwest::get(format!("{}/openapi.json", app.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();

    let mut operations = 0;
    let mut missing = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            for (status, response) in op["responses"].as_object().unwrap() {
                if !status.starts_with('2') || status == "204" {
                    continue;
                }
                let typed = response["content"]
                    .as_object()
                    .is_some_and(|c| !c.is_empty() && c.values().all(|media| media.get("schema").is_some()));
                if !typed {
                    missing.push(format!("{} {path} {status}", method.to_uppercase()));
                }
            }
        }
    }

    assert!(operations >= 28, "{operations}");
    assert!(missing.is_empty(), "answers without a schema: {missing:#?}");
}
