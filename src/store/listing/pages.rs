//! Listing pages read in this process, reused while a check statement finds
//! their content unchanged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sqlx::Row;

use super::{ListedCredential, VERSION_SQL};
use crate::fifo::Fifo;
use crate::store::{Store, StoreError};

/// A page as read, with what identifies its content: the organization's
/// listing version (which rows the listing shows, in which order: 0012) and
/// the number and row-version sum of its rows (0016). While all three are
/// the same, every row on the page is as it was read: each row's version
/// only rises, and a row leaving the page changes the listing version.
#[derive(Debug)]
pub(in crate::store) struct ReadPage {
    pub listing_version: i64,
    pub row_version_sum: i64,
    /// This process's number for this read of the page: the same number,
    /// the same rows.
    pub content: u64,
    pub rows: Arc<[ListedCredential]>,
}

/// Most rows kept over all pages: a listed row takes about 1.7 KiB here
/// (12,288 rows raised the bench's RSS by 20 MiB), so about 7 MiB.
pub(super) const MAX_ROWS: usize = 4_096;

/// The pages read, by their statement and values; bounded by [`MAX_ROWS`],
/// the oldest page put is the first dropped.
#[derive(Debug)]
pub(in crate::store) struct Pages {
    kept: Fifo<Arc<ReadPage>>,
    reads: AtomicU64,
}

impl Default for Pages {
    fn default() -> Self {
        Self {
            kept: Fifo::new(MAX_ROWS),
            reads: AtomicU64::new(0),
        }
    }
}

impl Pages {
    pub(super) fn get(&self, key: &str) -> Option<Arc<ReadPage>> {
        self.kept.get(key)
    }

    /// A new number for a page just read.
    pub(super) fn content(&self) -> u64 {
        self.reads.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn put(&self, key: String, page: Arc<ReadPage>) {
        let rows = page.rows.len();
        self.kept.put(key, page, rows);
    }
}

impl Store {
    /// Whether a page read before is still what it was: the organization's
    /// listing version, and the number and row-version sum of its rows,
    /// read in one statement. The ids are padded (repeating the last) to a
    /// power of two, so few statement shapes exist.
    pub(super) async fn page_unchanged(&self, org_id: &str, page: &ReadPage) -> Result<bool, StoreError> {
        let ids: Vec<&str> = page.rows.iter().map(|l| l.row.id.as_str()).collect();
        let Some(last) = ids.last().copied() else {
            return Ok(false);
        };
        let width = ids.len().next_power_of_two();
        let marks = (0..width).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
        // Only the ids select rows, so both databases look each one up by
        // its key (with `org_id = $1` beside them SQLite walked the
        // organization's index instead); the organization is counted.
        let sql = format!(
            "SELECT {VERSION_SQL}, CAST(COALESCE(SUM(CASE WHEN x.org_id = $1 THEN 1 ELSE 0 END), 0) AS BIGINT), \
             CAST(COALESCE(SUM(x.row_version), 0) AS BIGINT) FROM credentials x WHERE x.id IN ({marks})"
        );
        let mut check = sqlx::query(&sql).bind(org_id);
        for id in ids.iter().copied().chain(std::iter::repeat(last)).take(width) {
            check = check.bind(id);
        }
        let row = check.fetch_one(&self.pool).await?;
        let version: Option<i64> = row.try_get(0)?;
        let count: i64 = row.try_get(1)?;
        let sum: i64 = row.try_get(2)?;
        Ok(version == Some(page.listing_version)
            && usize::try_from(count).is_ok_and(|n| n == page.rows.len())
            && sum == page.row_version_sum)
    }
}
