//! The per-provider credential limit: writers that add a credential lock
//! the organization row first, so counts on any replica are exact.

use sqlx::Row;

use super::StoreError;

/// Serializes writers of one organization: a no-op update that takes the
/// organization row's lock (Postgres) inside an immediate transaction (SQLite).
pub(crate) async fn lock_org(conn: &mut sqlx::AnyConnection, org_id: &str) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE organizations SET write_seq = write_seq + 1 WHERE id = $1")
        .bind(org_id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Fails with `QuotaExceeded` when one more credential would pass the limit.
pub(crate) async fn check_quota(
    conn: &mut sqlx::AnyConnection,
    org_id: &str,
    provider: &str,
    default_limit: i64,
) -> Result<(), StoreError> {
    let limit: i64 = match sqlx::query("SELECT max_count FROM org_limits WHERE org_id = $1 AND provider = $2")
        .bind(org_id)
        .bind(provider)
        .fetch_optional(&mut *conn)
        .await?
    {
        Some(row) => row.try_get(0)?,
        None => default_limit,
    };
    let count: i64 = sqlx::query("SELECT COUNT(*) FROM credentials WHERE org_id = $1 AND provider = $2")
        .bind(org_id)
        .bind(provider)
        .fetch_one(&mut *conn)
        .await?
        .try_get(0)?;
    if count >= limit {
        return Err(StoreError::QuotaExceeded { limit });
    }
    Ok(())
}
