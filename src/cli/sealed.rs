//! Commands that seal or re-wrap keys: they need the master keys, checked
//! against every stored data key first.

use anyhow::bail;
use secrecy::ExposeSecret;

use super::{require_org, Command, KeysCommand, OrgCommand};
use crate::config::Config;
use crate::ids::OrgId;
use crate::store::Store;
use crate::vault::Vault;

pub(super) async fn run(config: &Config, store: &Store, vault: &Vault, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Org(OrgCommand::Create { name }) => {
            if name.trim().is_empty() {
                bail!("the organization name must not be empty");
            }
            let id = OrgId::generate();
            vault.create_org(&id, name.trim()).await?;
            println!("{id}");
        }
        Command::Keys(KeysCommand::RotateMaster) => {
            let n = vault.rotate_master().await?;
            let primary = vault.primary_kid();
            println!("re-wrapped {n} data keys under master key {primary}");
            // The key file of a SQLite database follows: a start without
            // CREDGATE_MASTER_KEYS then opens the store with the new key.
            if let Some((keys, source)) = crate::app::configured_master_keys(config)? {
                if source == "CREDGATE_MASTER_KEYS" && vault.missing_master_keys().await?.is_empty() {
                    let first = keys
                        .expose_secret()
                        .split(',')
                        .next()
                        .unwrap_or_default()
                        .trim()
                        .to_owned();
                    let stays = store
                        .data_keys_by_master_kid()
                        .await?
                        .iter()
                        .all(|(kid, _)| kid == primary);
                    if stays {
                        if let Some(path) = crate::app::rewrite_key_file(config, &secrecy::SecretString::from(first))? {
                            println!("the key file {} now holds master key {primary}", path.display());
                        }
                    }
                }
            }
        }
        Command::Keys(KeysCommand::RotateOrg { org }) => {
            require_org(store, &org).await?;
            let done = vault.rotate_org(&org).await?;
            println!(
                "organization {org}: data key version {}, {} credentials, {} named secrets, {} OAuth apps and {} webhook endpoints re-encrypted",
                done.version, done.resealed, done.secrets_resealed, done.apps_resealed, done.webhooks_resealed
            );
        }
        other => unreachable!("not a sealing command: {other:?}"),
    }
    Ok(())
}
