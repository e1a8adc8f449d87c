//! Listing pages read in this process, reused while a check statement finds
//! their content unchanged.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use super::ListedCredential;

/// A page as read, with what identifies its content: the organization's
/// listing version (which rows the listing shows, in which order: 0012) and
/// the number and row-version sum of its rows (0016). While all three are
/// the same, every row on the page is as it was read: each row's version
/// only rises, and a row leaving the page changes the listing version.
#[derive(Debug)]
pub(in crate::store) struct ReadPage {
    pub listing_version: i64,
    pub row_version_sum: i64,
    pub rows: Vec<ListedCredential>,
}

/// Most rows kept over all pages: a listed row takes about 1.7 KiB here
/// (12,288 rows raised the bench's RSS by 20 MiB), so about 7 MiB.
pub(super) const MAX_ROWS: usize = 4_096;

/// The pages read, by their statement and values; bounded by [`MAX_ROWS`],
/// the oldest page put is the first dropped.
#[derive(Debug, Default)]
pub(in crate::store) struct Pages(Mutex<Kept>);

#[derive(Debug, Default)]
struct Kept {
    pages: HashMap<String, (u64, Arc<ReadPage>)>,
    /// Keys in the order put, each with the number it was put under (a key
    /// put again is only dropped by its last number).
    order: VecDeque<(String, u64)>,
    rows: usize,
    next: u64,
}

impl Pages {
    pub(super) fn get(&self, key: &str) -> Option<Arc<ReadPage>> {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.pages.get(key).map(|(_, page)| page.clone())
    }

    pub(super) fn put(&self, key: String, page: ReadPage) {
        if page.rows.is_empty() || page.rows.len() > MAX_ROWS {
            return;
        }
        let mut kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let kept = &mut *kept;
        let n = kept.next;
        kept.next += 1;
        kept.rows += page.rows.len();
        kept.order.push_back((key.clone(), n));
        if let Some((_, old)) = kept.pages.insert(key, (n, Arc::new(page))) {
            kept.rows -= old.rows.len();
        }
        while kept.rows > MAX_ROWS {
            let Some((key, n)) = kept.order.pop_front() else { break };
            if kept.pages.get(&key).is_some_and(|(m, _)| *m == n) {
                if let Some((_, old)) = kept.pages.remove(&key) {
                    kept.rows -= old.rows.len();
                }
            }
        }
        // Keys put again leave stale entries behind: keep the queue to a
        // few times the pages kept.
        if kept.order.len() > 4 * kept.pages.len() + 64 {
            let pages = &kept.pages;
            kept.order
                .retain(|(key, n)| pages.get(key).is_some_and(|(m, _)| m == n));
        }
    }

    #[cfg(test)]
    fn rows(&self) -> usize {
        let kept = self.0.lock().unwrap_or_else(|e| e.into_inner());
        kept.pages.values().map(|(_, p)| p.rows.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::CredentialRow;

    fn page(version: i64, n: usize) -> ReadPage {
        let row = CredentialRow {
            id: "c".into(),
            org_id: "o".into(),
            name: "n".into(),
            provider: "p".into(),
            auth_type: crate::model::AuthKind::ApiKey,
            status: crate::model::CredentialStatus::Active,
            fields: Default::default(),
            secret_names: Vec::new(),
            secret_ct: String::new(),
            key_version: 1,
            secret_version: 1,
            account_id: None,
            account_email: None,
            account_name: None,
            scopes: None,
            expires_at: None,
            last_refreshed_at: None,
            last_used_at: None,
            last_tested_at: None,
            last_error: None,
            created_by: "u".into(),
            created_at: 0,
            updated_at: 0,
            refresh_failures: 0,
            refresh_after: None,
            owner: None,
            team_access: None,
        };
        let listed = ListedCredential {
            row,
            my_grant: None,
            grants: Vec::new(),
        };
        ReadPage {
            listing_version: version,
            row_version_sum: 0,
            rows: vec![listed; n],
        }
    }

    #[test]
    fn pages_are_kept_by_key_within_the_row_budget_oldest_dropped_first() {
        let pages = Pages::default();
        pages.put("a".into(), page(1, 50));
        pages.put("a".into(), page(2, 50));
        assert_eq!(
            pages.get("a").map(|p| p.listing_version),
            Some(2),
            "the last put is kept"
        );
        assert_eq!(pages.rows(), 50);
        pages.put("empty".into(), page(1, 0));
        assert!(pages.get("empty").is_none(), "an empty page is not kept");
        for i in 0..(MAX_ROWS / 50) * 3 {
            pages.put(format!("k{i}"), page(1, 50));
            assert!(pages.rows() <= MAX_ROWS);
            let order = pages.0.lock().unwrap().order.len();
            assert!(
                order <= 4 * (MAX_ROWS / 50) + 64 + 1,
                "the queue stays bounded: {order}"
            );
        }
        assert!(pages.get("a").is_none(), "the oldest page went first");
        let last = (MAX_ROWS / 50) * 3 - 1;
        assert!(pages.get(&format!("k{last}")).is_some(), "the newest page is kept");
        // Putting one key over and over keeps one page and a short queue.
        for v in 0..10_000 {
            pages.put("same".into(), page(v, 1));
        }
        assert_eq!(pages.get("same").map(|p| p.listing_version), Some(9_999));
        assert!(pages.0.lock().unwrap().order.len() <= 4 * (MAX_ROWS / 50 + 1) + 64 + 1);
    }
}
