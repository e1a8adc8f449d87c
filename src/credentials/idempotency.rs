//! Creates named by an `Idempotency-Key`: the first create with a key keeps
//! the key (24 hours per organization) with a fingerprint of its request;
//! a retry with the same key and request answers that first create again
//! and makes nothing more, even when the first answer was lost or was a
//! 503 whose commit landed; the same key with another request is refused.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::write::{create_with, idempotency_subject as subject, NewCredentialInput};
use crate::context::Context;
use crate::crypto::SecretMap;
use crate::error::Error;
use crate::model::Principal;
use crate::store::{CredentialRow, KeptRequest};

/// Longest idempotency key.
pub const MAX_KEY_LEN: usize = 255;
/// The header (and the field named in its errors).
const FIELD: &str = "Idempotency-Key";

/// A create's outcome: the credential, and whether it was made before.
#[derive(Debug)]
pub struct Created {
    pub row: CredentialRow,
    /// Answered from an earlier create with the same key.
    pub replayed: bool,
}

/// The request's fingerprint: who asked, and everything they sent, in one
/// canonical order (a retry that sends its fields in another order is the
/// same request).
fn fingerprint(who: &Principal, input: &NewCredentialInput) -> SecretMap {
    let fields: std::collections::BTreeMap<&String, &Value> = input.fields.iter().collect();
    let mut public = input.public.clone();
    public.sort();
    let canonical = json!({
        "actor": who.actor(),
        "name": input.name,
        "provider": input.provider,
        "auth_type": input.auth_type,
        "fields": fields,
        "public": public,
    });
    let digest = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
    let mut map = SecretMap::default();
    map.insert("sha256", SecretString::from(digest));
    map
}

/// Creates a credential once per `key` (within 24 hours).
pub async fn create_once(
    ctx: &Context,
    who: &Principal,
    input: NewCredentialInput,
    key: &str,
) -> Result<Created, Error> {
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::field(
            FIELD,
            format!("must be 1 to {MAX_KEY_LEN} visible ASCII characters"),
        ));
    }
    let request = fingerprint(who, &input);
    // A create that took the key meanwhile is read on the next turn.
    for _ in 0..3 {
        if let Some(kept) = ctx.store.kept_request(&who.org_id, key).await? {
            return replay(ctx, who, key, &kept, &request).await;
        }
        match create_with(ctx, who, input.clone(), Some((key, &request))).await {
            Ok(row) => return Ok(Created { row, replayed: false }),
            Err(Error::Conflict("idempotency_key_taken", _)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Error::Conflict(
        "conflict",
        "requests with this Idempotency-Key keep racing; try again".into(),
    ))
}

async fn replay(
    ctx: &Context,
    who: &Principal,
    key: &str,
    kept: &KeptRequest,
    request: &SecretMap,
) -> Result<Created, Error> {
    let same = match ctx
        .vault
        .open(&who.org_id, &subject(key), &kept.request_ct, kept.key_version)
        .await
    {
        Ok(mut groups) => {
            let kept = groups.remove("request").unwrap_or_default();
            let digest = |m: &SecretMap| m.get("sha256").map(|d| d.expose_secret().to_owned());
            digest(&kept).is_some() && digest(&kept) == digest(request)
        }
        // Sealed under a data key that `keys rotate-org` has since retired:
        // it cannot be compared, so it is not taken for the same request.
        Err(e) => {
            tracing::info!(error = %e, "an idempotency key's request no longer opens");
            false
        }
    };
    if !same {
        return Err(Error::field(
            FIELD,
            "was used in the last 24 hours with another request; use a new key for a new request",
        ));
    }
    match super::get_unchecked(ctx, &who.org_id, &kept.credential_id).await {
        Ok(row) => Ok(Created { row, replayed: true }),
        Err(Error::NotFound) => Err(Error::Conflict(
            "conflict",
            "the credential this Idempotency-Key created has been deleted since".into(),
        )),
        Err(e) => Err(e),
    }
}
