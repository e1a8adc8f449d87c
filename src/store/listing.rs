//! Listing credentials: the page a viewer may at least use, filtered, with
//! the access predicate inside the statement so the indexes serve it.

use sqlx::Row;

use super::row::{Listed, LIST_COLUMNS};
use super::{CredentialRow, Dialect, Store, StoreError};
use crate::model::{Access, CredentialStatus};

/// Who is listing: the rows they may at least use are shown.
#[derive(Debug, Clone, Default)]
pub struct Viewer {
    /// Admins see everything.
    pub admin: bool,
    /// The user, if the key has one (else the organization itself).
    pub user: Option<String>,
}

/// Filters and page of a credential listing.
#[derive(Debug, Clone, Default)]
pub struct CredentialFilter {
    pub viewer: Viewer,
    pub provider: Option<String>,
    pub status: Option<CredentialStatus>,
    /// Case-insensitive substring of the name.
    pub q: Option<String>,
    /// Only credentials the viewer owns.
    pub owner_me: bool,
    /// Only shared (team or users) ones, or only unshared ones.
    pub shared: Option<bool>,
    /// Keyset cursor: only credentials after this (`created_at`, `id`) in
    /// the listing's order (newest first); `page` is then ignored.
    pub after: Option<(i64, String)>,
    /// 1-based.
    pub page: i64,
    pub per_page: i64,
}

fn like_pattern(q: &str) -> String {
    let escaped = q
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

impl Store {
    /// A page of the credentials `f.viewer` may at least use, newest first,
    /// each with the viewer's own grant, and the total. The access predicate
    /// is part of the statement (indexed by owner, by team sharing —
    /// migration 0010 — and by grant).
    pub async fn list_credentials(
        &self,
        org_id: &str,
        f: &CredentialFilter,
    ) -> Result<(Vec<(CredentialRow, Option<Access>)>, i64), StoreError> {
        // Only the filters actually given go into the statement, so each
        // shape gets a plan that can use the indexes.
        let mut filter = String::from("x.org_id = $1");
        let mut binds: Vec<String> = vec![org_id.to_owned()];
        let mut add = |clause: &str, value: Option<String>| {
            match value {
                Some(v) => {
                    binds.push(v);
                    filter.push_str(&clause.replace('?', &format!("${}", binds.len())));
                }
                None => filter.push_str(clause),
            };
        };
        let shared_sql = "(x.team_access IS NOT NULL OR EXISTS \
            (SELECT 1 FROM credential_grants s WHERE s.credential_id = x.id))";
        // The access predicate, one arm per index: organization credentials
        // and the user's own (credentials_org_owner), the team's
        // (credentials_org_team_shared), the user's grants (credential_grants_user,
        // then the primary key). Each arm repeats the organization so SQLite
        // can take the union of the indexes; the grants are a list computed
        // once (on Postgres an array: a correlated EXISTS would keep the
        // planner from combining the indexes and scan the organization).
        let granted = match self.dialect {
            Dialect::Postgres => {
                "x.id = ANY(ARRAY(SELECT g2.credential_id FROM credential_grants g2 \
                 WHERE g2.org_id = $1 AND g2.user_id = ?))"
            }
            Dialect::Sqlite => {
                "x.id IN (SELECT g2.credential_id FROM credential_grants g2 \
                 WHERE g2.org_id = $1 AND g2.user_id = ?)"
            }
        };
        match (&f.viewer.user, f.viewer.admin) {
            (_, true) => {}
            (Some(user), false) => add(
                &format!(
                    " AND ((x.org_id = $1 AND x.owner IS NULL) OR (x.org_id = $1 AND x.owner = ?) \
                     OR (x.org_id = $1 AND x.team_access IS NOT NULL) OR {granted})"
                ),
                Some(user.clone()),
            ),
            (None, false) => add(
                " AND ((x.org_id = $1 AND x.owner IS NULL) OR (x.org_id = $1 AND x.team_access IS NOT NULL))",
                None,
            ),
        }
        if f.owner_me {
            match &f.viewer.user {
                Some(user) => add(" AND x.owner = ?", Some(user.clone())),
                None => add(" AND 1 = 0", None),
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
        if let Some(q) = &f.q {
            add(" AND LOWER(x.name) LIKE ? ESCAPE '\\'", Some(like_pattern(q)));
        }
        let count_sql = format!("SELECT COUNT(*) FROM credentials x WHERE {filter}");
        // The cursor narrows the page, not the total.
        let mut page_filter = filter.clone();
        let mut page_binds = binds.clone();
        if let Some((created_at, id)) = &f.after {
            page_binds.push(created_at.to_string());
            let t = page_binds.len();
            page_binds.push(id.clone());
            let i = page_binds.len();
            page_filter.push_str(&format!(
                " AND (x.created_at < CAST(${t} AS BIGINT) OR (x.created_at = CAST(${t} AS BIGINT) AND x.id < ${i}))"
            ));
        }
        let mut count = sqlx::query(&count_sql);
        for b in &binds {
            count = count.bind(b);
        }
        let total: i64 = count.fetch_one(&self.pool).await?.try_get(0)?;
        // The page's ids come from the index alone; then 50 rows by key.
        let n = page_binds.len();
        let page_sql = format!(
            "SELECT {LIST_COLUMNS}, g.access AS my_grant FROM credentials c \
             LEFT JOIN credential_grants g ON g.credential_id = c.id AND g.user_id = ${} \
             WHERE c.id IN (SELECT x.id FROM credentials x WHERE {page_filter} \
               ORDER BY x.created_at DESC, x.id DESC LIMIT ${} OFFSET ${}) \
             ORDER BY c.created_at DESC, c.id DESC",
            n + 1,
            n + 2,
            n + 3
        );
        let mut page = sqlx::query_as(&page_sql);
        for b in &page_binds {
            page = page.bind(b);
        }
        let offset = if f.after.is_some() {
            0
        } else {
            (f.page - 1) * f.per_page
        };
        let rows: Vec<Listed> = page
            .bind(f.viewer.user.clone().unwrap_or_default())
            .bind(f.per_page)
            .bind(offset)
            .fetch_all(&self.pool)
            .await?;
        let rows = rows
            .into_iter()
            .map(|l| {
                let grant = l.my_grant.as_deref().and_then(Access::parse);
                CredentialRow::try_from(l.raw).map(|row| (row, grant))
            })
            .collect::<Result<_, _>>()?;
        Ok((rows, total))
    }
}
