//! OAuth state rows (single use, short lived) and storing the outcome of a
//! completed authorization as a credential.

use super::audit::{self, AuditEvent};
use super::outbox::{self, Notification};
use super::quota::{lock_org, reserve};
use super::{check_key, Store, StoreError};
use crate::ids::{CredentialId, CredentialName, OrgId, UserId};
use crate::model::{AuthKind, CredentialStatus};

/// A pending authorization, as stored (payload sealed).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OAuthStateRow {
    pub org_id: OrgId,
    pub provider: String,
    /// The user who started it (`None`: a key without a user); removing
    /// that user ends the flow.
    pub user_id: Option<UserId>,
    /// Why the flow was ended before its callback (`user_removed`), if it was.
    pub ended: Option<String>,
    pub payload_ct: String,
    pub key_version: i64,
    pub expires_at: i64,
}

/// What a completed authorization stores on a credential.
#[derive(Debug, Clone)]
pub struct OAuthGrant {
    pub org_id: OrgId,
    pub provider: String,
    pub account_id: String,
    pub account_email: Option<String>,
    pub account_name: Option<String>,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    /// When the worker should refresh it (jittered).
    pub refresh_after: Option<i64>,
    /// When the refresh token (the grant) ends, where known.
    pub refresh_expires_at: Option<i64>,
    /// JSON object of non-secret fields (tenant, …).
    pub fields: String,
    pub secret_names: String,
    pub secret_ct: String,
    pub key_version: i64,
    /// The organization's app (or MCP registration) that issued it, and that
    /// app's client id; `None`: the operator's app.
    pub oauth_app: Option<(String, String)>,
}

/// Where a grant goes.
#[derive(Debug, Clone)]
pub enum GrantTarget {
    /// Update this credential, if its `secret_version` is still `expected_version`.
    Existing { id: CredentialId, expected_version: i64 },
    /// Insert a new credential (quota permitting).
    New {
        id: CredentialId,
        name: CredentialName,
        created_by: String,
        /// The owning user; `None`: an organization credential.
        owner: Option<UserId>,
    },
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Stores a pending authorization, unless the organization already has
    /// `max_pending` that have not expired (`QuotaExceeded`). Exact under
    /// concurrent authorizes on any replica: the count and the insert run
    /// under the organization's write lock, so no two interleave (on
    /// Postgres, read committed would otherwise let both count 999).
    pub async fn insert_oauth_state(
        &self,
        state_hash: &str,
        row: &OAuthStateRow,
        max_pending: i64,
    ) -> Result<(), StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            lock_org(&mut tx, &row.org_id).await?;
            let pending: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM oauth_states WHERE org_id = $1 AND expires_at >= $2")
                    .bind(&row.org_id)
                    .bind(self.now())
                    .fetch_one(&mut *tx)
                    .await?;
            if pending >= max_pending {
                return Err(StoreError::QuotaExceeded {
                    limit: max_pending,
                    count: pending,
                });
            }
            sqlx::query(
            "INSERT INTO oauth_states (state_hash, org_id, provider, payload_ct, key_version, expires_at, created_at, \
             user_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(state_hash)
        .bind(&row.org_id)
        .bind(&row.provider)
        .bind(&row.payload_ct)
        .bind(row.key_version)
        .bind(row.expires_at)
        .bind(self.now())
        .bind(&row.user_id)
        .execute(&mut *tx)
        .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Deletes the OAuth states that expired before `now`; returns how many.
    pub async fn purge_oauth_states(&self, now: i64) -> Result<u64, StoreError> {
        self.execute_write(sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1").bind(now))
            .await
    }

    /// Takes a pending authorization: single use, so a replayed `state`
    /// finds nothing (the row stays, taken, until [`Store::store_grant`]
    /// deletes it or it expires). An ended flow is returned with why
    /// (`ended`), and must store nothing. Expired rows of anyone are purged.
    pub async fn take_oauth_state(&self, state_hash: &str) -> Result<Option<OAuthStateRow>, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let now = self.now();
            let row: Option<OAuthStateRow> = sqlx::query_as(
                "UPDATE oauth_states SET taken_at = $2 WHERE state_hash = $1 AND taken_at IS NULL \
             RETURNING org_id, provider, payload_ct, key_version, expires_at, user_id, ended",
            )
            .bind(state_hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM oauth_states WHERE expires_at < $1")
                .bind(now - 3600)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row)
        })
        .await
    }

    /// The credential `owner` (`None`: the organization) already connected
    /// for an external account, if any: another owner's never counts.
    pub async fn credential_for_account(
        &self,
        org_id: &OrgId,
        provider: &str,
        owner: Option<&UserId>,
        account_id: &str,
    ) -> Result<Option<CredentialId>, StoreError> {
        self.timed(async move {
            Ok(sqlx::query_scalar(
                "SELECT id FROM credentials WHERE org_id = $1 AND provider = $2 AND COALESCE(owner, '') = $3 \
             AND account_id = $4",
            )
            .bind(org_id)
            .bind(provider)
            .bind(owner.map_or("", |o| o.as_str()))
            .bind(account_id)
            .fetch_optional(&self.pool)
            .await?)
        })
        .await
    }

    /// Writes a grant: updates the target credential (making it `active`
    /// again) or inserts a new one within the quota, audited, in one
    /// transaction that also deletes the authorization it comes from
    /// (`state_hash`), unless that was ended meanwhile (`FlowEnded`).
    /// `Conflict` means another writer got there first: the caller re-reads
    /// and tries again.
    pub async fn store_grant(
        &self,
        state_hash: Option<&str>,
        grant: &OAuthGrant,
        target: &GrantTarget,
        default_limit: i64,
        (event, notify): (&AuditEvent, Option<&Notification>),
    ) -> Result<(), StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            lock_org(&mut tx, &grant.org_id).await?;
            // The removal of a user marks their flows ended under the same
            // organization lock: either it came first and this stores nothing,
            // or it comes after and finds the credential to hand on.
            if let Some(state_hash) = state_hash {
                let ended: Option<Option<String>> = sqlx::query_scalar(
                    "DELETE FROM oauth_states WHERE state_hash = $1 AND org_id = $2 RETURNING ended",
                )
                .bind(state_hash)
                .bind(&grant.org_id)
                .fetch_optional(&mut *tx)
                .await?;
                match ended {
                    Some(None) => {}
                    Some(Some(why)) => return Err(StoreError::FlowEnded(why)),
                    None => return Err(StoreError::FlowEnded("expired".into())),
                }
            }
            check_key(&mut tx, self.dialect, &grant.org_id, grant.key_version).await?;
            let t = self.now();
            let scopes = serde_json::to_string(&grant.scopes).expect("strings serialize");
            let (app, client_id) = match &grant.oauth_app {
                Some((app, client_id)) => (Some(app.as_str()), Some(client_id.as_str())),
                None => (None, None),
            };
            // The app a grant came from must still be the organization's:
            // a delete or a new client id that came first wins.
            if let (Some(app), Some(client_id)) = (app, client_id) {
                let current: Option<String> =
                    sqlx::query_scalar("SELECT client_id FROM oauth_apps WHERE org_id = $1 AND app = $2")
                        .bind(&grant.org_id)
                        .bind(app)
                        .fetch_optional(&mut *tx)
                        .await?;
                if current.as_deref() != Some(client_id) {
                    return Err(StoreError::FlowEnded("app_changed".into()));
                }
            }
            let written = match target {
                GrantTarget::Existing { id, expected_version } => sqlx::query(
                    "UPDATE credentials SET account_id = $3, account_email = $4, account_name = $5, scopes = $6, \
                 expires_at = $7, fields = $8, secret_names = $9, secret_ct = $10, key_version = $11, \
                 status = $15, last_error = NULL, refresh_failures = 0, refresh_after = $14, \
                 lease_owner = NULL, lease_until = NULL, last_refreshed_at = $12, updated_at = $12, \
                 secret_version = secret_version + 1, oauth_app = $16, oauth_client_id = $17, \
                 refresh_expires_at = $18 WHERE org_id = $1 AND id = $2 AND secret_version = $13",
                )
                .bind(&grant.org_id)
                .bind(id)
                .bind(&grant.account_id)
                .bind(&grant.account_email)
                .bind(&grant.account_name)
                .bind(&scopes)
                .bind(grant.expires_at)
                .bind(&grant.fields)
                .bind(&grant.secret_names)
                .bind(&grant.secret_ct)
                .bind(grant.key_version)
                .bind(t)
                .bind(expected_version)
                .bind(grant.refresh_after)
                .bind(CredentialStatus::AFTER_GRANT.as_str())
                .bind(app)
                .bind(client_id)
                .bind(grant.refresh_expires_at)
                .execute(&mut *tx)
                .await
                .map(|r| r.rows_affected() == 1),
                GrantTarget::New {
                    id,
                    name,
                    created_by,
                    owner,
                } => {
                    reserve(&mut tx, &grant.org_id, &grant.provider, default_limit).await?;
                    sqlx::query(
                    "INSERT INTO credentials (id, org_id, name, provider, auth_type, status, fields, secret_names, \
                     secret_ct, key_version, account_id, account_email, account_name, scopes, expires_at, \
                     last_refreshed_at, created_by, created_at, updated_at, refresh_after, owner, oauth_app, \
                     oauth_client_id, refresh_expires_at) VALUES ($1, $2, $3, $4, $18, $19, $5, $6, $7, $8, $9, \
                     $10, $11, $12, $13, $14, $15, $14, $14, $16, $17, $20, $21, $22)",
                )
                .bind(id)
                .bind(&grant.org_id)
                .bind(name)
                .bind(&grant.provider)
                .bind(&grant.fields)
                .bind(&grant.secret_names)
                .bind(&grant.secret_ct)
                .bind(grant.key_version)
                .bind(&grant.account_id)
                .bind(&grant.account_email)
                .bind(&grant.account_name)
                .bind(&scopes)
                .bind(grant.expires_at)
                .bind(t)
                .bind(created_by)
                .bind(grant.refresh_after)
                .bind(owner)
                .bind(AuthKind::Oauth2.as_str())
                .bind(CredentialStatus::NEW.as_str())
                .bind(app)
                .bind(client_id)
                .bind(grant.refresh_expires_at)
                .execute(&mut *tx)
                .await
                .map(|r| r.rows_affected() == 1)
                }
            };
            match written {
                Ok(true) => {}
                Ok(false) => return Err(StoreError::Conflict),
                Err(e) if is_unique_violation(&e) => return Err(StoreError::AccountTaken),
                Err(e) => return Err(e.into()),
            }
            audit::insert(&mut tx, event, t).await?;
            if let Some(n) = notify {
                outbox::insert(&mut tx, n, t).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
