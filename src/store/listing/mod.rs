//! Listing credentials: the page a viewer may at least use, filtered, with
//! the access predicate inside the statement so the indexes serve it.

use std::sync::Arc;

mod flights;
mod pages;
mod remembered;
mod rows;

pub(super) use flights::Flights;
pub(super) use pages::Pages;
use pages::{used_sum, Kept, ReadPage};
pub(super) use remembered::{PageStarts, Totals};
use rows::{health_sql, like_pattern, listed};

use crate::ids::OrgId;
pub use rows::{CredentialFilter, CredentialPage, HealthFilter, ListedCredential, Served, Viewer};

use super::row::{Listed, LIST_COLUMNS};
use super::{Dialect, Store, StoreError};

/// Where a page reads from: after (or at) a row's (`created_at`, `id`),
/// skipping that many rows, or at an offset.
enum Start<'a> {
    Cursor(&'a (i64, String), bool, i64),
    Offset(i64),
}

/// A numbered page not read yet at this listing version starts from the
/// nearest page before it that was, at most this many pages back.
const NEAREST_PAGES: i64 = 20;

const VERSION_SQL: &str = "(SELECT v.version FROM listing_versions v WHERE v.org_id = $1)";

/// A filter's count, with the listing version it was counted at.
#[derive(sqlx::FromRow)]
struct CountColumns {
    listing_version: Option<i64>,
    total: i64,
}

impl Store {
    /// A page of the credentials `f.viewer` may at least use, newest first,
    /// each with the viewer's own grant and all its user grants (in the same
    /// statement), and the total. The access predicate
    /// is part of the statements: the total counts it as one condition (and
    /// is reused until the organization's listing version changes); the page
    /// walks each way of seeing a credential in the listing's order, on its
    /// own index (organization credentials and the user's own:
    /// credentials_org_owner; the team's: credentials_org_team_shared; the
    /// user's grants: credential_grants_user, migration 0014), at most as far
    /// as the page reaches, and merges them. A page read before in this
    /// process is served again, without reading its rows, while one check
    /// statement finds its listing version and row versions unchanged.
    pub async fn list_credentials(&self, org_id: &OrgId, f: &CredentialFilter) -> Result<CredentialPage, StoreError> {
        self.timed(async move {
        // Only the filters actually given go into the statements, so each
        // shape gets a plan that can use the indexes.
        let mut binds: Vec<String> = vec![org_id.to_string()];
        let user = match (&f.viewer.user, f.viewer.admin) {
            (Some(user), false) => {
                binds.push(user.to_string());
                Some("$2")
            }
            _ => None,
        };
        let mut rest = String::new();
        let mut add = |clause: &str, value: Option<String>| {
            match value {
                Some(v) => {
                    binds.push(v);
                    rest.push_str(&clause.replace('?', &format!("${}", binds.len())));
                }
                None => rest.push_str(clause),
            };
        };
        let shared_sql = "(x.team_access IS NOT NULL OR EXISTS \
            (SELECT 1 FROM credential_grants s WHERE s.credential_id = x.id))";
        if f.owner_me {
            match (&f.viewer.user, user) {
                (_, Some(mark)) => add(&format!(" AND x.owner = {mark}"), None),
                (Some(me), None) => add(" AND x.owner = ?", Some(me.to_string())),
                (None, None) => add(" AND 1 = 0", None),
            }
        }
        match f.shared {
            Some(true) => add(&format!(" AND {shared_sql}"), None),
            Some(false) => add(&format!(" AND NOT {shared_sql}"), None),
            None => {}
        }
        if let Some(p) = &f.provider {
            add(" AND x.provider = ?", Some(p.clone()));
        }
        if let Some(st) = f.status {
            add(" AND x.status = ?", Some(st.as_str().to_owned()));
        }
        if let Some((health, now, warn)) = f.health {
            add(&format!(" AND {}", health_sql(health, now, warn)), None);
        }
        if let Some(q) = &f.q {
            match self.dialect {
                // LIKE, which the trigram index serves (migration 0015).
                Dialect::Postgres => add(" AND LOWER(x.name) LIKE ? ESCAPE '\\'", Some(like_pattern(q))),
                // A plain substring test: SQLite plans a LIKE by its bound
                // pattern, so it prepared the statement anew on every
                // execution (and compiled the pattern for every row). Its
                // LOWER and LIKE both fold ASCII letters only: the same
                // matches.
                Dialect::Sqlite => add(" AND instr(LOWER(x.name), ?) > 0", Some(q.to_lowercase())),
            }
        }
        // The ways a viewer who is not an admin sees a credential.
        let grants = user.map(|u| format!("g2.org_id = $1 AND g2.user_id = {u}"));
        let arms: Vec<String> = match (f.viewer.admin, user) {
            (true, _) => Vec::new(),
            (false, Some(u)) => vec![
                "x.owner IS NULL".into(),
                format!("x.owner = {u}"),
                "x.team_access IS NOT NULL".into(),
            ],
            (false, None) => vec!["x.owner IS NULL".into(), "x.team_access IS NOT NULL".into()],
        };
        // `owner=me` needs only the walk of the user's own.
        let walks_arms: Vec<String> = match (f.owner_me, user) {
            (true, Some(u)) => vec![format!("x.owner = {u}")],
            _ => arms.clone(),
        };
        let walk_grants = grants.as_ref().filter(|_| !(f.owner_me && user.is_some()));
        let mut access = arms.join(" OR ");
        if let Some(g) = &grants {
            // As one condition (for the count): on Postgres a list computed
            // once, as an array (a correlated EXISTS keeps the planner from
            // combining the indexes).
            access.push_str(&match self.dialect {
                Dialect::Postgres => {
                    format!(" OR x.id = ANY(ARRAY(SELECT g2.credential_id FROM credential_grants g2 WHERE {g}))")
                }
                Dialect::Sqlite => format!(" OR x.id IN (SELECT g2.credential_id FROM credential_grants g2 WHERE {g})"),
            });
        }
        let access = if access.is_empty() {
            String::new()
        } else {
            format!(" AND ({access})")
        };
        let count_sql = format!("SELECT {VERSION_SQL} AS listing_version, COUNT(*) AS total FROM credentials x WHERE x.org_id = $1{access}{rest}");
        let grants_sql = match self.dialect {
            Dialect::Postgres => {
                "(SELECT json_agg(json_build_array(g3.user_id, g3.access))::text FROM credential_grants g3 \
                 WHERE g3.credential_id = c.id)"
            }
            Dialect::Sqlite => {
                "(SELECT json_group_array(json_array(g3.user_id, g3.access)) FROM credential_grants g3 \
                 WHERE g3.credential_id = c.id)"
            }
        };
        let per_page = f.per_page.max(1);
        // The page statement, starting after a cursor (or at it, inclusive)
        // or at an offset; with its values.
        let page_statement = |start: &Start| -> (String, Vec<String>) {
            let mut binds = binds.clone();
            // The cursor narrows the page, not the total. One row
            // comparison, `(created_at, id) < (t, i)`: both databases take it
            // as the bound the index walk starts from. (`created_at <= t AND
            // (created_at < t OR id < i)` bounded the walk by the time alone,
            // so it passed every row of the cursor's second before the
            // cursor: credentials created together share a second.)
            let (mut on_credentials, mut on_grants) = (String::new(), String::new());
            let offset = match start {
                Start::Offset(n) => *n,
                Start::Cursor((created_at, id), inclusive, skip) => {
                    binds.push(created_at.to_string());
                    binds.push(id.clone());
                    let (t, i) = (binds.len() - 1, binds.len());
                    let below = if *inclusive { "<=" } else { "<" };
                    let cursor = |created_at: &str, id: &str| {
                        format!(" AND ({created_at}, {id}) {below} (CAST(${t} AS BIGINT), ${i})")
                    };
                    on_credentials = cursor("x.created_at", "x.id");
                    on_grants = cursor("g2.created_at", "g2.credential_id");
                    *skip
                }
            };
            // The page's bounds are numbers in the statement, not parameters:
            // a plan for a parameter LIMIT assumes a tenth of the table is
            // wanted, so Postgres would plan every execution anew (a third of
            // its time on a page); with them in the text, each shape's plan is
            // kept. They are integers computed here, never text from the
            // request.
            let reach = offset + per_page;
            let ids_sql = if arms.is_empty() {
                format!(
                    "SELECT x.id FROM credentials x WHERE x.org_id = $1{rest}{on_credentials} \
                     ORDER BY x.created_at DESC, x.id DESC LIMIT {per_page} OFFSET {offset}"
                )
            } else {
                let mut walks: Vec<String> = walks_arms
                    .iter()
                    .map(|arm| {
                        format!(
                            "SELECT x.id, x.created_at FROM credentials x WHERE x.org_id = $1 AND {arm}{rest}{on_credentials} \
                             ORDER BY x.created_at DESC, x.id DESC LIMIT {reach}"
                        )
                    })
                    .collect();
                if let Some(g) = walk_grants {
                    walks.push(format!(
                        "SELECT x.id, x.created_at FROM credential_grants g2 JOIN credentials x ON x.id = g2.credential_id \
                         WHERE {g} AND x.org_id = $1{rest}{on_grants} \
                         ORDER BY g2.created_at DESC, g2.credential_id DESC LIMIT {reach}"
                    ));
                }
                let union = walks
                    .iter()
                    .enumerate()
                    .map(|(i, w)| format!("SELECT * FROM ({w}) w{i}"))
                    .collect::<Vec<_>>()
                    .join(" UNION ");
                format!(
                    "SELECT v.id FROM ({union}) v ORDER BY v.created_at DESC, v.id DESC LIMIT {per_page} OFFSET {offset}"
                )
            };
            let join_user = binds.len() + 1;
            binds.push(f.viewer.user.as_deref().unwrap_or_default().to_owned());
            let sql = format!(
                "SELECT {LIST_COLUMNS}, g.access AS my_grant, {VERSION_SQL} AS listing_version, {grants_sql} AS grants \
                 FROM credentials c \
                 LEFT JOIN credential_grants g ON g.credential_id = c.id AND g.user_id = ${join_user} \
                 WHERE c.id IN ({ids_sql}) ORDER BY c.created_at DESC, c.id DESC"
            );
            (sql, binds)
        };
        // A name search on Postgres is planned for its pattern each time (an
        // unnamed statement): a plan kept for any pattern cannot know how
        // many names match, and took 2-3 times as long as one made for it
        // (its planning included).
        let plan_each_time = self.dialect == Dialect::Postgres && f.q.is_some();
        let fetch = |(sql, binds): (String, Vec<String>)| async move {
            let mut page = sqlx::query_as(&sql).persistent(!plan_each_time);
            for b in &binds {
                page = page.bind(b);
            }
            page.fetch_all(&self.pool).await
        };
        // The filter's key: its count statement and values.
        let key = std::iter::once(count_sql.as_str())
            .chain(binds.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join("\u{0}");
        let version_of = |rows: &[Listed]| rows.first().map(|l| l.listing_version.unwrap_or(0));
        let offset = (f.page - 1).max(0) * per_page;
        // The page as read before in this process, if a check statement
        // finds it unchanged: the same listing version (the same rows, in
        // the same order) and the same row versions.
        let this_page = match &f.after {
            Some((t, i)) => format!("{key}\u{0}{per_page}\u{0}after\u{0}{t}\u{0}{i}"),
            None => format!("{key}\u{0}{per_page}\u{0}offset\u{0}{offset}"),
        };
        // Where only the rows' use times changed (resolves rewrite them once
        // a minute), they alone are read again.
        let served_again = async || -> Result<Option<CredentialPage>, StoreError> {
            let Some(mut page) = self.pages.get(&this_page) else {
                return Ok(None);
            };
            let served = match self.page_check(org_id, &page).await? {
                Kept::Unchanged => Served::Kept,
                Kept::Changed => return Ok(None),
                Kept::UsedSince => {
                    let Some(fresh) = self.with_uses_read(org_id, &page).await? else {
                        return Ok(None);
                    };
                    page = Arc::new(fresh);
                    self.pages.put(this_page.clone(), page.clone());
                    Served::UsesRead
                }
            };
            Ok(self.totals.get(&key, page.listing_version).map(|total| CredentialPage {
                rows: page.rows.clone(),
                total,
                served,
                content: page.content,
            }))
        };
        if let Some(page) = served_again().await? {
            return Ok(page);
        }
        // While another request reads this page, wait for it and serve what
        // it kept (if still unchanged) instead of reading it too.
        let _reading = match self.flights.lead_or_wait(&this_page).await {
            Some(lead) => Some(lead),
            None => match served_again().await? {
                Some(page) => return Ok(page),
                None => None,
            },
        };
        let rows: Vec<Listed> = match &f.after {
            Some(after) => fetch(page_statement(&Start::Cursor(after, false, 0))).await?,
            // An unfiltered first page starts at the newest row the viewer
            // sees: nothing to skip. A filtered one may have to pass many
            // rows that do not match: it is remembered like the others.
            None if offset == 0 && rest.is_empty() => fetch(page_statement(&Start::Offset(0))).await?,
            None => {
                // A numbered page starts where it started when last read, as
                // long as the listing version is the same (nothing that could
                // move a row in or out of the listing has changed): read from
                // that row, not by skipping every row before it. A page not
                // read yet starts where the nearest page before it started
                // (skipping only the pages between), under the same check.
                let page_key = |offset: i64| format!("{key}\u{0}{per_page}\u{0}{offset}");
                let remembered = (0..=NEAREST_PAGES)
                    .map(|back| offset - back * per_page)
                    .take_while(|from| *from >= 0)
                    .find_map(|from| {
                        self.page_starts
                            .any(&page_key(from))
                            .map(|(v, start)| (v, start, offset - from))
                    });
                let from_start = match &remembered {
                    Some((version, start, skip)) => {
                        let rows = fetch(page_statement(&Start::Cursor(start, true, *skip))).await?;
                        (version_of(&rows) == Some(*version)).then_some((rows, *skip > 0))
                    }
                    None => None,
                };
                let (rows, new_start) = match from_start {
                    Some(found) => found,
                    None => (fetch(page_statement(&Start::Offset(offset))).await?, true),
                };
                if let (true, Some(version), Some(first)) = (new_start, version_of(&rows), rows.first()) {
                    let start = (first.raw.created_at, first.raw.id.to_string());
                    self.page_starts.put(page_key(offset), version, start);
                }
                rows
            }
        };
        // The total: counted at most once per listing version and filter.
        let version = version_of(&rows);
        let counted = || version.and_then(|v| self.totals.get(&key, v));
        // Counted once while requests of several pages meet.
        let counting = match counted() {
            Some(_) => None,
            None => self.flights.lead_or_wait(&key).await,
        };
        let total = match counted() {
            Some(total) => total,
            None => {
                let mut count = sqlx::query_as::<_, CountColumns>(&count_sql);
                for b in &binds {
                    count = count.bind(b);
                }
                let CountColumns { listing_version, total } = count.fetch_one(&self.pool).await?;
                let version = listing_version.unwrap_or(0);
                self.totals.put(key, version, total);
                total
            }
        };
        drop(counting);
        let row_version_sum = rows.iter().map(|l| l.row_version).sum();
        let rows: Arc<[ListedCredential]> = rows.into_iter().map(listed).collect::<Result<_, _>>()?;
        let content = self.pages.content();
        if let Some(listing_version) = version {
            let page = ReadPage {
                listing_version,
                row_version_sum,
                used_sum: used_sum(&rows),
                content,
                rows: rows.clone(),
            };
            self.pages.put(this_page, Arc::new(page));
        }
        Ok(CredentialPage {
            rows,
            total,
            served: Served::Read,
            content,
        })
    })
        .await
    }
}
