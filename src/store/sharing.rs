//! Who may use a credential beside its owner: the team's level and named
//! users' grants; a user's removal; and usage by workflow.

use serde_json::{json, Value};
use sqlx::Any;

use super::audit::{self, AuditEvent};
use super::quota::lock_org;
use super::{Store, StoreError};
use crate::ids::{CredentialId, OrgId, UserId};
use crate::model::Access;

/// Uses of one credential, overall and by workflow (most recent first).
#[derive(Debug, Clone, Default)]
pub struct UsageSummary {
    pub uses_total: i64,
    pub last_used_at: Option<i64>,
    /// (workflow id, uses, last use).
    pub workflows: Vec<(String, i64, i64)>,
}

/// What `remove_user` did.
#[derive(Debug, Clone, Default)]
pub struct UserRemoval {
    pub transferred: Vec<CredentialId>,
    pub grants_removed: u64,
    pub keys_revoked: u64,
    /// Connections they had started, ended before their callback.
    pub flows_ended: u64,
}

pub(super) fn access(id: &str, raw: &str) -> Result<Access, StoreError> {
    Access::parse(raw).ok_or(StoreError::Corrupt {
        id: id.to_owned(),
        column: "access",
    })
}

/// A grants column, `[[user_id, access], …]` as a JSON text (`None`: no
/// grant), as (user, level) pairs; each level is read by [`access`] where
/// it is used.
pub(super) fn grant_pairs(id: &str, text: Option<&str>) -> Result<Vec<(UserId, String)>, StoreError> {
    let Some(text) = text else { return Ok(Vec::new()) };
    let pairs: Vec<(String, String)> = serde_json::from_str(text).map_err(|_| StoreError::Corrupt {
        id: id.to_owned(),
        column: "access",
    })?;
    Ok(pairs
        .into_iter()
        .map(|(user, level)| (UserId::from_store(user), level))
        .collect())
}

/// A credential's sharing as audit events record it (before and after).
pub fn sharing_detail(team: Option<Access>, users: &[(UserId, Access)]) -> Value {
    json!({
        "team": team.map(Access::as_str),
        "users": users.iter().map(|(u, a)| json!({"user_id": u, "access": a.as_str()})).collect::<Vec<_>>(),
    })
}

/// A user grant's columns.
#[derive(sqlx::FromRow)]
struct GrantColumns {
    user_id: UserId,
    access: String,
}

/// A grant of the removed user, with its credential's team access.
#[derive(sqlx::FromRow)]
struct GrantedColumns {
    credential_id: CredentialId,
    team_access: Option<String>,
}

/// A credential's uses: how many, and the last.
#[derive(sqlx::FromRow)]
struct UsesColumns {
    uses: i64,
    last_at: Option<i64>,
}

/// One workflow's uses of a credential.
#[derive(sqlx::FromRow)]
struct WorkflowColumns {
    workflow_id: String,
    uses: i64,
    last_at: i64,
}

/// Every user grant of one credential, by user id, read on `conn`.
async fn grants_on<'c, E: sqlx::Executor<'c, Database = Any>>(
    conn: E,
    credential_id: &CredentialId,
) -> Result<Vec<(UserId, Access)>, StoreError> {
    let rows: Vec<GrantColumns> =
        sqlx::query_as("SELECT user_id, access FROM credential_grants WHERE credential_id = $1 ORDER BY user_id")
            .bind(credential_id)
            .fetch_all(conn)
            .await?;
    rows.into_iter()
        .map(|r| Ok((r.user_id, access(credential_id, &r.access)?)))
        .collect()
}

impl Store {
    /// Every user grant of one credential, by user id.
    pub async fn grants(&self, credential_id: &CredentialId) -> Result<Vec<(UserId, Access)>, StoreError> {
        self.timed(async move { grants_on(&self.pool, credential_id).await })
            .await
    }

    /// Replaces a credential's sharing (team level and user grants), audited.
    pub async fn set_sharing(
        &self,
        org_id: &OrgId,
        id: &CredentialId,
        team: Option<Access>,
        users: &[(UserId, Access)],
        event: &AuditEvent,
    ) -> Result<(), StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            let t = self.now();
            let done =
                sqlx::query("UPDATE credentials SET team_access = $3, updated_at = $4 WHERE org_id = $1 AND id = $2")
                    .bind(org_id)
                    .bind(id)
                    .bind(team.map(Access::as_str))
                    .bind(t)
                    .execute(&mut *tx)
                    .await?;
            if done.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            sqlx::query("DELETE FROM credential_grants WHERE credential_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            for (user, level) in users {
                sqlx::query(
                    "INSERT INTO credential_grants (credential_id, org_id, user_id, access, created_at) \
                 SELECT $1, $2, $3, $4, created_at FROM credentials WHERE id = $1",
                )
                .bind(id)
                .bind(org_id)
                .bind(user)
                .bind(level.as_str())
                .execute(&mut *tx)
                .await?;
            }
            audit::insert(&mut tx, event, t).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Hands `user`'s credentials to `to` (`None`: the organization),
    /// removes the user's grants and revokes their keys, in one transaction.
    /// Audited: each transfer, each removed grant (a sharing change of its
    /// credential, before and after), each revoked key, and the removal.
    pub async fn remove_user(
        &self,
        org_id: &OrgId,
        user: &UserId,
        to: Option<&UserId>,
        actor: &str,
    ) -> Result<UserRemoval, StoreError> {
        self.timed(async move {
            let mut tx = self.begin_write().await?;
            // Under the organization's write lock, as a grant is stored: a
            // connect of theirs either lands first (and is handed on below) or
            // finds its flow ended.
            lock_org(&mut tx, org_id).await?;
            let t = self.now();
            let ids: Vec<CredentialId> = sqlx::query_scalar(
                "UPDATE credentials SET owner = $3, updated_at = $4 WHERE org_id = $1 AND owner = $2 RETURNING id",
            )
            .bind(org_id)
            .bind(user)
            .bind(to)
            .bind(t)
            .fetch_all(&mut *tx)
            .await?;
            let mut removal = UserRemoval::default();
            for id in ids {
                let event = AuditEvent::success(org_id, &id, "credential.transfer", actor)
                    .with_detail(json!({"from": user, "to": to}));
                audit::insert(&mut tx, &event, t).await?;
                removal.transferred.push(id);
            }
            let granted: Vec<GrantedColumns> = sqlx::query_as(
                "SELECT g.credential_id, c.team_access FROM credential_grants g \
             JOIN credentials c ON c.id = g.credential_id \
             WHERE g.org_id = $1 AND g.user_id = $2 ORDER BY g.credential_id",
            )
            .bind(org_id)
            .bind(user)
            .fetch_all(&mut *tx)
            .await?;
            for GrantedColumns {
                credential_id: id,
                team_access,
            } in granted
            {
                let team = match team_access {
                    Some(raw) => Some(access(&id, &raw)?),
                    None => None,
                };
                let before = grants_on(&mut *tx, &id).await?;
                let after: Vec<_> = before.iter().filter(|(u, _)| u != user).cloned().collect();
                let event = AuditEvent::success(org_id, &id, "credential.share", actor).with_detail(json!({
                    "before": sharing_detail(team, &before),
                    "after": sharing_detail(team, &after),
                    "removed_user": user,
                }));
                audit::insert(&mut tx, &event, t).await?;
            }
            removal.grants_removed = sqlx::query("DELETE FROM credential_grants WHERE org_id = $1 AND user_id = $2")
                .bind(org_id)
                .bind(user)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            // Their open hosted-page sessions end with them, and so do the
            // connections they started: a callback that comes later stores
            // nothing, and says why.
            sqlx::query("DELETE FROM page_sessions WHERE org_id = $1 AND user_id = $2")
                .bind(org_id)
                .bind(user)
                .execute(&mut *tx)
                .await?;
            removal.flows_ended = sqlx::query(
                "UPDATE oauth_states SET ended = 'user_removed' WHERE org_id = $1 AND user_id = $2 AND ended IS NULL",
            )
            .bind(org_id)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // So do the sessions their keys opened (for anyone).
            sqlx::query(
                "DELETE FROM page_sessions WHERE api_key_id IN \
             (SELECT id FROM api_keys WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL)",
            )
            .bind(org_id)
            .bind(user)
            .execute(&mut *tx)
            .await?;
            let revoked: Vec<String> = sqlx::query_scalar(
                "UPDATE api_keys SET revoked_at = $3 WHERE org_id = $1 AND user_id = $2 AND revoked_at IS NULL \
             RETURNING id",
            )
            .bind(org_id)
            .bind(user)
            .bind(t)
            .fetch_all(&mut *tx)
            .await?;
            let mut keys = Vec::with_capacity(revoked.len());
            for key_id in revoked {
                let event = AuditEvent::for_org(org_id, "api_key.revoke", actor)
                    .with_detail(json!({"key_id": key_id, "user_id": user}));
                audit::insert(&mut tx, &event, t).await?;
                keys.push(key_id);
            }
            removal.keys_revoked = keys.len() as u64;
            let summary = AuditEvent::for_org(org_id, "user.remove", actor).with_detail(json!({
                "user_id": user,
                "transfer_to": to,
                "transferred": removal.transferred,
                "grants_removed": removal.grants_removed,
                "keys_revoked": keys,
                "flows_ended": removal.flows_ended,
            }));
            audit::insert(&mut tx, &summary, t).await?;
            tx.commit().await?;
            Ok(removal)
        })
        .await
    }

    /// Uses of a credential (resolves and gateway calls): total, last, and
    /// per workflow.
    pub async fn usage(&self, org_id: &OrgId, id: &CredentialId) -> Result<UsageSummary, StoreError> {
        self.timed(async move {
            let total: UsesColumns = sqlx::query_as(
            "SELECT COUNT(*) AS uses, MAX(at) AS last_at FROM audit_events WHERE credential_id = $1 AND action IN ('credential.resolve', 'credential.proxy') \
             AND org_id = $2",
        )
        .bind(id)
        .bind(org_id)
        .fetch_one(&self.pool)
        .await?;
            let rows: Vec<WorkflowColumns> = sqlx::query_as(
                "SELECT workflow_id, COUNT(*) AS uses, MAX(at) AS last_at FROM audit_events WHERE credential_id = $1 \
             AND action IN ('credential.resolve', 'credential.proxy') AND org_id = $2 AND workflow_id IS NOT NULL \
             GROUP BY workflow_id ORDER BY MAX(at) DESC, workflow_id LIMIT 500",
            )
            .bind(id)
            .bind(org_id)
            .fetch_all(&self.pool)
            .await?;
            Ok(UsageSummary {
                uses_total: total.uses,
                last_used_at: total.last_at,
                workflows: rows.into_iter().map(|r| (r.workflow_id, r.uses, r.last_at)).collect(),
            })
        })
        .await
    }
}
