//! Expiry notifications: each credential whose grant or secret ends soon
//! (and each organization's own OAuth app whose client secret does) is
//! notified once per threshold (14, 3 and 1 days before; 0: it ended) and
//! per end, whichever replica sweeps first: the row records the end and
//! threshold notified, changed only where they still differ, in the same
//! transaction as the notification.

use serde_json::json;

use crate::ids::{CredentialId, OrgId};

use super::outbox::{self, Notification};
use super::{Dialect, Store, StoreError};

/// The earlier of the two ends (either may be unknown).
const ENDS: &str = "CASE WHEN refresh_expires_at IS NULL THEN secret_expires_at \
    WHEN secret_expires_at IS NULL THEN refresh_expires_at \
    WHEN refresh_expires_at < secret_expires_at THEN refresh_expires_at ELSE secret_expires_at END";

/// Credentials notified per threshold per sweep at most (the next sweep
/// goes on).
const PER_SWEEP: i64 = 500;

#[derive(sqlx::FromRow)]
struct Warned {
    org_id: OrgId,
    id: CredentialId,
    provider: String,
    ends_at: i64,
}

#[derive(sqlx::FromRow)]
struct WarnedApp {
    org_id: OrgId,
    provider: String,
    client_id: String,
    ends_at: i64,
}

impl Store {
    /// Writes the expiry notifications due now for `thresholds` (days,
    /// ascending; 0 means the end has passed): a credential gets the
    /// smallest threshold it has reached and was not notified of for its
    /// current end. Returns how many were written.
    pub async fn notify_expiring(&self, thresholds: &[i64]) -> Result<usize, StoreError> {
        self.timed(async move {
            let lock = match self.dialect {
                Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
                Dialect::Sqlite => "",
            };
            let t = self.now();
            let not_yet =
                format!("(expiry_warned_end IS NULL OR expiry_warned_end <> ({ENDS}) OR expiry_warned_days > $1)");
            let mut tx = self.begin_write().await?;
            let mut written = 0;
            for &days in thresholds {
                let rows: Vec<Warned> = sqlx::query_as(&format!(
                    "UPDATE credentials SET expiry_warned_end = ({ENDS}), expiry_warned_days = $1 \
                     WHERE id IN (SELECT id FROM credentials \
                       WHERE (refresh_expires_at <= $2 OR secret_expires_at <= $2) \
                       AND status <> 'needs_reauth' AND {not_yet} \
                       AND NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = credentials.org_id \
                         AND o.deleted_at IS NOT NULL) \
                       LIMIT $3 {lock}) \
                     AND {not_yet} \
                     RETURNING org_id, id, provider, expiry_warned_end AS ends_at"
                ))
                .bind(days)
                .bind(t + days * 86_400)
                .bind(PER_SWEEP)
                .fetch_all(&mut *tx)
                .await?;
                let notes: Vec<Notification> = rows
                    .iter()
                    .map(|r| {
                        let at = chrono::DateTime::from_timestamp(r.ends_at, 0).unwrap_or_default();
                        if days == 0 {
                            Notification::new(
                                "credential.needs_reauth",
                                &r.org_id,
                                &r.id,
                                &r.provider,
                                json!({"reason": "ended", "ended_at": at}),
                            )
                        } else {
                            Notification::new(
                                "credential.expiring",
                                &r.org_id,
                                &r.id,
                                &r.provider,
                                json!({"expires_at": at, "days": days}),
                            )
                        }
                    })
                    .collect();
                let refs: Vec<&Notification> = notes.iter().collect();
                outbox::insert_many(&mut tx, &refs, t).await?;
                written += notes.len();
            }
            for &days in thresholds.iter().filter(|d| **d > 0) {
                let apps: Vec<WarnedApp> = sqlx::query_as(
                    "UPDATE oauth_apps SET expiry_warned_end = secret_expires_at, expiry_warned_days = $1 \
                     WHERE secret_expires_at <= $2 AND secret_expires_at > $3 \
                     AND (expiry_warned_end IS NULL OR expiry_warned_end <> secret_expires_at \
                       OR expiry_warned_days > $1) \
                     AND NOT EXISTS (SELECT 1 FROM organizations o WHERE o.id = oauth_apps.org_id \
                       AND o.deleted_at IS NOT NULL) \
                     RETURNING org_id, provider, client_id, secret_expires_at AS ends_at",
                )
                .bind(days)
                .bind(t + days * 86_400)
                .bind(t)
                .fetch_all(&mut *tx)
                .await?;
                let notes: Vec<Notification> = apps
                    .iter()
                    .map(|a| {
                        let at = chrono::DateTime::from_timestamp(a.ends_at, 0).unwrap_or_default();
                        Notification::for_org(
                            "oauth_app.secret_expiring",
                            &a.org_id,
                            &a.provider,
                            json!({"client_id": a.client_id, "expires_at": at, "days": days}),
                        )
                    })
                    .collect();
                let refs: Vec<&Notification> = notes.iter().collect();
                outbox::insert_many(&mut tx, &refs, t).await?;
                written += notes.len();
            }
            tx.commit().await?;
            Ok(written)
        })
        .await
    }
}
