//! The one access check: which level (`use` < `view` < `manage`) a principal
//! has on a credential, and loading a credential only for those who may do
//! what they ask. A credential they may not even use does not exist for them
//! (`NotFound`); one they may use but not at the level asked is `Forbidden`.
//! Every denial is audited as `access.denied`: one row per key, credential
//! and minute, its `count` kept exact by one upsert per denial, so a hostile
//! key cannot grow the table. A 403 the store cannot record now (an
//! outage, a lock not granted in time) is not answered as a denial: the
//! request is refused as the store's (503), and its retry is audited. A
//! credential hidden from its caller stays a 404 even then (a 503 would
//! tell that it exists); that denial is logged, not audited.

use crate::context::Context;
use crate::error::Error;
use crate::ids::CredentialId;
use crate::model::{Access, Principal, Role};
use crate::store::{AuditEvent, CredentialRead, CredentialRow, Found, ReadAt, StoreError};

/// The level `who` has, given the row and `who`'s own grant on it.
pub fn level_with(who: &Principal, row: &CredentialRow, grant: Option<Access>) -> Option<Access> {
    if who.role == Role::Admin || row.owner.is_none() {
        return Some(Access::Manage);
    }
    if who.user_id.is_some() && who.user_id == row.owner {
        return Some(Access::Manage);
    }
    row.team_access.max(grant)
}

/// Loads credential `id` for `who`, who needs `need`; returns it with the
/// level `who` has.
pub async fn authorize(
    ctx: &Context,
    who: &Principal,
    id: &CredentialId,
    need: Access,
) -> Result<(CredentialRow, Access), Error> {
    let (found, have) = read_and_decide(ctx, who, &reader(who, id), need).await?;
    Ok((found.row, have))
}

/// Loads credential `id` for `who`'s use. When this process has read it
/// for `who` before (`reuse`) and that read grants the use, the row comes
/// from there with what the read saw ([`ReadAt`]): the use must be
/// recorded under it, and is recorded only if the credential and `who`'s
/// grant are still as read (else its caller asks again, without `reuse`).
/// Otherwise the credential is read, and the read remembered.
pub async fn authorize_use(
    ctx: &Context,
    who: &Principal,
    id: &CredentialId,
    reuse: bool,
) -> Result<(CredentialRow, Option<ReadAt>), Error> {
    let read = reader(who, id);
    if reuse {
        if let Some(found) = ctx.recent_reads.get(&read) {
            // `use` is the lowest level: any level grants it. A read that
            // grants nothing is not trusted to deny: read anew below.
            if level_with(who, &found.row, found.grant).is_some() {
                let at = ReadAt {
                    row_version: found.row_version,
                    grant: read.user.clone().map(|user| (user, found.grant)),
                };
                return Ok((found.row, Some(at)));
            }
        }
    }
    ctx.recent_reads.forget(&read);
    let (found, _) = read_and_decide(ctx, who, &read, Access::Use).await?;
    ctx.recent_reads.remember(&read, found.clone());
    Ok((found.row, None))
}

/// What `who` reads to decide on credential `id`: the row and, unless an
/// admin (whose level does not depend on one), `who`'s own grant.
fn reader(who: &Principal, id: &CredentialId) -> CredentialRead {
    CredentialRead {
        org_id: who.org_id.clone(),
        id: id.to_owned(),
        user: who.user_id.clone().filter(|_| who.role != Role::Admin),
    }
}

/// Reads the credential and `who`'s grant, and decides: what the read
/// found, and `who`'s level, when it is at least `need`.
async fn read_and_decide(
    ctx: &Context,
    who: &Principal,
    read: &CredentialRead,
    need: Access,
) -> Result<(Found, Access), Error> {
    // A credential that does not exist has nothing to protect: not audited.
    // The row and the caller's own grant come in one read (one statement
    // with the reads of other requests waiting meanwhile).
    let Some(found) = ctx.reads.submit(read.clone()).await? else {
        return Err(Error::NotFound);
    };
    match level_with(who, &found.row, found.grant) {
        Some(have) if have >= need => Ok((found, have)),
        Some(_) => {
            record_denial(ctx, who, Some(&found.row.id), need.as_str()).await?;
            Err(Error::Forbidden)
        }
        None => {
            // Answered as if it did not exist, whatever the store says.
            let _ = record_denial(ctx, who, Some(&found.row.id), need.as_str())
                .await
                .inspect_err(|e| tracing::warn!(error = %e, "could not record a denied access"));
            Err(Error::NotFound)
        }
    }
}

/// Audits a denial of `who`; fails only when the store cannot record it
/// now (`StoreUnavailable`: the request is refused as the store's).
/// `credential_id` is the id as the caller named it (a path segment): it is
/// recorded only when it names a credential of `who`'s organization, so
/// made-up ids cannot add rows.
pub async fn deny(ctx: &Context, who: &Principal, credential_id: Option<&str>, needed: &str) -> Result<(), Error> {
    let existing = match credential_id.and_then(|id| CredentialId::parse(id).ok()) {
        Some(id) => match ctx.store.credential_exists(&who.org_id, &id).await {
            Ok(true) => Some(id),
            Ok(false) => None,
            Err(e) => return unrecorded(e),
        },
        None => None,
    };
    record_denial(ctx, who, existing.as_ref(), needed).await
}

/// A denial that could not be recorded: the store's outage is the
/// request's answer; anything else (the database refused the row) is
/// logged, and the denial answered.
fn unrecorded(e: StoreError) -> Result<(), Error> {
    match e {
        e @ (StoreError::Unavailable(_) | StoreError::GaveWay(_)) => Err(e.into()),
        e => {
            tracing::warn!(error = %e, "could not record a denied access");
            Ok(())
        }
    }
}

/// Audits a denial concerning `credential_id` (known to exist, or none):
/// one row per key, credential and minute, whose `count` one upsert raises,
/// so concurrent denials (on any replica) are all counted.
async fn record_denial(
    ctx: &Context,
    who: &Principal,
    credential_id: Option<&CredentialId>,
    needed: &str,
) -> Result<(), Error> {
    let minute = ctx.now() / 60;
    let coalesce_key = format!(
        "{}|{}|{minute}",
        who.key_id,
        credential_id.map_or("-", |id| id.as_str())
    );
    let event = AuditEvent {
        org_id: who.org_id.clone(),
        credential_id: credential_id.cloned(),
        action: "access.denied",
        outcome: "denied",
        actor: who.actor(),
        detail: Some(serde_json::json!({"role": who.role.as_str(), "needed": needed, "count": 1})),
    };
    ctx.store.audit_counted(&event, &coalesce_key).await.or_else(unrecorded)
}
