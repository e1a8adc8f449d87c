//! Commands that read or change rows that are not sealed: they need
//! neither master keys nor provider files.

use anyhow::{bail, Context as _};
use secrecy::ExposeSecret;

use super::{require_org, time, ApiKeyCommand, Command, EventsCommand, OrgCommand, TransferTo, UserCommand};
use crate::api_tokens::{parse_duration, NewKey};
use crate::config::Config;
use crate::ids::OrgId;
use crate::model::Role;
use crate::store::{KeyRef, Store};

pub(super) async fn run(config: &Config, store: &Store, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Org(OrgCommand::List) => {
            for org in store.org_summaries(None).await? {
                println!(
                    "{}\t{}\t{}\t{} credentials",
                    org.id,
                    org.name,
                    time(Some(org.created_at)),
                    org.credentials
                );
            }
        }
        Command::Org(OrgCommand::Limits { org }) => {
            require_org(store, &org).await?;
            for (provider, max) in store.org_limits(&org).await? {
                println!("{provider}\t{max}");
            }
        }
        Command::Org(OrgCommand::SetLimit {
            org,
            provider,
            max,
            clear,
        }) => set_limit(config, store, &org, &provider, max, clear).await?,
        Command::Org(OrgCommand::Delete { org, yes }) => delete_org(store, &org, yes).await?,
        Command::ApiKey(command) => api_key(store, command).await?,
        Command::User(UserCommand::Remove { org, user, transfer_to }) => {
            require_org(store, &org).await?;
            let to = match &transfer_to {
                TransferTo::Org => None,
                TransferTo::User(to) => Some(to),
            };
            let done = crate::credentials::remove_user(store, &org, &user, to, "cli")
                .await
                .map_err(|e| match e {
                    crate::error::Error::Validation(errors) => anyhow::anyhow!(
                        "{}",
                        errors
                            .iter()
                            .map(|e| format!("{} {}", e.field, e.message))
                            .collect::<Vec<_>>()
                            .join("; ")
                    ),
                    other => anyhow::anyhow!(other),
                })?;
            println!(
                "user {user}: {} credentials transferred to {}, {} grants removed, {} API keys revoked",
                done.transferred.len(),
                to.map_or("the organization", |u| u.as_str()),
                done.grants_removed,
                done.keys_revoked
            );
        }
        Command::Events(EventsCommand::Replay { since, org }) => {
            if let Some(org) = &org {
                require_org(store, org).await?;
            }
            let at = chrono::DateTime::parse_from_rfc3339(since.trim())
                .map(|t| t.timestamp())
                .ok()
                .or_else(|| parse_duration(&since).map(|ago| store.now() - ago))
                .with_context(|| format!("--since {since:?} is neither an RFC 3339 time nor a duration like 2h"))?;
            let (n, deliveries) = store.replay_events(at, org.as_ref()).await?;
            println!(
                "{n} notifications queued for delivery again, and {deliveries} deliveries to organizations' \
                 webhook endpoints"
            );
            if config.webhook_url.is_none() {
                eprintln!(
                    "credgate: warning: CREDGATE_WEBHOOK_URL is not set here; the operator's copies are delivered \
                     only by a credgate that serves with it set (organizations' endpoints by any that serves)"
                );
            }
        }
        Command::Repair => {
            let done = store.repair().await?;
            for fix in &done.counters {
                println!(
                    "organization {} provider {}: credential counter {} set to {}",
                    fix.org_id,
                    fix.provider,
                    fix.was.map_or_else(|| "(missing)".to_owned(), |n| n.to_string()),
                    fix.is
                );
            }
            println!(
                "{} credential counters fixed; listing versions raised for {} organizations (listing totals are counted anew)",
                done.counters.len(),
                done.listing_versions
            );
        }
        Command::Keys(super::KeysCommand::List) => keys_list(config, store).await?,
        other => unreachable!("not a command on unsealed rows: {other:?}"),
    }
    Ok(())
}

async fn set_limit(
    config: &Config,
    store: &Store,
    org: &OrgId,
    provider: &str,
    max: Option<u32>,
    clear: bool,
) -> anyhow::Result<()> {
    require_org(store, org).await?;
    if clear {
        let default = config.max_per_provider;
        if store.clear_org_limit(org, provider).await? {
            println!("organization {org}: the limit for {provider} is the default again ({default})");
        } else {
            println!("organization {org}: {provider} had no override; the default ({default}) applies");
        }
        return Ok(());
    }
    let catalog = crate::providers::load_catalog(config.providers_dir.as_deref(), &config.provider_overrides)?;
    if !catalog.iter().any(|p| p.id == provider) {
        bail!("provider {provider:?} is not in the catalog");
    }
    let max = max.context("give --max N or --clear")?;
    store.set_org_limit(org, provider, max.into()).await?;
    match max {
        0 => println!("organization {org}: no new {provider} credentials may be created (limit 0)"),
        n => println!("organization {org}: at most {n} {provider} credentials"),
    }
    Ok(())
}

async fn delete_org(store: &Store, org: &OrgId, yes: bool) -> anyhow::Result<()> {
    if !yes {
        let Some(found) = store.org_summaries(Some(org)).await?.into_iter().next() else {
            bail!("organization {org} does not exist");
        };
        println!(
            "would delete organization {} ({}): {} credentials, {} API keys, {} named secrets and its data keys; \
             nothing was changed: run again with --yes",
            found.id, found.name, found.credentials, found.api_keys, found.named_secrets
        );
        return Ok(());
    }
    // Not `require_org`: an organization whose removal was interrupted is
    // already marked deleted, and is finished here.
    match crate::vault::delete_org(store, org).await {
        Ok(rows) => println!("organization {org} deleted: its data keys destroyed, {rows} rows removed"),
        Err(crate::vault::VaultError::Store(crate::store::StoreError::NotFound)) => {
            bail!("organization {org} does not exist")
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

async fn api_key(store: &Store, command: ApiKeyCommand) -> anyhow::Result<()> {
    match command {
        ApiKeyCommand::Create {
            org,
            role,
            user,
            label,
            expires_in,
        } => {
            require_org(store, &org).await?;
            let role = Role::parse(&role).context("--role must be admin, member or engine")?;
            let expires_in = expires_in
                .as_deref()
                .map(|d| {
                    parse_duration(d)
                        .with_context(|| format!("--expires-in {d:?} is not a duration like 90d, 12h, 30m or 45s"))
                })
                .transpose()?;
            let new = NewKey {
                user_id: user.as_ref(),
                label: label.as_deref(),
                expires_in,
            };
            let token = crate::api_tokens::create(store, &org, role, new).await?;
            println!("{token}");
        }
        ApiKeyCommand::List { org } => {
            require_org(store, &org).await?;
            for key in store.list_api_keys(&org).await? {
                let expires = match key.revoked_at {
                    Some(at) => format!("revoked {}", time(Some(at))),
                    None => time(key.expires_at),
                };
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}\t{}",
                    key.id,
                    key.role.as_str(),
                    key.user_id.as_deref().unwrap_or("-"),
                    key.label.as_deref().unwrap_or("-"),
                    time(Some(key.created_at)),
                    time(key.last_used_at),
                    expires,
                );
            }
        }
        ApiKeyCommand::Revoke { id, token } => {
            // What the operator typed is printed only once it is known to be
            // an id: a token given in the wrong place is never echoed.
            let (key_id, _) = match (id, token) {
                (Some(id), _) => {
                    let id = uuid::Uuid::parse_str(id.trim())
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "--id takes a key id (a UUID, as `api-key list` shows it); to revoke by the \
                                 token, use --token (what was given is not printed)"
                            )
                        })?
                        .to_string();
                    store
                        .revoke_api_key(KeyRef::Id(&id), "cli")
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("no API key {id} that is not already revoked"))?
                }
                (None, Some(token)) => store
                    .revoke_api_key(
                        KeyRef::TokenHash(&crate::api_tokens::token_hash(token.expose_secret().trim())),
                        "cli",
                    )
                    .await?
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "no API key with that token that is not already revoked (the token is not printed)"
                        )
                    })?,
                (None, None) => bail!("name the key with --id or --token"),
            };
            println!("API key {key_id} revoked; replicas stop accepting it within 5 seconds, its page sessions ended");
        }
    }
    Ok(())
}

/// `keys list`: the configured master keys (never their values) and the
/// stored data keys each wraps; a key id that data keys need but the
/// configuration lacks is listed as `missing`.
async fn keys_list(config: &Config, store: &Store) -> anyhow::Result<()> {
    let in_use = store.data_keys_by_master_kid().await?;
    let wraps = |kid: &str| in_use.iter().find(|(k, _)| k == kid).map_or(0, |(_, n)| *n);
    let configured = match crate::app::configured_master_keys(config)? {
        Some((keys, source)) => {
            let ring = crate::crypto::MasterKeyring::parse(&keys).with_context(|| source.clone())?;
            ring.kids().into_iter().map(str::to_owned).collect()
        }
        None => Vec::new(),
    };
    for (i, kid) in configured.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "secondary" };
        println!("{kid}\t{role}\t{} data keys", wraps(kid));
    }
    for (kid, n) in in_use.iter().filter(|(k, _)| !configured.contains(k)) {
        println!("{kid}\tmissing\t{n} data keys");
    }
    if configured.is_empty() {
        eprintln!("credgate: warning: no master keys are configured (CREDGATE_MASTER_KEYS, or the key file beside a SQLite database)");
    }
    Ok(())
}
