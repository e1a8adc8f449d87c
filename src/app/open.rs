//! Opening the store and its master keys: which commands may create or
//! migrate a database or a key file, and the checks made before either.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};

use crate::clock::Clock;
use crate::config::{redact_url, Config};
use crate::crypto::MasterKeyring;
use crate::store::{Dialect, Store};
use crate::vault::Vault;

/// Name of the master key file kept beside a SQLite database.
pub const MASTER_KEY_FILE: &str = "credgate.master.key";

/// Opens the store for `serve` and `migrate`: creates a SQLite file that is
/// missing, refuses master keys that cannot open the stored data keys before
/// anything is migrated, then applies pending migrations.
pub async fn connect_and_migrate(config: &Config, clock: Clock) -> anyhow::Result<Store> {
    let store = open_store(config, clock, true).await?;
    let configured = configured_master_keys(config)?;
    if configured.is_none() && store.dialect() == Dialect::Postgres {
        store.close().await;
        anyhow::bail!("CREDGATE_MASTER_KEYS is required with PostgreSQL (generate one with `credgate keys generate`)");
    }
    if let Some((keys, source)) = configured {
        let keyring = MasterKeyring::parse(&keys).with_context(|| format!("refusing to start: {source}"))?;
        for wrapped in store.wrapped_keys_any_release().await? {
            keyring.unwrap(&wrapped).with_context(|| {
                format!("refusing to start, before migrating anything: the master keys of {source} do not match the stored data keys")
            })?;
        }
    }
    store.migrate().await.context("cannot apply database migrations")?;
    Ok(store)
}

/// Opens the store of a command that neither creates nor migrates one:
/// the database must exist and be migrated to this release.
pub async fn open_existing_store(config: &Config, clock: Clock) -> anyhow::Result<Store> {
    if let Some(file) = sqlite_file(&config.database_url) {
        if !file.exists() {
            anyhow::bail!(
                "there is no database at {} (CREDGATE_DATABASE_URL); `credgate migrate` or `credgate serve` creates it",
                file.display()
            );
        }
    }
    let store = open_store(config, clock, false).await?;
    let pending = store.pending_migrations().await?;
    if let Some(first) = pending.first() {
        store.close().await;
        anyhow::bail!(
            "the database lacks {} migration(s) of this release (the first is {first}): run `credgate migrate` first",
            pending.len()
        );
    }
    Ok(store)
}

async fn open_store(config: &Config, clock: Clock, create: bool) -> anyhow::Result<Store> {
    let url = &config.database_url;
    let how = crate::store::OpenOptions {
        create,
        max_connections: config.db_max_connections,
        lock_timeout: config.store_lock_timeout,
    };
    Ok(Store::open(url, clock, how)
        .await
        .with_context(|| format!("cannot open the database {} (CREDGATE_DATABASE_URL)", redact_url(url)))?
        .with_op_timeout(config.db_timeout))
}

/// Whether a missing key file may be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFile {
    /// `serve` and `migrate`: beside a SQLite database without organizations.
    CreateForNewDatabase,
    /// Every other command: only read.
    ReadOnly,
}

/// The vault over `store`, its master keys checked against every stored
/// data key.
pub async fn open_vault(config: &Config, store: &Store, key_file: KeyFile) -> anyhow::Result<Vault> {
    let (keys, source) = master_keys(config, store, key_file).await?;
    let keyring = MasterKeyring::parse(&keys).with_context(|| format!("refusing to start: {source}"))?;
    let vault = Vault::new(keyring, store.clone());
    vault
        .verify_all()
        .await
        .with_context(|| format!("refusing to start: the master keys of {source} do not match the stored data keys"))?;
    Ok(vault)
}

/// The master keys that are configured, and where they came from:
/// `CREDGATE_MASTER_KEYS`, or an existing key file beside a SQLite database.
pub fn configured_master_keys(config: &Config) -> anyhow::Result<Option<(SecretString, String)>> {
    if let Some(keys) = &config.master_keys {
        return Ok(Some((keys.clone(), "CREDGATE_MASTER_KEYS".to_owned())));
    }
    match key_file_path(&config.database_url) {
        Some(path) if path.exists() => {
            let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
            Ok(Some((
                SecretString::from(text.trim().to_owned()),
                format!("the key file {}", path.display()),
            )))
        }
        _ => Ok(None),
    }
}

/// `CREDGATE_MASTER_KEYS`, or with SQLite the key file beside the database
/// (with [`KeyFile::CreateForNewDatabase`] created with mode 0600 when
/// missing, and only beside a database that holds no organization yet: a new
/// key could open none of their data keys, and a key file in the old one's
/// place would only hide that it is gone). Postgres needs explicit keys.
async fn master_keys(config: &Config, store: &Store, key_file: KeyFile) -> anyhow::Result<(SecretString, String)> {
    if let Some((keys, source)) = configured_master_keys(config)? {
        if source != "CREDGATE_MASTER_KEYS" {
            tracing::warn!("CREDGATE_MASTER_KEYS is not set; using {source}");
        }
        return Ok((keys, source));
    }
    if store.dialect() == Dialect::Postgres {
        anyhow::bail!("CREDGATE_MASTER_KEYS is required with PostgreSQL (generate one with `credgate keys generate`)");
    }
    let Some(path) = key_file_path(&config.database_url) else {
        tracing::warn!("CREDGATE_MASTER_KEYS is not set; using a throw-away key for this in-memory database");
        return Ok((MasterKeyring::generate_key(), "a throw-away key".to_owned()));
    };
    if key_file == KeyFile::ReadOnly {
        anyhow::bail!(
            "no master keys: CREDGATE_MASTER_KEYS is not set and the key file {} is missing \
             (`credgate migrate` or `credgate serve` creates it for a new database)",
            path.display()
        );
    }
    if store.holds_organizations().await? {
        anyhow::bail!(
            "the master key file {} is missing, and the database already holds organizations whose data keys \
             only their master key opens: restore the file from its backup, or set CREDGATE_MASTER_KEYS \
             (no new key file was created)",
            path.display()
        );
    }
    let key = MasterKeyring::generate_key();
    let mut file = open_private(&path).with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(key.expose_secret().as_bytes())?;
    file.sync_all()?;
    tracing::warn!(
        file = %path.display(),
        "CREDGATE_MASTER_KEYS is not set; created a new master key file (mode 0600). Back it up: without it the credentials cannot be decrypted"
    );
    Ok((key, format!("the key file {}", path.display())))
}

/// Writes `keys` into the key file beside a SQLite database, replacing it
/// whole (a new file, synced, renamed over the old one): after `keys
/// rotate-master`, a start without `CREDGATE_MASTER_KEYS` opens the store.
/// `None` when there is no key file to keep in step.
pub fn rewrite_key_file(config: &Config, keys: &SecretString) -> anyhow::Result<Option<PathBuf>> {
    let Some(path) = key_file_path(&config.database_url).filter(|p| p.exists()) else {
        return Ok(None);
    };
    let next = path.with_extension("key.new");
    let _ = std::fs::remove_file(&next);
    let mut file = open_private(&next).with_context(|| format!("cannot create {}", next.display()))?;
    file.write_all(keys.expose_secret().as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&next, &path).with_context(|| format!("cannot replace {}", path.display()))?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(Some(path))
}

/// The file of a `sqlite://` URL; `None` in memory or for PostgreSQL.
fn sqlite_file(database_url: &str) -> Option<PathBuf> {
    let rest = database_url
        .strip_prefix("sqlite://")
        .or_else(|| database_url.strip_prefix("sqlite:"))?;
    let file = rest.split('?').next().unwrap_or("");
    (!file.is_empty() && file != ":memory:").then(|| PathBuf::from(file))
}

#[cfg(unix)]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn open_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new().write(true).create_new(true).open(path)
}

/// `sqlite://dir/credgate.db?…` → `dir/credgate.master.key`; `None` in memory.
fn key_file_path(database_url: &str) -> Option<PathBuf> {
    let file = sqlite_file(database_url)?;
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(dir.join(MASTER_KEY_FILE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_file_sits_beside_the_sqlite_database() {
        assert_eq!(
            key_file_path("sqlite://credgate.db"),
            Some(PathBuf::from("./credgate.master.key"))
        );
        assert_eq!(
            key_file_path("sqlite:///var/lib/cg/x.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/cg/credgate.master.key"))
        );
        assert_eq!(key_file_path("sqlite::memory:"), None);
    }
}
