//! Hosted-page sessions: created by an API key for one user, opened once by
//! the URL's token, then carried by a cookie. Only hashes of the token and
//! the cookie are stored.

use super::{Store, StoreError};

use crate::ids::{CredentialId, OrgId, UserId};

/// A hosted-page session, as stored.
#[derive(Debug, Clone)]
pub struct PageSessionRow {
    pub id: String,
    pub org_id: OrgId,
    pub user_id: UserId,
    pub purpose: String,
    /// The provider ids offered (stored as a JSON array), or `None` for all.
    pub providers: Option<Vec<String>>,
    pub credential_id: Option<CredentialId>,
    pub return_to: Option<String>,
    pub csrf_token: String,
    pub expires_at: i64,
}

/// A session to store.
#[derive(Debug, Clone)]
pub struct NewPageSession<'a> {
    pub row: &'a PageSessionRow,
    pub url_token_hash: &'a str,
    pub created_by: &'a str,
    /// The API key that opened it: revoking that key ends the session.
    pub api_key_id: &'a str,
}

const COLUMNS: &str = "id, org_id, user_id, purpose, providers, credential_id, return_to, csrf_token, expires_at";

/// A session as [`COLUMNS`] reads it.
#[derive(sqlx::FromRow)]
struct SessionColumns {
    id: String,
    org_id: OrgId,
    user_id: UserId,
    purpose: String,
    providers: Option<String>,
    credential_id: Option<CredentialId>,
    return_to: Option<String>,
    csrf_token: String,
    expires_at: i64,
}

impl TryFrom<SessionColumns> for PageSessionRow {
    type Error = StoreError;

    fn try_from(r: SessionColumns) -> Result<Self, StoreError> {
        let providers = match r.providers.as_deref().map(serde_json::from_str::<Vec<String>>) {
            None => None,
            Some(Ok(list)) => Some(list),
            Some(Err(_)) => {
                tracing::error!(page_session = %r.id, column = "providers", "a stored page session column is malformed");
                return Err(StoreError::Corrupt {
                    id: r.id,
                    column: "providers",
                });
            }
        };
        Ok(Self {
            id: r.id,
            org_id: r.org_id,
            user_id: r.user_id,
            purpose: r.purpose,
            providers,
            credential_id: r.credential_id,
            return_to: r.return_to,
            csrf_token: r.csrf_token,
            expires_at: r.expires_at,
        })
    }
}

impl Store {
    /// Stores a new session, unless the organization already has
    /// `max_open` that have not expired (`QuotaExceeded`).
    pub async fn insert_page_session(&self, new: &NewPageSession<'_>, max_open: i64) -> Result<(), StoreError> {
        self.timed(async move {
            let row = new.row;
            let mut tx = self.begin_write().await?;
            let open: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM page_sessions WHERE org_id = $1 AND expires_at >= $2")
                    .bind(&row.org_id)
                    .bind(self.now())
                    .fetch_one(&mut *tx)
                    .await?;
            if open >= max_open {
                return Err(StoreError::QuotaExceeded {
                    limit: max_open,
                    count: max_open,
                });
            }
            sqlx::query(
                "INSERT INTO page_sessions (id, org_id, user_id, purpose, providers, credential_id, return_to, \
             url_token_hash, csrf_token, created_by, created_at, expires_at, api_key_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            )
            .bind(&row.id)
            .bind(&row.org_id)
            .bind(&row.user_id)
            .bind(&row.purpose)
            .bind(
                row.providers
                    .as_ref()
                    .map(|p| serde_json::to_string(p).expect("strings serialize")),
            )
            .bind(&row.credential_id)
            .bind(&row.return_to)
            .bind(new.url_token_hash)
            .bind(&row.csrf_token)
            .bind(new.created_by)
            .bind(self.now())
            .bind(row.expires_at)
            .bind(new.api_key_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Opens a session of `purpose` by its URL token, once: binds it to
    /// `cookie_hash` and returns it; `None` when the token is unknown, used,
    /// expired or for another purpose (which leaves it unused).
    pub async fn open_page_session(
        &self,
        url_token_hash: &str,
        purpose: &str,
        cookie_hash: &str,
    ) -> Result<Option<PageSessionRow>, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let row: Option<SessionColumns> = sqlx::query_as(&format!(
                "UPDATE page_sessions SET cookie_hash = $2, opened_at = $3 \
             WHERE url_token_hash = $1 AND purpose = $4 AND opened_at IS NULL AND expires_at > $3 \
             RETURNING {COLUMNS}"
            ))
            .bind(url_token_hash)
            .bind(cookie_hash)
            .bind(self.now())
            .bind(purpose)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            row.map(PageSessionRow::try_from).transpose()
        })
        .await
    }

    /// The live session a cookie carries, if any.
    pub async fn page_session(&self, cookie_hash: &str) -> Result<Option<PageSessionRow>, StoreError> {
        self.timed(async move {
            let row: Option<SessionColumns> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM page_sessions WHERE cookie_hash = $1 AND expires_at > $2"
            ))
            .bind(cookie_hash)
            .bind(self.now())
            .fetch_optional(&self.pool)
            .await?;
            row.map(PageSessionRow::try_from).transpose()
        })
        .await
    }

    /// Deletes the sessions that expired before `now`; returns how many.
    pub async fn purge_page_sessions(&self, now: i64) -> Result<u64, StoreError> {
        self.execute_write(sqlx::query("DELETE FROM page_sessions WHERE expires_at < $1").bind(now))
            .await
    }
}
