//! Rotating an organization's data key: a new key, and everything sealed
//! under the older ones sealed again under it (`keys rotate-org`).

use super::{app_subject, secret_subject, webhook_subject, Vault, VaultError, UNREADABLE_NAMED};
use crate::crypto::{self, DataKey, SecretMap};
use crate::ids::OrgId;
use crate::store::{CredentialRow, EndpointRow, OAuthAppRow, SealedSecret, StoreError};

/// What `keys rotate-org` did.
#[derive(Debug, Clone, Copy)]
pub struct OrgRotation {
    /// The new current key version.
    pub version: i64,
    /// Credentials re-sealed.
    pub resealed: usize,
    /// Named secrets re-sealed.
    pub secrets_resealed: usize,
    /// OAuth apps' client secrets (and MCP registrations') re-sealed.
    pub apps_resealed: usize,
    /// Webhook endpoints' signing secrets re-sealed.
    pub webhooks_resealed: usize,
}

/// A sealed row as a re-seal sees it.
struct Sealed {
    /// Its key, the batches' cursor.
    key: String,
    /// What it is, in a rotation's report (`credential …`).
    label: String,
    subject: String,
    ct: String,
    version: i64,
}

impl Vault {
    /// Gives an organization a new data key and re-seals everything sealed
    /// under its older ones: credentials, named secrets, OAuth apps' client
    /// secrets and webhook endpoints' secrets.
    /// Once the new version is current, no writer can store secrets under an
    /// older key (every secret write checks the current version, and on
    /// Postgres share-locks it until commit). The re-seal loop then runs
    /// until no credential uses an old key; old keys are deleted only when
    /// nothing refers to them, so a rerun after an interruption finishes the
    /// job. It fails unless, at its end, everything is under the new key.
    pub async fn rotate_org(&self, org_id: &OrgId) -> Result<OrgRotation, VaultError> {
        let (_, wrapped) = self.keyring.new_data_key();
        let version = self.store.add_org_key(org_id, &wrapped).await?;
        let new_key = self.data_key(org_id, version).await?;
        let mut unreadable = Vec::new();
        let resealed = self
            .reseal_each(
                (org_id, &new_key, &mut unreadable),
                async |after: &str| self.store.credentials_below_key(org_id, version, after, 200).await,
                |row: &CredentialRow| Sealed {
                    key: row.id.to_string(),
                    label: format!("credential {}", row.id),
                    subject: row.id.to_string(),
                    ct: row.secret_ct.clone(),
                    version: row.key_version,
                },
                async |row: &CredentialRow, ct: &str| {
                    self.store
                        .reseal_credential(org_id, &row.id, &row.secret_ct, ct, version)
                        .await
                },
            )
            .await?;
        let secrets_resealed = self.reseal_secrets(org_id, version, &new_key, &mut unreadable).await?;
        let apps_resealed = self.reseal_apps(org_id, version, &new_key, &mut unreadable).await?;
        let webhooks_resealed = self.reseal_webhooks(org_id, version, &new_key, &mut unreadable).await?;
        self.store.prune_org_keys(org_id, version).await?;
        let left = self.store.count_below_key(org_id, version).await?;
        if left > 0 {
            return Err(VaultError::Incomplete { left, unreadable });
        }
        Ok(OrgRotation {
            version,
            resealed,
            secrets_resealed,
            apps_resealed,
            webhooks_resealed,
        })
    }

    /// Re-seals the organization's named secrets under key `version` (see
    /// [`Vault::rotate_org`]); returns how many.
    async fn reseal_secrets(
        &self,
        org_id: &OrgId,
        version: i64,
        new_key: &DataKey,
        unreadable: &mut Vec<String>,
    ) -> Result<usize, VaultError> {
        self.reseal_each(
            (org_id, new_key, unreadable),
            async |after: &str| self.store.secrets_below_key(org_id, version, after, 200).await,
            |row: &SealedSecret| Sealed {
                key: row.name.clone(),
                label: format!("secret {}", row.name),
                subject: secret_subject(org_id, &row.name),
                ct: row.value_ct.clone(),
                version: row.key_version,
            },
            async |row: &SealedSecret, ct: &str| {
                self.store
                    .reseal_secret(org_id, &row.name, &row.value_ct, ct, version)
                    .await
            },
        )
        .await
    }

    /// Re-seals the organization's OAuth apps' client secrets under key
    /// `version` (see [`Vault::rotate_org`]); returns how many.
    async fn reseal_apps(
        &self,
        org_id: &OrgId,
        version: i64,
        new_key: &DataKey,
        unreadable: &mut Vec<String>,
    ) -> Result<usize, VaultError> {
        self.reseal_each(
            (org_id, new_key, unreadable),
            async |after: &str| self.store.apps_below_key(org_id, version, after, 200).await,
            |row: &OAuthAppRow| Sealed {
                key: row.app.clone(),
                label: format!("oauth app {}", row.app),
                subject: app_subject(org_id, &row.app),
                ct: row.secret_ct.clone(),
                version: row.key_version,
            },
            async |row: &OAuthAppRow, ct: &str| {
                self.store
                    .reseal_app(org_id, &row.app, &row.secret_ct, ct, version)
                    .await
            },
        )
        .await
    }

    /// Re-seals the organization's webhook endpoints' secrets under key
    /// `version` (see [`Vault::rotate_org`]); returns how many.
    async fn reseal_webhooks(
        &self,
        org_id: &OrgId,
        version: i64,
        new_key: &DataKey,
        unreadable: &mut Vec<String>,
    ) -> Result<usize, VaultError> {
        self.reseal_each(
            (org_id, new_key, unreadable),
            async |after: &str| self.store.webhooks_below_key(org_id, version, after, 200).await,
            |row: &EndpointRow| Sealed {
                key: row.id.to_string(),
                label: format!("webhook {}", row.id),
                subject: webhook_subject(org_id, &row.id),
                ct: row.secret_ct.clone(),
                version: row.key_version,
            },
            async |row: &EndpointRow, ct: &str| {
                self.store
                    .reseal_webhook(org_id, &row.id, &row.secret_ct, ct, version)
                    .await
            },
        )
        .await
    }

    /// Re-seals under `new_key` every row `batch` returns (200 at a time,
    /// after the last row's key), each written by `write` (a compare-and-swap
    /// on the old ciphertext); returns how many were written. One row that
    /// cannot be opened (a damaged row) must not keep the others under the
    /// old key: it is named in `unreadable` and left.
    async fn reseal_each<R>(
        &self,
        (org_id, new_key, unreadable): (&OrgId, &DataKey, &mut Vec<String>),
        batch: impl AsyncFn(&str) -> Result<Vec<R>, StoreError>,
        sealed: impl Fn(&R) -> Sealed,
        write: impl AsyncFn(&R, &str) -> Result<bool, StoreError>,
    ) -> Result<usize, VaultError> {
        let (mut resealed, mut after) = (0, String::new());
        loop {
            let rows = batch(&after).await?;
            let Some(last) = rows.last() else {
                return Ok(resealed);
            };
            after = sealed(last).key;
            for row in &rows {
                let Sealed {
                    label,
                    subject,
                    ct,
                    version,
                    ..
                } = sealed(row);
                let groups = match self.open(org_id, &subject, &ct, version).await {
                    Ok(groups) => groups,
                    Err(e @ (VaultError::Store(_) | VaultError::Incomplete { .. })) => return Err(e),
                    Err(e) => {
                        tracing::debug!(row = %label, error = %e, "a sealed row could not be re-encrypted");
                        if unreadable.len() < UNREADABLE_NAMED {
                            unreadable.push(label);
                        }
                        continue;
                    }
                };
                let refs: Vec<(&str, &SecretMap)> = groups.iter().map(|(k, v)| (k.as_str(), v)).collect();
                let new_ct = crypto::seal(new_key, org_id, &subject, &refs);
                // A writer that changed the row meanwhile sealed it under the
                // new key already (writes check the current key), so a lost
                // compare-and-swap needs no second pass; the final count says.
                if write(row, &new_ct).await? {
                    resealed += 1;
                }
            }
        }
    }
}
