//! Listing pages read in this process, reused while a check statement finds
//! their content unchanged, or served with their rows' use times read anew
//! where those alone changed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What [`Store::page_check`] reads of a kept page's rows.
#[derive(sqlx::FromRow)]
struct CheckColumns {
    listing_version: Option<i64>,
    in_org: i64,
    version_sum: i64,
    used_sum: i64,
}

/// One row of a kept page, as [`Store::with_uses_read`] reads it.
#[derive(sqlx::FromRow)]
struct UseColumns {
    listing_version: Option<i64>,
    id: CredentialId,
    org_id: OrgId,
    row_version: i64,
    last_used_at: Option<i64>,
}

use super::{ListedCredential, VERSION_SQL};
use crate::fifo::Fifo;
use crate::ids::{CredentialId, OrgId};
use crate::store::{Store, StoreError};

/// A page as read, with what identifies its content: the organization's
/// listing version (which rows the listing shows, in which order: 0012),
/// the number and row-version sum of its rows (0016), and the sum of their
/// use times (0017: a use does not raise a row's version). While the first
/// three are the same, every row on the page is as it was read but for its
/// use time: each row's version only rises, and a row leaving the page
/// changes the listing version. A use time only rises too, so while the
/// fourth is the same as well, the page is exactly as read.
#[derive(Debug)]
pub(in crate::store) struct ReadPage {
    pub listing_version: i64,
    pub row_version_sum: i64,
    /// The sum of its rows' `last_used_at` (a row never used: 0).
    pub used_sum: i64,
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

/// What a check found of a page read before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kept {
    /// Exactly as read.
    Unchanged,
    /// As read but for its rows' use times.
    UsedSince,
    /// Rows changed, left or joined it.
    Changed,
}

/// A statement over the rows of `page` (`$1` the organization): the ids
/// `$2…` are padded (repeating the last) to a power of two, so few
/// statement shapes exist. Only the ids select rows, so both databases look
/// each one up by its key (with `org_id = $1` beside them SQLite walked the
/// organization's index instead). `None` for a page without rows.
fn over_rows<'q, O>(
    sql: &'q str,
    org_id: &'q OrgId,
    page: &'q ReadPage,
) -> Option<sqlx::query::QueryAs<'q, sqlx::Any, O, sqlx::any::AnyArguments<'q>>>
where
    O: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow>,
{
    let last = page.rows.last()?.row.id.as_str();
    let mut query = sqlx::query_as(sql).bind(org_id);
    let ids = page.rows.iter().map(|l| l.row.id.as_str());
    for id in ids
        .chain(std::iter::repeat(last))
        .take(page.rows.len().next_power_of_two())
    {
        query = query.bind(id);
    }
    Some(query)
}

/// `x.id IN ($2, …)` for the rows of `page`, padded as [`over_rows`] binds.
fn ids_in(page: &ReadPage) -> String {
    let width = page.rows.len().next_power_of_two();
    let marks = (0..width).map(|i| format!("${}", i + 2)).collect::<Vec<_>>().join(", ");
    format!("x.id IN ({marks})")
}

impl Store {
    /// Whether a page read before is still what it was: the organization's
    /// listing version, and the number (in the organization), row-version
    /// sum and use-time sum of its rows, read in one statement.
    pub(super) async fn page_check(&self, org_id: &OrgId, page: &ReadPage) -> Result<Kept, StoreError> {
        self.timed(async move {
            let sql = format!(
                "SELECT {VERSION_SQL} AS listing_version, \
             CAST(COALESCE(SUM(CASE WHEN x.org_id = $1 THEN 1 ELSE 0 END), 0) AS BIGINT) AS in_org, \
             CAST(COALESCE(SUM(x.row_version), 0) AS BIGINT) AS version_sum, \
             CAST(COALESCE(SUM(COALESCE(x.last_used_at, 0)), 0) AS BIGINT) AS used_sum FROM credentials x WHERE {}",
                ids_in(page)
            );
            let Some(check) = over_rows::<CheckColumns>(&sql, org_id, page) else {
                return Ok(Kept::Changed);
            };
            let CheckColumns {
                listing_version,
                in_org,
                version_sum,
                used_sum,
            } = check.fetch_one(&self.pool).await?;
            let same_rows = listing_version == Some(page.listing_version)
                && usize::try_from(in_org).is_ok_and(|n| n == page.rows.len())
                && version_sum == page.row_version_sum;
            Ok(match (same_rows, used_sum == page.used_sum) {
                (false, _) => Kept::Changed,
                (true, false) => Kept::UsedSince,
                (true, true) => Kept::Unchanged,
            })
        })
        .await
    }

    /// `page` with its rows' use times read anew, as a new read of it (a
    /// new number); `None` if anything else changed meanwhile (the same
    /// conditions as [`Store::page_check`], in the statement that reads the
    /// use times).
    pub(super) async fn with_uses_read(&self, org_id: &OrgId, page: &ReadPage) -> Result<Option<ReadPage>, StoreError> {
        self.timed(async move {
            let sql = format!(
                "SELECT {VERSION_SQL} AS listing_version, x.id, x.org_id, x.row_version, x.last_used_at \
                 FROM credentials x WHERE {}",
                ids_in(page)
            );
            let Some(read) = over_rows::<UseColumns>(&sql, org_id, page) else {
                return Ok(None);
            };
            let mut used = std::collections::HashMap::new();
            let mut version = None;
            let mut sum = 0i64;
            for row in read.fetch_all(&self.pool).await? {
                version = row.listing_version;
                if row.org_id != *org_id {
                    return Ok(None);
                }
                sum += row.row_version;
                used.insert(row.id, row.last_used_at);
            }
            if version != Some(page.listing_version) || used.len() != page.rows.len() || sum != page.row_version_sum {
                return Ok(None);
            }
            let rows: Arc<[ListedCredential]> = page
                .rows
                .iter()
                .map(|l| {
                    let mut l = l.clone();
                    l.row.last_used_at = used.get(&l.row.id).copied().flatten();
                    l
                })
                .collect();
            Ok(Some(ReadPage {
                listing_version: page.listing_version,
                row_version_sum: page.row_version_sum,
                used_sum: used_sum(&rows),
                content: self.pages.content(),
                rows,
            }))
        })
        .await
    }
}

/// The sum of the rows' use times ([`ReadPage::used_sum`]).
pub(super) fn used_sum(rows: &[ListedCredential]) -> i64 {
    rows.iter().map(|l| l.row.last_used_at.unwrap_or(0)).sum()
}
