//! The vault: unwraps organization data keys (cached in memory), seals and
//! opens credential secrets and named secrets, and runs key rotation and
//! crypto-shredding.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use crate::crypto::{self, DataKey, KeyError, MasterKeyring, SealError, SecretMap};

mod rotation;
use crate::ids::{OrgId, WebhookId};
use crate::store::{Store, StoreError};
pub use rotation::OrgRotation;

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
    /// Key rotation ended with sealed rows still under an older key.
    #[error(
        "{left} credentials, named secrets, OAuth apps or webhook endpoints are still sealed under an older data key, which is kept for them{}",
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
