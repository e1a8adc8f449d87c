//! Building credgate from its configuration: the shared services (store,
//! vault, registry) and the HTTP application bound to its port.

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};
use tokio::net::TcpListener;

use crate::api_tokens::{legacy_hashes, TokenFormat};
use crate::clock::Clock;
use crate::config::{redact_url, Config};
use crate::context::Context;
use crate::context::Refresher;
use crate::crypto::MasterKeyring;
use crate::egress::EgressPolicy;
use crate::group_commit::{CreateLog, Creates, ReadGroup, Reads, RefreshLog, Refreshes, UseLog, Uses};
use crate::http::auth::KeyCache;
use crate::http::ratelimit::RateLimits;
use crate::http::{self, AppState, SharedState};
use crate::metrics::Metrics;
use crate::probes::{ApiBaseUrls, ProbeContext, ProbeTimeouts};
use crate::providers::{load_catalog, Registry};
use crate::store::{Dialect, Store};
use crate::vault::Vault;
use crate::webhooks::Webhooks;

/// Name of the master key file kept beside a SQLite database.
pub const MASTER_KEY_FILE: &str = "credgate.master.key";

/// What every command needs: store (migrated), vault (keys checked), registry.
#[derive(Debug, Clone)]
pub struct Services {
    pub config: Arc<Config>,
    pub store: Store,
    pub vault: Arc<Vault>,
    pub registry: Arc<Registry>,
    pub clock: Clock,
}

impl Services {
    /// Connects, migrates, loads providers and checks the master keys.
    pub async fn init(config: Config) -> anyhow::Result<Self> {
        Self::init_with_clock(config, Clock::system()).await
    }

    /// [`Services::init`] with a clock of the caller's (tests move time).
    pub async fn init_with_clock(config: Config, clock: Clock) -> anyhow::Result<Self> {
        let registry = Registry::new(load_catalog(
            config.providers_dir.as_deref(),
            &config.provider_overrides,
        )?);
        let store = connect_and_migrate(&config, clock.clone()).await?;
        let vault = open_vault(&config, &store, KeyFile::CreateForNewDatabase).await?;
        if store.dialect() == Dialect::Postgres && store.commit_durability().await? == "off" {
            tracing::warn!(
                "PostgreSQL runs with synchronous_commit = off: a crash of its server may lose writes that \
                 credgate answered as done (resolves' use records, rotated refresh tokens); set it to on"
            );
        }
        Ok(Self {
            config: Arc::new(config),
            store,
            vault: Arc::new(vault),
            registry: Arc::new(registry),
            clock,
        })
    }
}

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

/// The domain context over initialized services (starts the webhook sender).
pub fn context(services: Services) -> anyhow::Result<Context> {
    let config = services.config;
    let http = crate::oauth_client::http_client(Duration::from_secs(config.provider_timeout_secs));
    let webhooks = match (&config.webhook_url, &config.webhook_secret) {
        (None, _) => Webhooks::default(),
        (Some(_), None) => anyhow::bail!("CREDGATE_WEBHOOK_SECRET is required with CREDGATE_WEBHOOK_URL"),
        (Some(url), Some(secret)) => Webhooks::new(Some(url.clone()), secret.clone(), http.clone()),
    };
    let egress = EgressPolicy::parse_allow_list(&config.egress_allow)
        .map_err(|e| anyhow::anyhow!("CREDGATE_EGRESS_ALLOW: {e}"))?;
    let base = |id: &str, default: String| {
        services
            .registry
            .get(id)
            .and_then(|p| p.api_base_url.as_ref())
            .map_or(default, |u| u.as_str().trim_end_matches('/').to_owned())
    };
    let defaults = ApiBaseUrls::default();
    let base_urls = ApiBaseUrls {
        openai: base("openai", defaults.openai),
        anthropic: base("anthropic", defaults.anthropic),
        telegram: base("telegram", defaults.telegram),
    };
    let probes = ProbeContext::new(Arc::new(EgressPolicy::new(egress)), ProbeTimeouts::default(), base_urls)?;
    Ok(Context {
        probes: Arc::new(probes),
        metrics: Arc::new(Metrics::default()),
        refresher: Arc::new(Refresher::new(
            config.refresh_rate_per_provider,
            config.refresh_concurrency,
        )),
        webhooks,
        http,
        config,
        store: services.store.clone(),
        vault: services.vault,
        registry: services.registry,
        clock: services.clock,
        worker: Arc::default(),
        uses: UseLog::new(Uses(services.store.clone())),
        creates: CreateLog::new(Creates(services.store.clone())),
        reads: ReadGroup::new(Reads(services.store.clone())),
        refreshes: RefreshLog::new(Refreshes(services.store.clone())),
    })
}

/// Comma-separated CIDRs (or single addresses).
fn parse_cidrs(text: &str) -> Result<Vec<ipnet::IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(|c| {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("{c:?} is not a CIDR or an IP address"))
        })
        .collect()
}

/// The HTTP state: the domain context plus what only HTTP needs.
pub async fn app_state(services: Services) -> anyhow::Result<AppState> {
    let ctx = context(services)?;
    let trusted_proxies =
        parse_cidrs(&ctx.config.trusted_proxies).map_err(|e| anyhow::anyhow!("CREDGATE_TRUSTED_PROXIES: {e}"))?;
    let format = TokenFormat::load(&ctx.store)
        .await
        .context("cannot read the API tokens' checksum key")?;
    let legacy = legacy_hashes(&ctx.store)
        .await
        .context("cannot read the API keys issued before checksums")?;
    Ok(AppState::new(SharedState {
        keys: Arc::new(KeyCache::new(format, legacy)),
        trusted_proxies: Arc::new(trusted_proxies),
        ready: Arc::default(),
        listings: Arc::default(),
        limits: Arc::new(RateLimits::new(
            ctx.config.rate_limit_per_org,
            ctx.config.probe_limit_per_min,
            ctx.config.auth_failures_per_sec,
        )),
        ctx,
    }))
}

/// What a `serve` process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runs {
    /// The API and the refresh worker.
    Both,
    /// The API alone (`--no-worker`).
    ApiOnly,
    /// The refresh worker alone (`--worker-only`): its listen address
    /// answers `/healthz`, `/readyz` and `/metrics` only.
    WorkerOnly,
}

/// The HTTP application, bound and ready to serve.
pub struct Application {
    listener: TcpListener,
    /// `CREDGATE_OPS_LISTEN`: `/metrics` and the health routes apart.
    ops_listener: Option<TcpListener>,
    state: AppState,
    runs: Runs,
}

impl Application {
    /// Builds the services and binds `config.listen` (port 0 picks one).
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let services = Services::init(config).await?;
        Self::from_services(services).await
    }

    /// Binds an application over already-initialized services.
    pub async fn from_services(services: Services) -> anyhow::Result<Self> {
        Self::from_services_running(services, Runs::Both).await
    }

    /// [`Application::from_services`] for a process that runs `runs`.
    pub async fn from_services_running(services: Services, runs: Runs) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(services.config.listen)
            .await
            .with_context(|| format!("cannot listen on {} (CREDGATE_LISTEN)", services.config.listen))?;
        let ops_listener = match services.config.ops_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (CREDGATE_OPS_LISTEN)"))?,
            ),
            None => None,
        };
        let mut config = (*services.config).clone();
        // The default public URL is the listen address; with port 0 that is
        // only known now.
        if config.public_url == format!("http://{}", config.listen) {
            config.public_url = format!("http://{}", listener.local_addr()?);
        }
        let state = app_state(Services {
            config: Arc::new(config),
            ..services
        })
        .await?;
        if runs != Runs::ApiOnly {
            state.metrics.register_worker();
        }
        Ok(Self {
            listener,
            ops_listener,
            state,
            runs,
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().unwrap_or(self.state.config.listen)
    }

    /// The bound address of `CREDGATE_OPS_LISTEN`, when set.
    pub fn ops_addr(&self) -> Option<std::net::SocketAddr> {
        self.ops_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The shared state (tests reach the store through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until `shutdown` resolves, then finishes in-flight requests.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let limits = self.state.limits.clone();
        let evictor = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limits.evict_idle();
            }
        });
        let (stop_dispatcher, dispatcher_stop) = tokio::sync::watch::channel(false);
        let dispatcher = tokio::spawn(
            self.state
                .webhooks
                .clone()
                .run_dispatcher(self.state.store.clone(), dispatcher_stop),
        );
        let limits = http::serve::Limits {
            header_read_timeout: Duration::from_secs(self.state.config.header_read_timeout_secs.max(1)),
            max_connections: self.state.config.max_connections,
        };
        let (app, ops) = match (self.runs, self.ops_listener.is_some()) {
            (Runs::WorkerOnly, true) => (
                http::ops_app(self.state.clone()),
                Some(http::ops_app(self.state.clone())),
            ),
            (Runs::WorkerOnly, false) => (http::ops_app(self.state.clone()), None),
            (_, true) => (
                http::app_without_metrics(self.state.clone()),
                Some(http::ops_app(self.state.clone())),
            ),
            (_, false) => (http::app(self.state.clone()), None),
        };
        let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
        let ops_served = match (ops, self.ops_listener) {
            (Some(ops), Some(listener)) => Some(tokio::spawn(http::serve::serve(
                listener,
                ops,
                limits,
                shutdown.clone(),
            ))),
            _ => None,
        };
        let served = http::serve::serve(self.listener, app, limits, shutdown).await;
        if let Some(ops) = ops_served {
            let _ = ops.await;
        }
        let _ = stop_dispatcher.send(true);
        let _ = dispatcher.await;
        evictor.abort();
        served
    }
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

    #[test]
    fn database_passwords_are_redacted_from_messages() {
        assert!(!redact_url("postgres://u:hunter2@db/x").contains("hunter2"));
    }
}
