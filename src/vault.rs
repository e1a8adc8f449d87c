//! The vault: unwraps organization data keys (cached in memory), seals and
//! opens credential secrets and named secrets, and runs key rotation and
//! crypto-shredding.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::crypto::{self, DataKey, KeyError, MasterKeyring, SealError, SecretMap};
use crate::ids::{OrgId, WebhookId};
use crate::store::{CredentialRow, EndpointRow, OAuthAppRow, SealedSecret, Store, StoreError};

/// Why the vault could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// A master key problem.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A sealed value is not valid for its row.
    #[error(transparent)]
    Seal(#[from] SealError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Key rotation ended with credentials or named secrets still under an older key.
    #[error(
        "{left} credentials, named secrets or OAuth apps are still sealed under an older data key, which is kept for them{}",
        unreadable_list(unreadable)
    )]
    Incomplete {
        /// How many.
        left: i64,
        /// Those that could not be opened (damaged rows): credential ids and
        /// secret names, the first few.
        unreadable: Vec<String>,
    },
}

fn unreadable_list(unreadable: &[String]) -> String {
    match unreadable {
        [] => "; run the rotation again".to_owned(),
        ids => format!("; these could not be decrypted: {}", ids.join(", ")),
    }
}

/// Damaged rows named in an [`VaultError::Incomplete`] at the most.
const UNREADABLE_NAMED: usize = 10;

/// Rows removed per transaction when an organization is deleted.
pub const PURGE_BATCH: i64 = 1000;

/// Master keyring plus a cache of unwrapped data keys.
pub struct Vault {
    keyring: MasterKeyring,
    store: Store,
    cache: RwLock<HashMap<(OrgId, i64), Arc<DataKey>>>,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("keyring", &self.keyring)
            .finish_non_exhaustive()
    }
}

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

/// The sealing subject of named secret `name` of `org_id`: a value copied
/// to another name or organization does not open.
pub fn secret_subject(org_id: &OrgId, name: &str) -> String {
    format!("secret:{org_id}:{name}")
}

/// The sealing subject of OAuth app `app` of `org_id` (its client secret):
/// a secret copied to another app or organization does not open.
pub fn app_subject(org_id: &OrgId, app: &str) -> String {
    format!("oauth_app:{org_id}:{app}")
}

/// The sealing subject of webhook endpoint `id` of `org_id` (its signing
/// secrets): a secret copied to another endpoint or organization does not open.
pub fn webhook_subject(org_id: &OrgId, id: &WebhookId) -> String {
    format!("webhook:{org_id}:{id}")
}

impl Vault {
    /// The id of the master key that wraps new data keys.
    pub fn primary_kid(&self) -> &str {
        self.keyring.primary_kid()
    }

    /// A vault over `store` with `keyring`.
    pub fn new(keyring: MasterKeyring, store: Store) -> Self {
        Self {
            keyring,
            store,
            cache: RwLock::new(HashMap::new()),
        }
    }

    /// Creates an organization with a fresh data key; returns nothing secret.
    pub async fn create_org(&self, id: &OrgId, name: &str) -> Result<(), VaultError> {
        let (_, wrapped) = self.keyring.new_data_key();
        self.store.insert_org(id, name, &wrapped).await?;
        Ok(())
    }

    /// One data key version of an organization.
    pub async fn data_key(&self, org_id: &OrgId, version: i64) -> Result<Arc<DataKey>, VaultError> {
        let cache_key = (org_id.to_owned(), version);
        if let Some(key) = self.cache.read().expect("cache lock").get(&cache_key) {
            return Ok(key.clone());
        }
        let row = self.store.org_key(org_id, version).await?;
        let key = Arc::new(self.keyring.unwrap(&row.wrapped)?);
        self.cache.write().expect("cache lock").insert(cache_key, key.clone());
        Ok(key)
    }

    /// The organization's current data key and its version.
    pub async fn current_key(&self, org_id: &OrgId) -> Result<(i64, Arc<DataKey>), VaultError> {
        let version = self.store.org_key_version(org_id).await?;
        Ok((version, self.data_key(org_id, version).await?))
    }

    /// Seals secret groups for a row under the organization's current key.
    pub async fn seal(
        &self,
        org_id: &OrgId,
        subject: &str,
        groups: &[(&str, &SecretMap)],
    ) -> Result<(String, i64), VaultError> {
        let (version, key) = self.current_key(org_id).await?;
        Ok((crypto::seal(&key, org_id, subject, groups), version))
    }

    /// Opens a row's sealed secrets.
    pub async fn open(
        &self,
        org_id: &OrgId,
        subject: &str,
        token: &str,
        version: i64,
    ) -> Result<BTreeMap<String, SecretMap>, VaultError> {
        let key = self.data_key(org_id, version).await?;
        Ok(crypto::open(&key, org_id, subject, token)?)
    }

    /// Checks at startup that the master keys unwrap every stored data key.
    pub async fn verify_all(&self) -> Result<usize, VaultError> {
        let rows = self.store.org_keys(None).await?;
        for row in &rows {
            self.keyring.unwrap(&row.wrapped)?;
        }
        Ok(rows.len())
    }

    /// The ids of master keys that wrap stored data keys but are not in this
    /// replica's keyring (a replica left behind during a key rotation): the
    /// organizations under them cannot be served here.
    pub async fn missing_master_keys(&self) -> Result<Vec<String>, VaultError> {
        let mut missing = self.store.master_kids_in_use().await?;
        missing.retain(|kid| !self.keyring.has_kid(kid));
        Ok(missing)
    }

    /// Re-wraps every data key not yet under the primary master key. Each key
    /// is replaced on its own (compare-and-swap), so the command is safe while
    /// credgate serves and can simply be run again after an interruption.
    pub async fn rotate_master(&self) -> Result<usize, VaultError> {
        let rows = self.store.org_keys(Some(self.keyring.primary_kid())).await?;
        let mut done = 0;
        for row in rows {
            let new = self.keyring.rewrap(&row.wrapped)?;
            if self.store.rewrap_org_key(&row, &new).await? {
                done += 1;
            }
        }
        Ok(done)
    }

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

    /// Deletes an organization: marks it deleted and destroys its data keys
    /// at once (crypto-shredding), then removes its rows in batches
    /// ([`PURGE_BATCH`] rows a transaction). `NotFound` when there is no such
    /// organization; one whose removal was interrupted is finished.
    pub async fn delete_org(&self, org_id: &OrgId) -> Result<u64, VaultError> {
        self.cache
            .write()
            .expect("cache lock")
            .retain(|(org, _), _| org != org_id);
        delete_org(&self.store, org_id).await
    }
}

/// [`Vault::delete_org`] without a vault: destroying data keys needs no
/// master key (the `org delete` command).
pub async fn delete_org(store: &Store, org_id: &OrgId) -> Result<u64, VaultError> {
    match store.mark_org_deleted(org_id).await {
        Ok(()) => {}
        Err(StoreError::NotFound) if store.deleted_orgs().await?.iter().any(|o| o == org_id) => {}
        Err(e) => return Err(e.into()),
    }
    let mut removed = 0;
    loop {
        match store.purge_deleted_org(org_id, PURGE_BATCH).await? {
            0 => return Ok(removed),
            n => removed += n,
        }
    }
}
