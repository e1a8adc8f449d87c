//! The replicas serving the gateway (`gateway_replicas`): each marks itself
//! seen by a heartbeat and counts the live ones, among which the cap on a
//! credential's calls in flight is shared.

use super::{Store, StoreError};

impl Store {
    /// Marks replica `id` seen now, forgets replicas not seen for
    /// `expires_secs`, and returns how many are live, `id` included.
    pub async fn replica_seen(&self, id: &str, expires_secs: i64) -> Result<usize, StoreError> {
        self.timed(async move {
            let now = self.now();
            let mut tx = self.begin_write().await?;
            sqlx::query(
                "INSERT INTO gateway_replicas (id, seen_at) VALUES ($1, $2) \
                 ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at",
            )
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM gateway_replicas WHERE seen_at < $1")
                .bind(now - expires_secs)
                .execute(&mut *tx)
                .await?;
            let live: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM gateway_replicas")
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(usize::try_from(live).unwrap_or(1).max(1))
        })
        .await
    }

    /// Replica `id` stops: the others take its share at their next
    /// heartbeat.
    pub async fn replica_gone(&self, id: &str) -> Result<(), StoreError> {
        self.timed(async move {
            self.execute_write(sqlx::query("DELETE FROM gateway_replicas WHERE id = $1").bind(id))
                .await?;
            Ok(())
        })
        .await
    }
}
