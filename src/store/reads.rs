//! The access check's credential reads, many readers to one statement
//! (grouped by `crate::group_commit::ReadGroup`).

use super::row::{CredentialColumns, READ_COLUMNS};
use super::sharing::{access, grant_pairs};
use super::{CredentialRow, Dialect, Store, StoreError};
use crate::ids::{CredentialId, OrgId, UserId};
use crate::model::Access;

/// One reader's credential read (see [`Store::credentials_with_grants`]):
/// credential `id` of organization `org_id`, with `user`'s own grant on it
/// (`None`: no grant is wanted).
#[derive(Debug, Clone)]
pub struct CredentialRead {
    pub org_id: OrgId,
    pub id: CredentialId,
    pub user: Option<UserId>,
}

/// What one reader's read found: the credential, the reader's own grant
/// on it, and the row's version (raised by every change to the row but its
/// use time and refresh lease).
#[derive(Debug, Clone)]
pub struct Found {
    pub row: CredentialRow,
    pub grant: Option<Access>,
    pub row_version: i64,
}

/// A row of a grouped read: the credential and its readers' grants.
#[derive(sqlx::FromRow)]
struct Grouped {
    #[sqlx(flatten)]
    raw: CredentialColumns,
    grants: Option<String>,
    row_version: i64,
}

/// A grouped read's row, typed: the credential, its readers' grants
/// (user, level; a level is read only for its own reader), its version.
type Typed = (CredentialRow, Vec<(UserId, String)>, i64);

impl Store {
    /// Credentials for several readers in one statement: for each
    /// [`CredentialRead`], its row if it is in that organization, and the
    /// reader's own grant on it (only when a user is named). A row that
    /// does not parse fails only its readers.
    pub async fn credentials_with_grants(
        &self,
        reads: &[CredentialRead],
    ) -> Result<Vec<Result<Option<Found>, StoreError>>, StoreError> {
        self.timed(async move {
            let mut ids: Vec<&str> = reads.iter().map(|r| r.id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            let mut users: Vec<&str> = reads.iter().filter_map(|r| r.user.as_deref()).collect();
            users.sort_unstable();
            users.dedup();
            // A few statement shapes, not one per group size: the lists are
            // padded to a power of two with their last value (kept prepared).
            let pad = |list: &mut Vec<&str>| {
                if let Some(last) = list.last().copied() {
                    list.resize(list.len().next_power_of_two(), last);
                }
            };
            pad(&mut ids);
            pad(&mut users);
            let marks =
                |from: usize, n: usize| (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ");
            // The grants of the group's users only, `[[user_id, access], …]`.
            let grants = if users.is_empty() {
                "CAST(NULL AS TEXT)".to_owned()
            } else {
                let (agg, pair) = match self.dialect {
                    Dialect::Postgres => ("json_agg", "json_build_array"),
                    Dialect::Sqlite => ("json_group_array", "json_array"),
                };
                format!(
                    "(SELECT CAST({agg}({pair}(g.user_id, g.access)) AS TEXT) FROM credential_grants g \
                 WHERE g.credential_id = credentials.id AND g.user_id IN ({}))",
                    marks(ids.len() + 1, users.len())
                )
            };
            let sql = format!(
                "SELECT {READ_COLUMNS}, {grants} AS grants, row_version FROM credentials WHERE id IN ({})",
                marks(1, ids.len())
            );
            let mut query = sqlx::query_as::<_, Grouped>(&sql);
            for id in ids.iter().chain(users.iter()) {
                query = query.bind(*id);
            }
            // Each row is typed on its own: a malformed one fails only its
            // own readers.
            let rows = self
                .on_kept(&self.kept_reads, async |conn| Ok(query.fetch_all(conn).await?))
                .await?;
            let found: Vec<(CredentialId, OrgId, Result<Typed, StoreError>)> = rows
                .into_iter()
                .map(|grouped| {
                    let (id, org_id) = (grouped.raw.id.clone(), grouped.raw.org_id.clone());
                    let typed = CredentialRow::try_from(grouped.raw).and_then(|row| {
                        let pairs = grant_pairs(&row.id, grouped.grants.as_deref())?;
                        Ok((row, pairs, grouped.row_version))
                    });
                    (id, org_id, typed)
                })
                .collect();
            let answer = |read: &CredentialRead| {
                // The organization is part of the answer: a row of another
                // organization is not there for this reader.
                let Some((_, _, typed)) = found.iter().find(|(id, org, _)| *id == read.id && *org == read.org_id)
                else {
                    return Ok(None);
                };
                let (row, pairs, row_version) = typed.as_ref().map_err(StoreError::duplicate)?;
                let grant = read
                    .user
                    .as_ref()
                    .and_then(|user| pairs.iter().find(|(u, _)| u == user))
                    .map(|(_, level)| access(&row.id, level))
                    .transpose()?;
                Ok(Some(Found {
                    row: row.clone(),
                    grant,
                    row_version: *row_version,
                }))
            };
            Ok(reads.iter().map(answer).collect())
        })
        .await
    }
}
