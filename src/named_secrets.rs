//! Secrets by name: per organization, write-only values under names like
//! `SMTP_PASSWORD`. Put (create or replace), list (metadata only), delete,
//! and resolve for the workflow engine — validate → seal → store → audit,
//! here, once. Values are sealed under the organization's data key, bound to
//! their name (see [`secret_subject`]); only `resolve` opens them, and it
//! records each use durably before returning any value.

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};

use crate::context::Context;
use crate::credentials::{retry_after_rotation, KEY_RETRIES};
use crate::crypto::SecretMap;
use crate::error::Error;
use crate::model::{Principal, MANAGE, READ, RESOLVE};
use crate::providers::FieldError;
use crate::store::{SecretMeta, SecretPut, StoreError};
pub use crate::vault::secret_subject;

/// Most named secrets one organization may hold.
pub const MAX_SECRETS: i64 = 1000;
/// Longest value, in UTF-8 bytes (64 KiB).
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Most names one resolve may ask for.
pub const MAX_RESOLVE: usize = 100;
/// Longest name.
pub const MAX_NAME_LEN: usize = 128;

/// The sealed payload's group and key.
const GROUP: &str = "secret";
const VALUE: &str = "value";

/// Whether a put created the secret or replaced its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Created,
    Replaced,
}

/// What a resolve found. `Debug` prints names only.
pub struct Resolved {
    /// Values by name.
    pub values: BTreeMap<String, SecretString>,
    /// The names asked for that do not exist, sorted.
    pub missing: Vec<String>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("values", &self.values.keys().collect::<Vec<_>>())
            .field("missing", &self.missing)
            .finish()
    }
}

/// Is `name` a valid secret name (`^[A-Z][A-Z0-9_]{0,127}$`)?
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes[0].is_ascii_uppercase()
        && bytes
            .iter()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
}

/// Checks a name, blaming `field`; never echoes the name (it may be a
/// value pasted in the wrong box).
pub fn check_name(field: &str, name: &str) -> Result<(), FieldError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "must be an upper-case letter followed by up to 127 upper-case letters, digits or underscores",
        ))
    }
}

fn check_value(value: &SecretString) -> Result<(), FieldError> {
    let len = value.expose_secret().len();
    if len == 0 {
        return Err(FieldError::new("value", "must not be empty"));
    }
    if len > MAX_VALUE_BYTES {
        return Err(FieldError::new(
            "value",
            "must be at most 64 KiB (65536 bytes of UTF-8)",
        ));
    }
    Ok(())
}

fn require(who: &Principal, roles: &[crate::model::Role]) -> Result<(), Error> {
    if roles.contains(&who.role) {
        Ok(())
    } else {
        Err(Error::Forbidden)
    }
}

/// Creates or replaces secret `name` of `who`'s organization (roles admin
/// and member); audited as `secret.put`, never with the value. Returns its
/// metadata. Past [`MAX_SECRETS`], a new name is a `quota_exceeded` conflict.
pub async fn put(
    ctx: &Context,
    who: &Principal,
    name: &str,
    value: &SecretString,
) -> Result<(Written, SecretMeta), Error> {
    require(who, MANAGE)?;
    let errors: Vec<FieldError> = [check_name("name", name), check_value(value)]
        .into_iter()
        .filter_map(Result::err)
        .collect();
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let org_id = &who.org_id;
    let actor = who.actor();
    let subject = secret_subject(org_id, name);
    let mut sealed = SecretMap::default();
    sealed.insert(VALUE, value.clone());
    for attempt in 0..KEY_RETRIES {
        let (value_ct, key_version) = ctx.vault.seal(org_id, &subject, &[(GROUP, &sealed)]).await?;
        let put = SecretPut {
            name,
            value_ct: &value_ct,
            key_version,
            actor: &actor,
            limit: MAX_SECRETS,
        };
        match ctx.store.put_named_secret(org_id, &put).await {
            Ok((created, meta)) => {
                let written = if created { Written::Created } else { Written::Replaced };
                return Ok((written, meta));
            }
            Err(e) if retry_after_rotation(&e, attempt) => continue,
            Err(StoreError::QuotaExceeded { limit, .. }) => {
                return Err(Error::Conflict(
                    "quota_exceeded",
                    format!("the organization already has {limit} named secrets, the most allowed"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::KeyRotated.into())
}

/// The organization's named secrets, by name: metadata only (every role).
pub async fn list(ctx: &Context, who: &Principal) -> Result<Vec<SecretMeta>, Error> {
    require(who, READ)?;
    Ok(ctx.store.named_secrets(&who.org_id, MAX_SECRETS).await?)
}

/// Deletes secret `name` (roles admin and member); audited as
/// `secret.delete`. `NotFound` when there is none.
pub async fn delete(ctx: &Context, who: &Principal, name: &str) -> Result<(), Error> {
    require(who, MANAGE)?;
    check_name("name", name).map_err(|e| Error::Validation(vec![e]))?;
    if ctx.store.delete_named_secret(&who.org_id, name, &who.actor()).await? {
        Ok(())
    } else {
        Err(Error::NotFound)
    }
}

/// Resolves named secrets for the workflow engine (role engine only): one
/// read, then each use recorded — `last_used_at` and one `secret.resolve`
/// event per name, in one transaction — before any value is returned.
/// `names` (1 to [`MAX_RESOLVE`], repeats ignored) are checked first.
pub async fn resolve(ctx: &Context, who: &Principal, names: &[String]) -> Result<Resolved, Error> {
    require(who, RESOLVE)?;
    if names.is_empty() || names.len() > MAX_RESOLVE {
        return Err(Error::field(
            "names",
            format!("must list from 1 to {MAX_RESOLVE} names"),
        ));
    }
    let errors: Vec<FieldError> = names
        .iter()
        .enumerate()
        .filter_map(|(i, name)| check_name(&format!("names[{i}]"), name).err())
        .collect();
    if !errors.is_empty() {
        return Err(Error::Validation(errors));
    }
    let mut wanted = names.to_vec();
    wanted.sort();
    wanted.dedup();
    let org_id = &who.org_id;
    let mut opened = BTreeMap::new();
    for row in ctx.store.sealed_secrets(org_id, &wanted).await? {
        let subject = secret_subject(org_id, &row.name);
        let mut groups = ctx.vault.open(org_id, &subject, &row.value_ct, row.key_version).await?;
        let value = groups
            .remove(GROUP)
            .and_then(|g| g.get(VALUE).cloned())
            .ok_or_else(|| Error::internal(anyhow::anyhow!("named secret {} has no value", row.name)))?;
        opened.insert(row.name, value);
    }
    let found: Vec<String> = opened.keys().cloned().collect();
    // A secret deleted since the read is not recorded: it is missing.
    let used = ctx.store.record_secret_uses(org_id, &found, &who.actor()).await?;
    let values: BTreeMap<String, SecretString> = opened.into_iter().filter(|(n, _)| used.contains(n)).collect();
    let missing = wanted.into_iter().filter(|n| !values.contains_key(n)).collect();
    Ok(Resolved { values, missing })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contracts_pattern() {
        let long = format!("A{}", "B".repeat(127));
        for good in ["A", "SMTP_PASSWORD", "X9_", long.as_str()] {
            assert!(valid_name(good), "{good}");
        }
        let too_long = format!("A{}", "B".repeat(128));
        for bad in ["", "a", "_A", "9A", "A-B", "AÄ", "A B", too_long.as_str()] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_resolve_result_prints_names_but_never_values() {
        let resolved = Resolved {
            values: [("API_TOKEN".to_owned(), SecretString::from("SENTINEL-v".to_owned()))].into(),
            missing: vec!["OTHER".into()],
        };

        let printed = format!("{resolved:?}");

        assert!(printed.contains("API_TOKEN") && printed.contains("OTHER"), "{printed}");
        assert!(!printed.contains("SENTINEL"), "{printed}");
    }
}
