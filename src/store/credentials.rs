//! Credential rows: non-secret fields in the clear, secret fields sealed.

use super::audit::{self, AuditEvent};
use super::outbox::{self, Notification};
use super::quota::release;
use super::row::{typed, CredentialColumns, READ_COLUMNS};
use super::{check_key, CredentialRow, Store, StoreError};
use crate::ids::{CredentialId, CredentialName, OrgId, UserId};
use crate::model::{AuthKind, CredentialStatus};

/// Everything needed to insert a credential.
#[derive(Debug, Clone)]
pub struct NewCredential {
    pub id: CredentialId,
    pub org_id: OrgId,
    pub name: CredentialName,
    pub provider: String,
    pub auth_type: AuthKind,
    /// Non-secret fields, a JSON object.
    pub fields: String,
    /// The secret names, a JSON array.
    pub secret_names: String,
    pub secret_ct: String,
    pub key_version: i64,
    pub created_by: String,
    /// The owning user; `None`: an organization credential.
    pub owner: Option<UserId>,
    /// A minted credential's first token: when it expires, when to mint again.
    pub expires_at: Option<i64>,
    pub refresh_after: Option<i64>,
    /// Who a minted credential is (its client id, its service account).
    pub account_id: Option<String>,
    pub account_email: Option<String>,
    /// Its token's scopes (JSON array).
    pub scopes: Option<String>,
    /// When the secret itself ends, as its owner entered it.
    pub secret_expires_at: Option<i64>,
}

/// New sealed secrets (and the public fields that go with them), written
/// only if the row's `secret_version` is still `expected_version`.
#[derive(Debug, Clone)]
pub struct SecretWrite {
    pub fields: String,
    pub secret_names: String,
    pub secret_ct: String,
    pub key_version: i64,
    pub expected_version: i64,
    /// A minted credential's new first token (its fields replaced): the
    /// credential is `active` again, with this expiry and account.
    pub minted: Option<MintedWrite>,
}

/// What a new mint sets on a credential beside its sealed token.
#[derive(Debug, Clone)]
pub struct MintedWrite {
    pub expires_at: Option<i64>,
    pub refresh_after: Option<i64>,
    pub account_id: Option<String>,
    pub account_email: Option<String>,
    /// JSON array.
    pub scopes: Option<String>,
}

impl Store {
    /// One credential of one organization.
    pub async fn credential(&self, org_id: &OrgId, id: &CredentialId) -> Result<Option<CredentialRow>, StoreError> {
        self.timed(async move {
            let raw: Option<CredentialColumns> = sqlx::query_as(&format!(
                "SELECT {READ_COLUMNS} FROM credentials WHERE org_id = $1 AND id = $2"
            ))
            .bind(org_id)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
            raw.map(CredentialRow::try_from).transpose()
        })
        .await
    }

    /// Does credential `id` exist in organization `org_id`?
    pub async fn credential_exists(&self, org_id: &OrgId, id: &CredentialId) -> Result<bool, StoreError> {
        self.timed(async move {
            let row = sqlx::query("SELECT 1 FROM credentials WHERE org_id = $1 AND id = $2")
                .bind(org_id)
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
            Ok(row.is_some())
        })
        .await
    }

    /// Renames and/or replaces the fields of a credential; returns the new
    /// row. New secrets are written only if nobody wrote secrets since they
    /// were read and no refresh holds the credential's lease (`Conflict`).
    pub async fn update_credential(
        &self,
        org_id: &OrgId,
        id: &CredentialId,
        (name, secret_expires): (Option<&CredentialName>, Option<Option<i64>>),
        secrets: Option<&SecretWrite>,
        event: &AuditEvent,
    ) -> Result<CredentialRow, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            if let Some(s) = secrets {
                check_key(&mut tx, self.dialect, org_id, s.key_version).await?;
            }
            let t = self.now();
            let done = sqlx::query(
                "UPDATE credentials SET name = COALESCE($3, name), fields = COALESCE($4, fields), \
             secret_names = COALESCE($5, secret_names), secret_ct = COALESCE($6, secret_ct), \
             key_version = COALESCE($7, key_version), \
             secret_version = CASE WHEN $6 IS NULL THEN secret_version ELSE secret_version + 1 END, \
             updated_at = $8, secret_expires_at = CASE WHEN $10 = 1 THEN $11 ELSE secret_expires_at END \
             WHERE org_id = $1 AND id = $2 \
             AND ($9 IS NULL OR (secret_version = $9 AND (lease_until IS NULL OR lease_until < $8)))",
            )
            .bind(org_id)
            .bind(id)
            .bind(name)
            .bind(secrets.map(|s| s.fields.as_str()))
            .bind(secrets.map(|s| s.secret_names.as_str()))
            .bind(secrets.map(|s| s.secret_ct.as_str()))
            .bind(secrets.map(|s| s.key_version))
            .bind(t)
            .bind(secrets.map(|s| s.expected_version))
            .bind(i64::from(secret_expires.is_some()))
            .bind(secret_expires.flatten())
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() == 0 {
                let exists = sqlx::query("SELECT 1 FROM credentials WHERE org_id = $1 AND id = $2")
                    .bind(org_id)
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .is_some();
                return Err(if exists {
                    StoreError::Conflict
                } else {
                    StoreError::NotFound
                });
            }
            if let Some(m) = secrets.and_then(|s| s.minted.as_ref()) {
                sqlx::query(
                    "UPDATE credentials SET expires_at = $3, refresh_after = $4, account_id = $5, \
                     account_email = $6, scopes = $7, status = $8, last_error = NULL, refresh_failures = 0 \
                     WHERE org_id = $1 AND id = $2",
                )
                .bind(org_id)
                .bind(id)
                .bind(m.expires_at)
                .bind(m.refresh_after)
                .bind(&m.account_id)
                .bind(&m.account_email)
                .bind(&m.scopes)
                .bind(CredentialStatus::Active.as_str())
                .execute(&mut *tx)
                .await?;
            }
            audit::insert(&mut tx, event, t).await?;
            let raw: CredentialColumns = sqlx::query_as(&format!(
                "SELECT {READ_COLUMNS} FROM credentials WHERE org_id = $1 AND id = $2"
            ))
            .bind(org_id)
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            CredentialRow::try_from(raw)
        })
        .await
    }

    /// Re-seals one credential's secrets under a new data key (rotation),
    /// only if its ciphertext is still the one that was read. The content is
    /// unchanged, so `secret_version` stays: a refresh in flight still wins.
    pub async fn reseal_credential(
        &self,
        org_id: &OrgId,
        id: &CredentialId,
        old_ct: &str,
        new_ct: &str,
        key_version: i64,
    ) -> Result<bool, StoreError> {
        self.timed(async move {
            self.reseal(
            "UPDATE credentials SET secret_ct = $1, key_version = $2 WHERE org_id = $3 AND id = $4 AND secret_ct = $5",
            (org_id, id),
            (old_ct, new_ct),
            key_version,
        )
        .await
        })
        .await
    }

    /// Runs one re-seal `update` (`$1` new ciphertext, `$2` key version, `$3`
    /// organization, `$4` the row's key, `$5` the ciphertext that was read)
    /// under the organization's current data key; true if the row still held
    /// what was read.
    pub(super) async fn reseal(
        &self,
        update: &'static str,
        (org_id, key): (&OrgId, &str),
        (old_ct, new_ct): (&str, &str),
        key_version: i64,
    ) -> Result<bool, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            check_key(&mut tx, self.dialect, org_id, key_version).await?;
            let done = sqlx::query(update)
                .bind(new_ct)
                .bind(key_version)
                .bind(org_id)
                .bind(key)
                .bind(old_ct)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() == 1)
        })
        .await
    }

    /// Credentials of an organization sealed under a key older than `version`.
    pub async fn credentials_below_key(
        &self,
        org_id: &OrgId,
        version: i64,
        after_id: &str,
        limit: i64,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        self.timed(async move {
            let rows: Vec<CredentialColumns> = sqlx::query_as(&format!(
                "SELECT {READ_COLUMNS} FROM credentials WHERE org_id = $1 AND key_version < $2 AND id > $4 \
             ORDER BY id LIMIT $3"
            ))
            .bind(org_id)
            .bind(version)
            .bind(limit)
            .bind(after_id)
            .fetch_all(&self.pool)
            .await?;
            typed(rows)
        })
        .await
    }

    /// Deletes credentials by id, auditing each; returns the deleted rows.
    pub async fn delete_credentials(
        &self,
        org_id: &OrgId,
        ids: &[CredentialId],
        actor: &str,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let t = self.now();
            let mut deleted = Vec::new();
            for id in ids {
                let raw: Option<CredentialColumns> = sqlx::query_as(&format!(
                    "DELETE FROM credentials WHERE org_id = $1 AND id = $2 RETURNING {READ_COLUMNS}"
                ))
                .bind(org_id)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(raw) = raw {
                    let row = CredentialRow::try_from(raw)?;
                    release(&mut tx, org_id, &row.provider).await?;
                    let event = AuditEvent::success(org_id, id, "credential.delete", actor)
                        .with_detail(serde_json::json!({"provider": row.provider, "name": row.name}));
                    audit::insert(&mut tx, &event, t).await?;
                    let notify = Notification::new(
                        "credential.deleted",
                        org_id,
                        id,
                        &row.provider,
                        serde_json::json!({"name": row.name}),
                    );
                    outbox::insert(&mut tx, &notify, t).await?;
                    deleted.push(row);
                }
            }
            tx.commit().await?;
            Ok(deleted)
        })
        .await
    }

    /// Records the outcome of a connection test. The status moves as
    /// [`CredentialStatus::after_test`] says, computed in the statement so a
    /// concurrent `needs_reauth` verdict is never overwritten.
    pub async fn record_test(
        &self,
        org_id: &OrgId,
        id: &CredentialId,
        passed: bool,
        last_error: Option<&super::LastError>,
        secret_expires_at: Option<i64>,
    ) -> Result<CredentialStatus, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let t = self.now();
            // The new status per current one comes from the domain's transition
            // table (`after_test`), applied in the statement so a concurrent
            // status change is never overwritten with a stale one. A status no
            // test can change (`needs_reauth`) keeps its last error too.
            let mut status_case = String::from("CASE status");
            let mut immune = Vec::new();
            for from in CredentialStatus::ALL {
                let to = from.after_test(passed);
                status_case.push_str(&format!(" WHEN '{}' THEN '{}'", from.as_str(), to.as_str()));
                if from.after_test(true) == from && from.after_test(false) == from {
                    immune.push(format!("'{}'", from.as_str()));
                }
            }
            let error_case = match immune.is_empty() {
                true => "$3".to_owned(),
                false => format!(
                    "CASE WHEN status IN ({}) THEN last_error ELSE $3 END",
                    immune.join(", ")
                ),
            };
            let status: String = sqlx::query_scalar(&format!(
                "UPDATE credentials SET status = {status_case} ELSE status END, last_error = {error_case}, \
             last_tested_at = $4, updated_at = $4, secret_expires_at = COALESCE($5, secret_expires_at) \
             WHERE org_id = $1 AND id = $2 RETURNING status"
            ))
            .bind(org_id)
            .bind(id)
            .bind(last_error.map(|e| serde_json::to_string(e).expect("serializes")))
            .bind(t)
            .bind(secret_expires_at)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
            tx.commit().await?;
            CredentialStatus::parse(&status).ok_or(StoreError::Corrupt {
                id: id.to_string(),
                column: "status",
            })
        })
        .await
    }
}

/// New credentials per statement of [`insert_rows`] (20 values each).
const ROWS_PER_STATEMENT: usize = 100;

/// Inserts the rows of new credentials (status `new`) on `conn`, a
/// statement per 100.
pub(super) async fn insert_rows(
    conn: &mut sqlx::AnyConnection,
    news: &[&NewCredential],
    t: i64,
) -> Result<(), StoreError> {
    for chunk in news.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO credentials (id, org_id, name, provider, auth_type, status, fields, secret_names, \
             secret_ct, key_version, created_by, created_at, updated_at, owner, expires_at, refresh_after, \
             account_id, account_email, scopes, secret_expires_at) VALUES {}",
            super::values(chunk.len(), 20)
        );
        let mut query = sqlx::query(&sql);
        for new in chunk {
            query = query
                .bind(&new.id)
                .bind(&new.org_id)
                .bind(&new.name)
                .bind(&new.provider)
                .bind(new.auth_type.as_str())
                .bind(CredentialStatus::NEW.as_str())
                .bind(&new.fields)
                .bind(&new.secret_names)
                .bind(&new.secret_ct)
                .bind(new.key_version)
                .bind(&new.created_by)
                .bind(t)
                .bind(t)
                .bind(&new.owner)
                .bind(new.expires_at)
                .bind(new.refresh_after)
                .bind(&new.account_id)
                .bind(&new.account_email)
                .bind(&new.scopes)
                .bind(new.secret_expires_at);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}
