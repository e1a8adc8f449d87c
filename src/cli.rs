//! The command line: `serve`, `migrate`, organizations, API keys and keys.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;
use uuid::Uuid;

use crate::api_tokens::{parse_duration, NewKey};
use crate::app::{connect_and_migrate, context, Application, Services};
use crate::clock::Clock;
use crate::config::{Config, Settings};
use crate::crypto::MasterKeyring;
use crate::ids::{OrgId, UserId};
use crate::model::Role;
use crate::oauth::worker::run_worker;
use crate::store::KeyRef;

/// credgate: OAuth-aware integration connector gateway.
#[derive(Debug, Parser)]
#[command(name = "credgate", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and the token refresh worker (applies pending migrations first).
    Serve {
        /// API only: no background token refresh.
        #[arg(long, conflicts_with = "worker_only")]
        no_worker: bool,
        /// The token refresh worker only: no HTTP API.
        #[arg(long)]
        worker_only: bool,
    },
    /// Apply pending migrations and exit.
    Migrate,
    /// Organizations.
    #[command(subcommand)]
    Org(OrgCommand),
    /// API keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Master and organization keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Notifications (webhook events).
    #[command(subcommand)]
    Events(EventsCommand),
    /// Users of an organization.
    #[command(subcommand)]
    User(UserCommand),
}

/// `credgate user …`
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Hand a user's personal credentials to another user or the organization,
    /// remove their grants and revoke their API keys.
    Remove {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        #[arg(long, value_parser = parse_user)]
        user: UserId,
        /// A user id, or `org` to make them organization credentials.
        #[arg(long, value_parser = parse_transfer_to)]
        transfer_to: TransferTo,
    },
}

/// `credgate events …`
#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// Queue the notifications written since TIME for delivery again.
    Replay {
        /// RFC 3339 time (`2026-11-29T08:00:00Z`) or a duration ago (`2h`, `1d`).
        #[arg(long)]
        since: String,
    },
}

/// `credgate org …`
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization; prints its id.
    Create { name: String },
    /// Override the per-provider credential limit of one organization.
    SetLimit {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        #[arg(long)]
        provider: String,
        #[arg(long)]
        max: u32,
    },
    /// Delete an organization with its credentials and data key.
    Delete {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
    },
}

/// `credgate api-key …`
#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Create an API key; prints the token (shown once).
    Create {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        #[arg(long, value_parser = ["admin", "member", "engine"])]
        role: String,
        #[arg(long, value_parser = parse_user)]
        user: Option<UserId>,
        #[arg(long)]
        label: Option<String>,
        /// Stops working after this long: `90d`, `12h`, `30m`, `45s`.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// One line per key: id, role, user, label, created, last used, expires (never the token).
    List {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
    },
    /// Revoke a key, by its id or by its token; it stops working on every
    /// replica within 5 seconds, and the page sessions it opened end now.
    #[command(group(clap::ArgGroup::new("key").required(true).args(["id", "token"])))]
    Revoke {
        /// The key's id (a UUID, as `api-key list` shows it).
        #[arg(long)]
        id: Option<String>,
        /// The key's token itself (a leaked key whose id nobody knows); never printed.
        #[arg(long, value_parser = secret_arg)]
        token: Option<secrecy::SecretString>,
    },
}

/// A command-line value kept as a secret (its `Debug` prints no value).
fn secret_arg(value: &str) -> Result<secrecy::SecretString, std::convert::Infallible> {
    Ok(secrecy::SecretString::from(value.to_owned()))
}

/// `text` with every API token or page-session token in it replaced by
/// its prefix and an ellipsis: what a command prints never carries one.
pub fn redact_tokens(text: &str) -> String {
    static TOKEN: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(r"\b(cgk|cgs)_[A-Za-z0-9_-]+").expect("a valid pattern"));
    TOKEN.replace_all(text, "${1}_…").into_owned()
}

/// `credgate keys …`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Re-wrap every organization data key under the primary master key.
    RotateMaster,
    /// Give an organization a new data key and re-encrypt its credentials.
    RotateOrg {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
    },
    /// Print a new random master key (for CREDGATE_MASTER_KEYS).
    Generate,
}

/// `--org`: an organization id, parsed where it enters.
fn parse_org(raw: &str) -> Result<OrgId, String> {
    OrgId::parse(raw).map_err(|e| e.to_string())
}

/// Where `user remove` hands a user's personal credentials.
#[derive(Debug, Clone)]
pub enum TransferTo {
    /// `org`: they become organization credentials.
    Org,
    /// Another user.
    User(UserId),
}

fn parse_transfer_to(raw: &str) -> Result<TransferTo, String> {
    match raw {
        "org" => Ok(TransferTo::Org),
        user => parse_user(user).map(TransferTo::User),
    }
}

/// `--user`: a user id, parsed where it enters.
fn parse_user(raw: &str) -> Result<UserId, String> {
    UserId::parse(raw).map_err(|e| e.to_string())
}

/// Runs one command; `shutdown` ends `serve`.
pub async fn run(cli: Cli, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let config = Config::from_settings(&cli.settings);
    match cli.command {
        Command::Serve { no_worker, worker_only } => {
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            });
            let services = Services::init(config).await?;
            if worker_only {
                let ctx = context(services)?;
                let dispatcher = tokio::spawn(ctx.webhooks.clone().run_dispatcher(ctx.store.clone(), stop_rx.clone()));
                run_worker(ctx, stop_rx).await;
                let _ = dispatcher.await;
                return Ok(());
            }
            let app = Application::from_services(services).await?;
            tracing::info!(port = app.port(), worker = !no_worker, "credgate is serving");
            let worker = (!no_worker).then(|| tokio::spawn(run_worker(app.state().ctx.clone(), stop_rx.clone())));
            let mut stop = stop_rx;
            app.run_until(async move {
                let _ = stop.wait_for(|stopped| *stopped).await;
            })
            .await?;
            if let Some(worker) = worker {
                // In-flight refreshes finish (bounded by the provider timeout).
                let _ = worker.await;
            }
        }
        Command::Migrate => {
            connect_and_migrate(&config, Clock::system()).await?;
        }
        Command::Keys(KeysCommand::Generate) => println!("{}", MasterKeyring::generate_key().expose_secret()),
        command => {
            let services = Services::init(config).await?;
            admin(&services, command).await?;
            services.store.close().await;
        }
    }
    Ok(())
}

async fn require_org(services: &Services, org: &OrgId) -> anyhow::Result<OrgId> {
    if !services.store.org_exists(org).await? {
        bail!("organization {org} does not exist");
    }
    Ok(org.clone())
}

async fn admin(services: &Services, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Org(OrgCommand::Create { name }) => {
            if name.trim().is_empty() {
                bail!("the organization name must not be empty");
            }
            let id = OrgId::generate();
            services.vault.create_org(&id, name.trim()).await?;
            println!("{id}");
        }
        Command::Org(OrgCommand::SetLimit { org, provider, max }) => {
            let org = require_org(services, &org).await?;
            if services.registry.get(&provider).is_none() {
                bail!("provider {provider:?} is not defined in the providers directory");
            }
            services.store.set_org_limit(&org, &provider, max.into()).await?;
        }
        Command::Org(OrgCommand::Delete { org }) => {
            // Not `require_org`: an organization whose removal was
            // interrupted is already marked deleted, and is finished here.
            match services.vault.delete_org(&org).await {
                Ok(rows) => eprintln!("organization {org} deleted: its data keys destroyed, {rows} rows removed"),
                Err(crate::vault::VaultError::Store(crate::store::StoreError::NotFound)) => {
                    bail!("organization {org} does not exist")
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::ApiKey(ApiKeyCommand::Create {
            org,
            role,
            user,
            label,
            expires_in,
        }) => {
            let org = require_org(services, &org).await?;
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
            let token = crate::api_tokens::create(&services.store, &org, role, new).await?;
            println!("{token}");
        }
        Command::ApiKey(ApiKeyCommand::List { org }) => {
            let org = require_org(services, &org).await?;
            let time = |t: Option<i64>| {
                t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                    .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
            };
            for key in services.store.list_api_keys(&org).await? {
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
        Command::ApiKey(ApiKeyCommand::Revoke { id, token }) => {
            // What the operator typed is printed only once it is known to be
            // an id: a token given in the wrong place is never echoed.
            let (key_id, _) = match (id, token) {
                (Some(id), _) => {
                    let id = Uuid::parse_str(id.trim())
                        .map_err(|_| {
                            anyhow::anyhow!(
                                "--id takes a key id (a UUID, as `api-key list` shows it); to revoke by the \
                                 token, use --token (what was given is not printed)"
                            )
                        })?
                        .to_string();
                    services
                        .store
                        .revoke_api_key(KeyRef::Id(&id), "cli")
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("no API key {id} that is not already revoked"))?
                }
                (None, Some(token)) => services
                    .store
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
            eprintln!("API key {key_id} revoked; replicas stop accepting it within 5 seconds, its page sessions ended");
        }
        Command::User(UserCommand::Remove { org, user, transfer_to }) => {
            let org = require_org(services, &org).await?;
            let to = match &transfer_to {
                TransferTo::Org => None,
                TransferTo::User(to) => Some(to),
            };
            let ctx = context(services.clone())?;
            let done = crate::credentials::remove_user(&ctx, &org, &user, to, "cli")
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
            eprintln!(
                "user {user}: {} credentials transferred to {}, {} grants removed, {} API keys revoked",
                done.transferred.len(),
                to.map_or("the organization", |u| u.as_str()),
                done.grants_removed,
                done.keys_revoked
            );
        }
        Command::Events(EventsCommand::Replay { since }) => {
            let at = chrono::DateTime::parse_from_rfc3339(since.trim())
                .map(|t| t.timestamp())
                .ok()
                .or_else(|| parse_duration(&since).map(|ago| services.store.now() - ago))
                .with_context(|| format!("--since {since:?} is neither an RFC 3339 time nor a duration like 2h"))?;
            let n = services.store.replay_events(at).await?;
            eprintln!("{n} notifications queued for delivery again");
        }
        Command::Keys(KeysCommand::RotateMaster) => {
            let n = services.vault.rotate_master().await?;
            eprintln!("re-wrapped {n} data keys under the primary master key");
        }
        Command::Keys(KeysCommand::RotateOrg { org }) => {
            let org = require_org(services, &org).await?;
            let done = services.vault.rotate_org(&org).await?;
            eprintln!(
                "organization {org}: data key version {}, {} credentials and {} named secrets re-encrypted",
                done.version, done.resealed, done.secrets_resealed
            );
        }
        Command::Serve { .. } | Command::Migrate | Command::Keys(KeysCommand::Generate) => {
            unreachable!("handled by run")
        }
    }
    Ok(())
}
