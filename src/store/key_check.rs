//! Within a write, the organization's current data key: a row sealed under
//! an older key must not be written once `keys rotate-org` has moved on.

use crate::ids::OrgId;

use super::{Dialect, StoreError};

/// Within a write: fails with `KeyRotated` unless `key_version` is the
/// organization's current data key. On Postgres the organization row is
/// share-locked until commit, so `keys rotate-org` (which updates it) waits
/// for writers in flight, and writers after it see the new key.
pub(crate) async fn check_key(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    org_id: &OrgId,
    key_version: i64,
) -> Result<(), StoreError> {
    let current = current_key(conn, dialect, org_id).await?.ok_or(StoreError::NotFound)?;
    if current != key_version {
        return Err(StoreError::KeyRotated);
    }
    Ok(())
}

/// The organization's current data key version (`None`: no such
/// organization), held (Postgres: a share lock) until the transaction ends.
pub(crate) async fn current_key(
    conn: &mut sqlx::AnyConnection,
    dialect: Dialect,
    org_id: &OrgId,
) -> Result<Option<i64>, StoreError> {
    let lock = match dialect {
        Dialect::Postgres => " FOR SHARE",
        Dialect::Sqlite => "",
    };
    Ok(sqlx::query_scalar(&format!(
        "SELECT key_version FROM organizations WHERE id = $1 AND deleted_at IS NULL{lock}"
    ))
    .bind(org_id)
    .fetch_optional(&mut *conn)
    .await?)
}
