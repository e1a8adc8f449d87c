//! A group write the database refuses for one of its items is written
//! again one by one, so that item fails alone: resolves, like creates and
//! refreshes, never fail for another organization's use.

use credgate::group_commit::{Uses, Writer};
use credgate::store::{AuditEvent, Usage, UseRecord};

use crate::both_backends;
use crate::helpers::{TestApp, TestDb};

async fn a_group_of_uses_with_one_refused_records_the_others(backend: crate::helpers::Backend) {
    let db = TestDb::new(backend).await;
    let app = TestApp::spawn(&db).await;
    let other = app.new_org("Other").await;
    let ours = app.create_pg(&app.org, "ours", "pw").await;
    let theirs = app.create_pg(&other, "theirs", "pw").await;
    let gone = credgate::ids::OrgId::generate();
    let record = |org: &credgate::ids::OrgId, id: &str| UseRecord {
        event: AuditEvent::success(org, &crate::helpers::cid(id), "credential.resolve", "user:u-1"),
        usage: Usage::default(),
        read_at: None,
    };
    let group = vec![
        record(&app.org.id, &ours),
        record(&gone, &ours),
        record(&other.id, &theirs),
    ];

    let outcomes = Uses(app.state.store.clone()).write(group).await;
    let (_, usage) = app
        .as_(&other.admin)
        .get(&format!("/integrations/credentials/{theirs}/usage"))
        .await;

    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(
        outcomes[1].is_err(),
        "the use of an organization that does not exist is refused"
    );
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    assert_eq!(usage["uses_total"], 1, "{usage}");
}
both_backends!(a_group_of_uses_with_one_refused_records_the_others);
