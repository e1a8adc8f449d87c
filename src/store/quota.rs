//! The per-provider credential limit. Each organization has a counter row
//! per provider (`credential_counts`); adding a credential raises it in the
//! same statement that checks the limit, so counts are exact on any replica
//! without locking the whole organization. Deleting lowers it.

use super::StoreError;

use crate::ids::OrgId;

/// Serializes writers of one organization: a no-op update that takes the
/// organization row's lock (Postgres) inside an immediate transaction (SQLite).
pub(crate) async fn lock_org(conn: &mut sqlx::AnyConnection, org_id: &OrgId) -> Result<(), StoreError> {
    let done = sqlx::query("UPDATE organizations SET write_seq = write_seq + 1 WHERE id = $1 AND deleted_at IS NULL")
        .bind(org_id)
        .execute(&mut *conn)
        .await?;
    if done.rows_affected() == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Counts one more credential of `provider`, or fails with
/// `QuotaExceeded` when that would pass the limit (the organization's
/// override, else `default_limit`). The counter row stays locked until the
/// transaction ends, so concurrent adds are counted one after another.
pub(crate) async fn reserve(
    conn: &mut sqlx::AnyConnection,
    org_id: &OrgId,
    provider: &str,
    default_limit: i64,
) -> Result<(), StoreError> {
    let limit = limit(conn, org_id, provider, default_limit).await?;
    if limit < 1 {
        let count = count(conn, org_id, provider).await?;
        return Err(StoreError::QuotaExceeded { limit, count });
    }
    let counted = sqlx::query(
        "INSERT INTO credential_counts (org_id, provider, count) VALUES ($1, $2, 1) \
         ON CONFLICT (org_id, provider) DO UPDATE SET count = credential_counts.count + 1 \
         WHERE credential_counts.count < $3 RETURNING count",
    )
    .bind(org_id)
    .bind(provider)
    .bind(limit)
    .fetch_optional(&mut *conn)
    .await?;
    match counted {
        Some(_) => Ok(()),
        None => Err(StoreError::QuotaExceeded {
            limit,
            count: count(conn, org_id, provider).await?,
        }),
    }
}

/// How many credentials of `provider` the organization's counter holds.
async fn count(conn: &mut sqlx::AnyConnection, org_id: &OrgId, provider: &str) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count FROM credential_counts WHERE org_id = $1 AND provider = $2")
            .bind(org_id)
            .bind(provider)
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or(0),
    )
}

/// Counts up to `wanted` more credentials of `provider` at once (a group of
/// creates): returns how many fit under the limit, the limit, and the count
/// after them. The
/// counter row is locked from here until the transaction ends.
pub(crate) async fn reserve_many(
    conn: &mut sqlx::AnyConnection,
    org_id: &OrgId,
    provider: &str,
    default_limit: i64,
    wanted: i64,
) -> Result<(i64, i64, i64), StoreError> {
    let limit = limit(conn, org_id, provider, default_limit).await?;
    // The counter row, created at zero if need be, locked by the no-op
    // update (on SQLite the immediate transaction holds the file).
    let count: i64 = sqlx::query_scalar(
        "INSERT INTO credential_counts (org_id, provider, count) VALUES ($1, $2, 0) \
         ON CONFLICT (org_id, provider) DO UPDATE SET count = credential_counts.count RETURNING count",
    )
    .bind(org_id)
    .bind(provider)
    .fetch_one(&mut *conn)
    .await?;
    let fit = wanted.min(limit - count).max(0);
    if fit > 0 {
        sqlx::query("UPDATE credential_counts SET count = count + $3 WHERE org_id = $1 AND provider = $2")
            .bind(org_id)
            .bind(provider)
            .bind(fit)
            .execute(&mut *conn)
            .await?;
    }
    Ok((fit, limit, count + fit))
}

/// The organization's limit for `provider`: its override, else `default_limit`.
async fn limit(
    conn: &mut sqlx::AnyConnection,
    org_id: &OrgId,
    provider: &str,
    default_limit: i64,
) -> Result<i64, StoreError> {
    Ok(
        match sqlx::query_scalar("SELECT max_count FROM org_limits WHERE org_id = $1 AND provider = $2")
            .bind(org_id)
            .bind(provider)
            .fetch_optional(&mut *conn)
            .await?
        {
            Some(max) => max,
            None => default_limit,
        },
    )
}

/// Counts one credential of `provider` fewer (it was deleted).
pub(crate) async fn release(conn: &mut sqlx::AnyConnection, org_id: &OrgId, provider: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE credential_counts SET count = count - 1 WHERE org_id = $1 AND provider = $2 AND count > 0")
        .bind(org_id)
        .bind(provider)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
