//! The command line: `serve`, `migrate`, organizations, API keys and keys.
//!
//! Only `serve` and `migrate` create a database (or a key file) or migrate
//! one; every other command opens the store as it is. Commands that change
//! no sealed rows ([`rows`]) need neither master keys nor provider files;
//! the others ([`sealed`]) check the master keys against every data key.

mod rows;
mod sealed;

use clap::{Parser, Subcommand};
use secrecy::ExposeSecret;

use crate::app::{connect_and_migrate, open_existing_store, open_vault, Application, KeyFile, Runs, Services};
use crate::clock::Clock;
use crate::config::{Config, Settings};
use crate::crypto::MasterKeyring;
use crate::ids::{OrgId, UserId};
use crate::oauth::worker::run_worker;

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
    /// Apply pending migrations (creating the database, and with SQLite the
    /// master key file, when missing) and exit.
    Migrate,
    /// Check the data derived from the stored rows (per-provider credential
    /// counters, listing versions) and fix what drifted; prints what changed.
    Repair,
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
        /// Only this organization's notifications.
        #[arg(long, value_parser = parse_org)]
        org: Option<OrgId>,
    },
}

/// `credgate org …`
#[derive(Debug, Subcommand)]
pub enum OrgCommand {
    /// Create an organization; prints its id.
    Create { name: String },
    /// One line per organization: id, name, created, credentials.
    List,
    /// One organization's per-provider limit overrides: provider, limit.
    Limits {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
    },
    /// Override the per-provider credential limit of one organization, or
    /// remove the override (`--clear`: the default applies again).
    #[command(group(clap::ArgGroup::new("limit").required(true).args(["max", "clear"])))]
    SetLimit {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        #[arg(long)]
        provider: String,
        /// At most this many credentials of the provider; `0` allows none
        /// (unlike the rate limits, where 0 turns the limit off).
        #[arg(long)]
        max: Option<u32>,
        /// Remove the override.
        #[arg(long)]
        clear: bool,
    },
    /// Delete an organization with its credentials and data key; without
    /// `--yes` it only says what it would delete.
    Delete {
        #[arg(long, value_parser = parse_org)]
        org: OrgId,
        /// Delete (without it, nothing is changed).
        #[arg(long)]
        yes: bool,
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
    /// Print a new random master key (for CREDGATE_MASTER_KEYS) on stdout,
    /// its id on stderr.
    Generate,
    /// One line per configured master key (id, primary or not, data keys it
    /// wraps), and one per key id that data keys need but the configuration lacks.
    List,
}

/// `--org`: an organization id, parsed where it enters.
pub(crate) fn parse_org(raw: &str) -> Result<OrgId, String> {
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
        Command::Serve { no_worker, worker_only } => serve(config, no_worker, worker_only, shutdown).await?,
        Command::Migrate => {
            let store = connect_and_migrate(&config, Clock::system()).await?;
            open_vault(&config, &store, KeyFile::CreateForNewDatabase).await?;
            let pending = store.pending_migrations().await?;
            store.close().await;
            anyhow::ensure!(pending.is_empty(), "migrations {pending:?} were not applied");
            println!("the database is migrated");
        }
        Command::Keys(KeysCommand::Generate) => {
            let key = MasterKeyring::generate_key();
            println!("{}", key.expose_secret());
            let kid = MasterKeyring::kid(&key).unwrap_or_default();
            eprintln!("key id {kid}");
        }
        command @ (Command::Org(OrgCommand::Create { .. })
        | Command::Keys(KeysCommand::RotateMaster | KeysCommand::RotateOrg { .. })) => {
            let store = open_existing_store(&config, Clock::system()).await?;
            let done = match open_vault(&config, &store, KeyFile::ReadOnly).await {
                Ok(vault) => sealed::run(&config, &store, &vault, command).await,
                Err(e) => Err(e),
            };
            store.close().await;
            done?;
        }
        command => {
            let store = open_existing_store(&config, Clock::system()).await?;
            let done = rows::run(&config, &store, command).await;
            store.close().await;
            done?;
        }
    }
    Ok(())
}

/// `serve`: the API and the worker, or either alone. A worker alone still
/// answers `/healthz`, `/readyz` and `/metrics` on its listen address.
async fn serve(
    config: Config,
    no_worker: bool,
    worker_only: bool,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    config.check().map_err(anyhow::Error::msg)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let services = Services::init(config).await?;
    let role = match (no_worker, worker_only) {
        (_, true) => Runs::WorkerOnly,
        (true, _) => Runs::ApiOnly,
        _ => Runs::Both,
    };
    let app = Application::from_services_running(services, role).await?;
    tracing::info!(
        address = %app.local_addr(),
        public_url = %app.state().config.public_url,
        api = role != Runs::WorkerOnly,
        worker = role != Runs::ApiOnly,
        "credgate is serving on http://{}",
        app.local_addr()
    );
    let ctx = app.state().ctx.clone();
    let dropped = tokio::spawn(crate::telemetry::report_dropped());
    let worker = (role != Runs::ApiOnly).then(|| tokio::spawn(run_worker(ctx.clone(), stop_rx.clone())));
    let mut stop = stop_rx;
    app.run_until(async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    })
    .await?;
    if let Some(worker) = worker {
        // In-flight refreshes finish (bounded by the provider timeout).
        let _ = worker.await;
    }
    // So do the refreshes and code exchanges that requests started, their
    // callers gone or not: the provider's answer, then at most 40 s of
    // writing it again through a store outage.
    let within = std::time::Duration::from_secs(ctx.config.provider_timeout_secs + 45);
    if !ctx.refresher.finished(within).await {
        tracing::warn!("a token refresh or code exchange was still running when the server stopped");
    }
    dropped.abort();
    Ok(())
}

/// A time as commands print it (RFC 3339), or `-`.
fn time(t: Option<i64>) -> String {
    t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
}

/// `organization X does not exist` unless it does.
async fn require_org(store: &crate::store::Store, org: &OrgId) -> anyhow::Result<()> {
    if !store.org_exists(org).await? {
        anyhow::bail!("organization {org} does not exist");
    }
    Ok(())
}
