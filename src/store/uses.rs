//! Writing many uses (resolves) in one transaction: the group commit behind
//! `crate::group_commit::UseLog`. Each use adds its audit event and sets
//! its credential's `last_used_at` (to the minute); all of a batch commit
//! together or not at all.

use super::audit::{self, AuditEvent};
use super::credentials::Usage;
use super::{Store, StoreError};

/// One use to record.
#[derive(Debug, Clone)]
pub struct UseRecord {
    /// The audit event (its `credential_id` is set).
    pub event: AuditEvent,
    pub usage: Usage,
}

/// Uses per statement.
const CHUNK: usize = 200;

/// A credential's `last_used_at` is kept to this many seconds: rewritten
/// only once it is this old (the audit log has every use, to the second),
/// so a credential resolved all the time is not rewritten by every batch.
pub const LAST_USED_EVERY_SECS: i64 = 60;

impl Store {
    /// Records `uses` durably, in one transaction.
    pub async fn record_uses(&self, uses: &[UseRecord]) -> Result<(), StoreError> {
        if uses.is_empty() {
            return Ok(());
        }
        let t = self.now();
        let mut tx = self.begin_write().await?;
        for chunk in uses.chunks(CHUNK) {
            let mut ids: Vec<&str> = chunk.iter().filter_map(|u| u.event.credential_id.as_deref()).collect();
            ids.sort_unstable();
            ids.dedup();
            let marks: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 3)).collect();
            let update = format!(
                "UPDATE credentials SET last_used_at = $1 WHERE id IN ({}) AND (last_used_at IS NULL OR last_used_at <= $2)",
                marks.join(", ")
            );
            let mut query = sqlx::query(&update).bind(t).bind(t - LAST_USED_EVERY_SECS);
            for id in &ids {
                query = query.bind(*id);
            }
            query.execute(&mut *tx).await?;

            let events: Vec<_> = chunk.iter().map(|u| (&u.event, Some(&u.usage))).collect();
            audit::insert_many(&mut tx, &events, t).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
