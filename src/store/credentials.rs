//! Credential rows: non-secret fields in the clear, secret fields sealed.

use sqlx::Row;

use super::audit::{self, AuditEvent};
use super::outbox::{self, Notification};
use super::quota::{check_quota, lock_org};
use super::row::{typed, Listed, Raw, LIST_COLUMNS, READ_COLUMNS};
use super::{check_key, CredentialRow, Store, StoreError};
use crate::model::{Access, AuthKind, CredentialStatus};

/// Everything needed to insert a credential.
#[derive(Debug, Clone)]
pub struct NewCredential {
    pub id: String,
    pub org_id: String,
    pub name: String,
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
    pub owner: Option<String>,
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
}

/// The workflow and run a use was for (free strings, at most 200 characters).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub workflow_id: Option<String>,
    pub run_id: Option<String>,
}

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
    /// Inserts a credential unless the organization's limit for its provider
    /// is reached. The organization row is locked first, so concurrent
    /// creates — on any replica — are counted one after another.
    pub async fn insert_credential(
        &self,
        new: &NewCredential,
        default_limit: i64,
        (event, notify): (&AuditEvent, &Notification),
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        lock_org(&mut tx, &new.org_id).await?;
        check_key(&mut tx, self.dialect, &new.org_id, new.key_version).await?;
        check_quota(&mut tx, &new.org_id, &new.provider, default_limit).await?;
        let t = self.now();
        sqlx::query(
            "INSERT INTO credentials (id, org_id, name, provider, auth_type, status, fields, secret_names, \
             secret_ct, key_version, created_by, created_at, updated_at, owner) \
             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $10, $11, $11, $12)",
        )
        .bind(&new.id)
        .bind(&new.org_id)
        .bind(&new.name)
        .bind(&new.provider)
        .bind(new.auth_type.as_str())
        .bind(&new.fields)
        .bind(&new.secret_names)
        .bind(&new.secret_ct)
        .bind(new.key_version)
        .bind(&new.created_by)
        .bind(t)
        .bind(&new.owner)
        .execute(&mut *tx)
        .await?;
        audit::insert(&mut tx, event, t).await?;
        outbox::insert(&mut tx, notify, t).await?;
        tx.commit().await?;
        Ok(())
    }

    /// One credential of one organization.
    pub async fn credential(&self, org_id: &str, id: &str) -> Result<Option<CredentialRow>, StoreError> {
        let raw: Option<Raw> = sqlx::query_as(&format!(
            "SELECT {READ_COLUMNS} FROM credentials WHERE org_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        raw.map(CredentialRow::try_from).transpose()
    }

    /// A page of the credentials `f.viewer` may at least use, newest first,
    /// each with the viewer's own grant, and the total. The access predicate
    /// is part of the statement (indexed by owner and by grant).
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
        match (&f.viewer.user, f.viewer.admin) {
            (_, true) => {}
            (Some(user), false) => add(
                " AND (x.owner IS NULL OR x.owner = ? OR x.team_access IS NOT NULL OR EXISTS \
                 (SELECT 1 FROM credential_grants g2 WHERE g2.credential_id = x.id AND g2.user_id = ?))",
                Some(user.clone()),
            ),
            (None, false) => add(" AND (x.owner IS NULL OR x.team_access IS NOT NULL)", None),
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
        let mut count = sqlx::query(&count_sql);
        for b in &binds {
            count = count.bind(b);
        }
        let total: i64 = count.fetch_one(&self.pool).await?.try_get(0)?;
        // The page's ids come from the index alone; then 50 rows by key.
        let n = binds.len();
        let page_sql = format!(
            "SELECT {LIST_COLUMNS}, g.access AS my_grant FROM credentials c \
             LEFT JOIN credential_grants g ON g.credential_id = c.id AND g.user_id = ${} \
             WHERE c.id IN (SELECT x.id FROM credentials x WHERE {filter} \
               ORDER BY x.created_at DESC, x.id DESC LIMIT ${} OFFSET ${}) \
             ORDER BY c.created_at DESC, c.id DESC",
            n + 1,
            n + 2,
            n + 3
        );
        let mut page = sqlx::query_as(&page_sql);
        for b in &binds {
            page = page.bind(b);
        }
        let rows: Vec<Listed> = page
            .bind(f.viewer.user.clone().unwrap_or_default())
            .bind(f.per_page)
            .bind((f.page - 1) * f.per_page)
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

    /// Renames and/or replaces the fields of a credential; returns the new
    /// row. New secrets are written only if nobody wrote secrets since they
    /// were read and no refresh holds the credential's lease (`Conflict`).
    pub async fn update_credential(
        &self,
        org_id: &str,
        id: &str,
        name: Option<&str>,
        secrets: Option<&SecretWrite>,
        event: &AuditEvent,
    ) -> Result<CredentialRow, StoreError> {
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
             updated_at = $8 WHERE org_id = $1 AND id = $2 \
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
        audit::insert(&mut tx, event, t).await?;
        let raw: Raw = sqlx::query_as(&format!(
            "SELECT {READ_COLUMNS} FROM credentials WHERE org_id = $1 AND id = $2"
        ))
        .bind(org_id)
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        CredentialRow::try_from(raw)
    }

    /// Re-seals one credential's secrets under a new data key (rotation),
    /// only if its ciphertext is still the one that was read. The content is
    /// unchanged, so `secret_version` stays: a refresh in flight still wins.
    pub async fn reseal_credential(
        &self,
        org_id: &str,
        id: &str,
        old_ct: &str,
        new_ct: &str,
        key_version: i64,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        check_key(&mut tx, self.dialect, org_id, key_version).await?;
        let done = sqlx::query(
            "UPDATE credentials SET secret_ct = $1, key_version = $2 WHERE org_id = $3 AND id = $4 AND secret_ct = $5",
        )
        .bind(new_ct)
        .bind(key_version)
        .bind(org_id)
        .bind(id)
        .bind(old_ct)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Credentials of an organization sealed under a key older than `version`.
    pub async fn credentials_below_key(
        &self,
        org_id: &str,
        version: i64,
        limit: i64,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let rows: Vec<Raw> = sqlx::query_as(&format!(
            "SELECT {READ_COLUMNS} FROM credentials WHERE org_id = $1 AND key_version < $2 ORDER BY id LIMIT $3"
        ))
        .bind(org_id)
        .bind(version)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        typed(rows)
    }

    /// Deletes credentials by id, auditing each; returns the deleted rows.
    pub async fn delete_credentials(
        &self,
        org_id: &str,
        ids: &[String],
        actor: &str,
    ) -> Result<Vec<CredentialRow>, StoreError> {
        let mut tx = self.begin_write().await?;
        let t = self.now();
        let mut deleted = Vec::new();
        for id in ids {
            let raw: Option<Raw> = sqlx::query_as(&format!(
                "DELETE FROM credentials WHERE org_id = $1 AND id = $2 RETURNING {READ_COLUMNS}"
            ))
            .bind(org_id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(raw) = raw {
                let row = CredentialRow::try_from(raw)?;
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
    }

    /// Records a use (resolve): `last_used_at` and an audit event, atomically.
    /// On Postgres that is one statement (one round trip); SQLite, whose
    /// CTEs cannot update, uses a transaction.
    pub async fn record_use(
        &self,
        org_id: &str,
        id: &str,
        event: &AuditEvent,
        usage: &Usage,
    ) -> Result<(), StoreError> {
        const INSERT: &str = "INSERT INTO audit_events \
            (org_id, credential_id, action, outcome, actor, detail, at, workflow_id, run_id) \
            VALUES ($1, $2, $4, $5, $6, $7, $3, $8, $9)";
        const PG: &str = "WITH used AS (UPDATE credentials SET last_used_at = $3 WHERE org_id = $1 AND id = $2) \
            INSERT INTO audit_events (org_id, credential_id, action, outcome, actor, detail, at, workflow_id, run_id) \
            VALUES ($1, $2, $4, $5, $6, $7, $3, $8, $9)";
        let t = self.now();
        let detail = event.detail.as_ref().map(|d| d.to_string());
        let statement = |sql| {
            sqlx::query(sql)
                .bind(org_id)
                .bind(id)
                .bind(t)
                .bind(event.action)
                .bind(event.outcome)
                .bind(&event.actor)
                .bind(detail.clone())
                .bind(usage.workflow_id.as_deref())
                .bind(usage.run_id.as_deref())
        };
        if self.dialect == super::Dialect::Postgres {
            statement(PG).execute(&self.pool).await?;
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        sqlx::query("UPDATE credentials SET last_used_at = $3 WHERE org_id = $1 AND id = $2")
            .bind(org_id)
            .bind(id)
            .bind(t)
            .execute(&mut *tx)
            .await?;
        statement(INSERT).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records the outcome of a connection test. The status moves as
    /// [`CredentialStatus::after_test`] says, computed in the statement so a
    /// concurrent `needs_reauth` verdict is never overwritten.
    pub async fn record_test(
        &self,
        org_id: &str,
        id: &str,
        passed: bool,
        last_error: Option<&super::LastError>,
    ) -> Result<CredentialStatus, StoreError> {
        let mut tx = self.begin_write().await?;
        let t = self.now();
        let (on_pass, on_fail) = (CredentialStatus::Active, CredentialStatus::Error);
        let row = sqlx::query(
            "UPDATE credentials SET \
             status = CASE WHEN status = 'needs_reauth' THEN status WHEN $3 = 1 THEN $4 ELSE $5 END, \
             last_error = CASE WHEN status = 'needs_reauth' THEN last_error ELSE $6 END, \
             last_tested_at = $7, updated_at = $7 WHERE org_id = $1 AND id = $2 RETURNING status",
        )
        .bind(org_id)
        .bind(id)
        .bind(i64::from(passed))
        .bind(on_pass.as_str())
        .bind(on_fail.as_str())
        .bind(last_error.map(|e| serde_json::to_string(e).expect("serializes")))
        .bind(t)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        tx.commit().await?;
        let status: String = row.try_get(0)?;
        CredentialStatus::parse(&status).ok_or(StoreError::Corrupt {
            id: id.to_owned(),
            column: "status",
        })
    }
}
