//! Building credgate from its configuration: the shared services (store,
//! vault, registry) and the HTTP application bound to its port.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;

use crate::api_tokens::{legacy_hashes, TokenFormat};
use crate::clock::Clock;
use crate::config::Config;
use crate::context::Context;
use crate::context::GatewaySlots;
use crate::context::Refresher;
use crate::egress::EgressPolicy;
use crate::group_commit::{
    CreateLog, Creates, OutcomeLog, Outcomes, ReadGroup, Reads, RefreshLog, Refreshes, UseLog, Uses,
};
use crate::http::auth::KeyCache;
use crate::http::ratelimit::RateLimits;
use crate::http::{self, AppState, SharedState};
use crate::metrics::Metrics;
use crate::probes::{ApiBaseUrls, ProbeContext, ProbeTimeouts};
use crate::providers::{load_catalog, Registry};
use crate::store::{Dialect, Store};
use crate::vault::Vault;
use crate::webhooks::Webhooks;

mod open;

pub use open::{
    configured_master_keys, connect_and_migrate, open_existing_store, open_vault, rewrite_key_file, KeyFile,
    MASTER_KEY_FILE,
};

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
    let egress = Arc::new(EgressPolicy::new(egress));
    let provider_timeout = Duration::from_secs(config.provider_timeout_secs);
    let guarded_http = egress.http_client(provider_timeout.min(Duration::from_secs(5)), provider_timeout)?;
    let gateway_http = egress.gateway_client(provider_timeout.min(Duration::from_secs(5)))?;
    let probes = ProbeContext::new(egress, ProbeTimeouts::default(), base_urls)?;
    Ok(Context {
        guarded_http,
        gateway_http,
        gateway: Arc::new(GatewaySlots::new(config.proxy_concurrency_per_credential)),
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
        outcomes: OutcomeLog::new(Outcomes(services.store.clone())),
        creates: CreateLog::new(Creates(services.store.clone())),
        reads: ReadGroup::new(Reads(services.store.clone())),
        recent_reads: Arc::default(),
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
        let _evictor = Background(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                limits.evict_idle();
            }
        }));
        let (stop_dispatcher, dispatcher_stop) = tokio::sync::watch::channel(false);
        let mut dispatcher = Background(tokio::spawn(
            self.state
                .webhooks
                .clone()
                .run_dispatcher(self.state.store.clone(), dispatcher_stop.clone()),
        ));
        let mut endpoints = Background(tokio::spawn(crate::webhook_endpoints::run_dispatcher(
            crate::context::Context::clone(&self.state),
            dispatcher_stop,
        )));
        // A replica serving the gateway takes its share of each
        // credential's cap before its first call, and keeps it current.
        let replica = (self.runs != Runs::WorkerOnly).then(|| uuid::Uuid::new_v4().to_string());
        let _beating = match &replica {
            Some(id) => {
                let first = tokio::time::timeout(
                    crate::gateway::REPLICA_BEAT,
                    crate::gateway::replica_beat(&self.state, id),
                );
                if !matches!(first.await, Ok(Ok(_))) {
                    tracing::warn!("this replica could not count the live replicas yet; it allows the whole gateway cap until it can");
                }
                Some(Background(tokio::spawn(beat_replica(
                    crate::context::Context::clone(&self.state),
                    id.clone(),
                ))))
            }
            None => None,
        };
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
        drop(_beating);
        if let Some(id) = &replica {
            let gone = tokio::time::timeout(Duration::from_secs(5), crate::gateway::replica_gone(&self.state, id));
            if !matches!(gone.await, Ok(Ok(()))) {
                tracing::warn!(
                    "this replica could not strike itself from the live replicas; the others take its share of the gateway cap within {} s",
                    crate::gateway::REPLICA_EXPIRES_SECS
                );
            }
        }
        // The gateway calls just answered queued their outcomes; those
        // whose engines left while their use was written queue theirs once
        // it is (promised: waited for too).
        if !self.state.outcomes.settled(Duration::from_secs(10)).await {
            tracing::warn!("gateway calls' outcomes were still unwritten after 10 s; they are lost");
        }
        let _ = stop_dispatcher.send(true);
        let _ = (&mut dispatcher.0).await;
        let _ = (&mut endpoints.0).await;
        served
    }
}

/// A task of a serving process that ends with it: also when the serving
/// future is dropped rather than run to its end (it would otherwise keep
/// its database pool, and poll, for the life of the runtime).
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Marks replica `id` live every [`crate::gateway::REPLICA_BEAT`], keeping
/// its share of the gateway cap current; says once when the store cannot
/// be reached and once when it can again.
async fn beat_replica(ctx: Context, id: String) {
    let mut failing = false;
    loop {
        tokio::time::sleep(crate::gateway::REPLICA_BEAT).await;
        match crate::gateway::replica_beat(&ctx, &id).await {
            Ok(_) if failing => {
                failing = false;
                tracing::info!("this replica counts the live replicas again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "this replica cannot count the live replicas; its share of the gateway cap stays as it was");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::redact_url;

    #[test]
    fn database_passwords_are_redacted_from_messages() {
        assert!(!redact_url("postgres://u:hunter2@db/x").contains("hunter2"));
    }
}
