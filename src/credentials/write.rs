//! Create, update and delete: validate → seal → store → audit → notify.

use serde_json::{json, Map, Value};

use super::{access, check_name, provider_auth, retry_after_rotation, CredentialSecrets, KEY_RETRIES};
use crate::context::Context;
use crate::crypto::SecretMap;
use crate::error::Error;
use crate::ids::CredentialId;
use crate::model::{Access, AuthKind, Principal};
use crate::providers::{validate_for, FieldError};
use crate::store::{
    AuditEvent, CredentialRow, IdempotencyRecord, MintedWrite, NewCredential, Notification, PendingCreate, SecretWrite,
    StoreError,
};

/// A new credential as submitted. `Debug` shows field names only.
#[derive(Clone)]
pub struct NewCredentialInput {
    pub name: String,
    pub provider: String,
    pub auth_type: String,
    pub fields: Map<String, Value>,
    /// Key-value credentials: the fields shown in the clear.
    pub public: Vec<String>,
    /// When the secret itself ends (RFC 3339), if its owner knows.
    pub expires_at: Option<String>,
}

impl std::fmt::Debug for NewCredentialInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredentialInput")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("auth_type", &self.auth_type)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A PATCH: a new name and/or all new fields. `Debug` shows field names only.
#[derive(Clone, Default)]
pub struct Changes {
    pub name: Option<String>,
    pub fields: Option<Map<String, Value>>,
    /// Key-value credentials: the new fields shown in the clear.
    pub public: Vec<String>,
    /// A new end of the secret (RFC 3339); `Some(None)` clears it.
    pub expires_at: Option<Option<String>>,
}

impl std::fmt::Debug for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("name", &self.name)
            .field("fields", &self.fields.as_ref().map(|m| m.keys().collect::<Vec<_>>()))
            .finish()
    }
}

/// `expires_at` as Unix seconds: an RFC 3339 time.
fn parse_expiry(value: &str) -> Result<i64, FieldError> {
    chrono::DateTime::parse_from_rfc3339(value.trim())
        .map(|t| t.timestamp())
        .map_err(|_| FieldError::new("expires_at", "must be an RFC 3339 time, like 2027-01-31T00:00:00Z"))
}

fn names_json(secrets: &CredentialSecrets) -> String {
    serde_json::to_string(&secrets.fields.names()).expect("strings serialize")
}

/// Creates a credential from submitted fields (OAuth credentials come from
/// [`super::connect`]); notifies `credential.created`. The creator owns it
/// (a key without a user makes an organization credential).
pub async fn create(ctx: &Context, who: &Principal, input: NewCredentialInput) -> Result<CredentialRow, Error> {
    create_with(ctx, who, input, None).await
}

/// What an idempotency key's request fingerprint is sealed under.
pub(super) fn idempotency_subject(key: &str) -> String {
    format!("idempotency:{key}")
}

/// [`create`], keeping `idempotency` (the key and the request's
/// fingerprint) in the create's own transaction: `Conflict(idempotency_key_taken)`
/// when another create took the key meanwhile.
pub(super) async fn create_with(
    ctx: &Context,
    who: &Principal,
    input: NewCredentialInput,
    idempotency: Option<(&str, &SecretMap)>,
) -> Result<CredentialRow, Error> {
    let (org_id, actor) = (&who.org_id, who.actor());
    let actor = actor.as_str();
    let mut errors = Vec::new();
    let name = check_name(&input.name).map_err(|e| errors.push(e)).ok();
    let secret_expires_at = match input.expires_at.as_deref().map(parse_expiry) {
        Some(Err(e)) => {
            errors.push(e);
            None
        }
        Some(Ok(t)) => Some(t),
        None => None,
    };
    let validated = match provider_auth(ctx, &input.provider, &input.auth_type) {
        Ok((_, AuthKind::Oauth2)) => {
            errors.push(FieldError::new(
                "auth_type",
                "oauth2 credentials are created by the authorize flow (GET /integrations/{provider}/authorize)",
            ));
            None
        }
        Ok((provider, kind)) => {
            let defs = &provider.auth_type(kind).expect("checked by provider_auth").fields;
            validate_for(provider.generic, defs, &input.fields, &input.public)
                .map_err(|e| errors.extend(e))
                .ok()
                .map(|v| (kind, v))
        }
        Err(e) => {
            errors.extend(e);
            None
        }
    };
    let (Some(name), Some((kind, validated)), true) = (name, validated, errors.is_empty()) else {
        return Err(Error::Validation(errors));
    };
    let id = CredentialId::generate();
    let minted = if kind.is_minted() {
        Some(super::minted::mint_first(ctx, &input.provider, kind, &validated).await?)
    } else {
        None
    };
    let secrets = CredentialSecrets {
        fields: validated.secret,
        tokens: minted.as_ref().map(|m| m.tokens.clone()),
    };
    let event = AuditEvent::success(org_id, &id, "credential.create", actor)
        .with_detail(json!({"provider": input.provider, "auth_type": kind.as_str()}));
    let notify = Notification::new(
        "credential.created",
        org_id,
        &id,
        &input.provider,
        json!({"name": name}),
    );
    for attempt in 0..KEY_RETRIES {
        let (secret_ct, key_version) = secrets.seal(&ctx.vault, org_id, &id).await?;
        let idempotency = match idempotency {
            Some((key, request)) => {
                let subject = idempotency_subject(key);
                let (request_ct, key_version) = ctx.vault.seal(org_id, &subject, &[("request", request)]).await?;
                Some(IdempotencyRecord {
                    key: key.to_owned(),
                    request_ct,
                    key_version,
                })
            }
            None => None,
        };
        let new = NewCredential {
            id: id.clone(),
            org_id: org_id.to_owned(),
            name: name.clone(),
            provider: input.provider.clone(),
            auth_type: kind,
            fields: Value::Object(validated.public.clone()).to_string(),
            secret_names: names_json(&secrets),
            secret_ct,
            key_version,
            created_by: actor.to_owned(),
            owner: who.user_id.clone(),
            expires_at: minted.as_ref().and_then(|m| m.expires_at),
            refresh_after: minted.as_ref().and_then(|m| m.refresh_after),
            account_id: minted.as_ref().map(|m| m.minter.account_id.clone()),
            account_email: minted.as_ref().and_then(|m| m.minter.account_email.clone()),
            scopes: minted
                .as_ref()
                .and_then(|m| m.scopes.as_ref())
                .map(|s| serde_json::to_string(s).expect("strings serialize")),
            secret_expires_at,
        };
        let create = PendingCreate {
            new,
            default_limit: ctx.config.max_per_provider.into(),
            event: event.clone(),
            notify: notify.clone(),
            idempotency,
        };
        match ctx.creates.submit(create).await {
            Ok(()) => break,
            Err(e) if retry_after_rotation(&e, attempt) => continue,
            Err(StoreError::IdempotencyKeyTaken) => {
                return Err(Error::Conflict(
                    "idempotency_key_taken",
                    "another request with this Idempotency-Key was served meanwhile".into(),
                ))
            }
            // The commit's answer may have been lost after it landed: what
            // the store holds decides (the id is this create's own).
            Err(e @ StoreError::Unavailable(_)) => match ctx.store.credential_exists(org_id, &id).await {
                Ok(true) => {
                    tracing::info!(credential = %id, "a create whose answer was lost had been written");
                    break;
                }
                _ => return Err(e.into()),
            },
            Err(StoreError::QuotaExceeded { limit, count }) => {
                return Err(Error::QuotaExceeded {
                    provider: input.provider,
                    limit,
                    count,
                })
            }
            Err(e) => return Err(e.into()),
        }
    }
    ctx.webhooks.wake();
    super::get_unchecked(ctx, org_id, &id).await
}

/// Renames a credential and/or replaces all its fields (secrets re-entered;
/// OAuth tokens are kept). The new secrets are written only if no one wrote
/// secrets since this read them and no refresh is in flight: otherwise
/// `conflict`, and nothing is lost.
pub async fn update(
    ctx: &Context,
    who: &Principal,
    id: &CredentialId,
    changes: Changes,
) -> Result<CredentialRow, Error> {
    access::authorize(ctx, who, id, Access::Manage).await?;
    let (org_id, actor) = (&who.org_id, who.actor());
    let actor = actor.as_str();
    if changes.name.is_none() && changes.fields.is_none() && changes.expires_at.is_none() {
        return Err(Error::field("body", "give `name`, `fields`, `expires_at` or more"));
    }
    let secret_expires = match &changes.expires_at {
        None => None,
        Some(None) => Some(None),
        Some(Some(t)) => Some(Some(parse_expiry(t).map_err(|e| Error::Validation(vec![e]))?)),
    };
    let name = changes
        .name
        .as_deref()
        .map(check_name)
        .transpose()
        .map_err(|e| Error::Validation(vec![e]))?;
    let changed: Vec<&str> = [
        ("name", name.is_some()),
        ("fields", changes.fields.is_some()),
        ("expires_at", secret_expires.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    let event = AuditEvent::success(org_id, id, "credential.update", actor).with_detail(json!({ "changed": changed }));
    for attempt in 0..KEY_RETRIES {
        let row = super::get_unchecked(ctx, org_id, id).await?;
        let write = match &changes.fields {
            None => None,
            Some(fields) => {
                let (provider, kind) =
                    provider_auth(ctx, &row.provider, row.auth_type.as_str()).map_err(Error::Validation)?;
                let defs = &provider.auth_type(kind).expect("checked by provider_auth").fields;
                let validated =
                    validate_for(provider.generic, defs, fields, &changes.public).map_err(Error::Validation)?;
                // OAuth tokens are not fields: they survive a fields update.
                // A minted credential's are minted again from the new fields
                // (a 422 when they are refused, nothing written).
                let (tokens, minted) = if kind.is_minted() {
                    let first = super::minted::mint_first(ctx, &row.provider, kind, &validated).await?;
                    let write = MintedWrite {
                        expires_at: first.expires_at,
                        refresh_after: first.refresh_after,
                        account_id: Some(first.minter.account_id.clone()),
                        account_email: first.minter.account_email.clone(),
                        scopes: first
                            .scopes
                            .as_ref()
                            .map(|s| serde_json::to_string(s).expect("strings serialize")),
                    };
                    (Some(first.tokens), Some(write))
                } else {
                    (CredentialSecrets::open(&ctx.vault, &row).await?.tokens, None)
                };
                let secrets = CredentialSecrets {
                    fields: validated.secret,
                    tokens,
                };
                let (secret_ct, key_version) = secrets.seal(&ctx.vault, org_id, id).await?;
                Some(SecretWrite {
                    fields: Value::Object(validated.public).to_string(),
                    secret_names: names_json(&secrets),
                    secret_ct,
                    key_version,
                    expected_version: row.secret_version,
                    minted,
                })
            }
        };
        match ctx
            .store
            .update_credential(org_id, id, (name.as_ref(), secret_expires), write.as_ref(), &event)
            .await
        {
            Ok(row) => return Ok(row),
            Err(e) if retry_after_rotation(&e, attempt) => continue,
            Err(StoreError::Conflict) => {
                return Err(Error::Conflict(
                    "conflict",
                    "the credential changed while this update was prepared (a token refresh or another \
                     update); read it again and retry"
                        .into(),
                ))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::KeyRotated.into())
}

/// Deletes the credentials among `ids` that `who` may manage (audited,
/// `credential.deleted` notified in the same transaction; the others are
/// denials, audited); revokes OAuth tokens at providers that offer it, in
/// the background. Returns the ids deleted.
pub async fn delete(ctx: &Context, who: &Principal, ids: &[CredentialId]) -> Result<Vec<CredentialId>, Error> {
    let mut allowed = Vec::new();
    for id in ids {
        match access::authorize(ctx, who, id, Access::Manage).await {
            Ok(_) => allowed.push(id.clone()),
            Err(Error::NotFound | Error::Forbidden) => {}
            Err(e) => return Err(e),
        }
    }
    let rows = ctx
        .store
        .delete_credentials(&who.org_id, &allowed, &who.actor())
        .await?;
    let deleted = rows.iter().map(|r| r.id.clone()).collect();
    ctx.webhooks.wake();
    for row in rows {
        if row.auth_type == AuthKind::Oauth2 {
            let ctx = ctx.clone();
            tokio::spawn(async move {
                if let Ok(secrets) = CredentialSecrets::open(&ctx.vault, &row).await {
                    super::revoke_credential_tokens(&ctx, &row, secrets.tokens.as_ref()).await;
                }
            });
        }
    }
    Ok(deleted)
}
