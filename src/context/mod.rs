//! The domain context: everything the credential service, the OAuth flow,
//! the refresher, the worker and the CLI run on — and nothing about HTTP.

mod gateway_slots;
mod recent_reads;
mod refresher;
mod worker_health;

use std::sync::Arc;

pub use gateway_slots::GatewaySlots;
pub use recent_reads::RecentReads;
pub use refresher::Refresher;
pub use worker_health::{WorkerHealth, STUCK_AFTER_SECS};

use crate::clock::Clock;
use crate::config::Config;
use crate::group_commit::{CreateLog, OutcomeLog, ReadGroup, RefreshLog, UseLog};
use crate::metrics::Metrics;
use crate::probes::ProbeContext;
use crate::providers::Registry;
use crate::store::Store;
use crate::vault::Vault;
use crate::webhooks::Webhooks;

/// Shared domain services; cheap to clone.
#[derive(Debug, Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub store: Store,
    pub vault: Arc<Vault>,
    pub registry: Arc<Registry>,
    /// Client for provider endpoints (redirects off, timeouts).
    pub http: reqwest::Client,
    /// The same behind the egress guard: for endpoints a person named (an
    /// MCP server's, and its authorization server's).
    pub guarded_http: reqwest::Client,
    /// The gateway's client: guarded, a connect time limit, and no limit on
    /// a whole call (a download may stream for long).
    pub gateway_http: crate::egress::GatewayClient,
    /// The gateway's per-credential caps in this process.
    pub gateway: Arc<GatewaySlots>,
    pub refresher: Arc<Refresher>,
    pub webhooks: Webhooks,
    pub metrics: Arc<Metrics>,
    /// Probe settings: egress guard, time limits, provider base URLs.
    pub probes: Arc<ProbeContext>,
    pub clock: Clock,
    /// This process's refresh worker, if it runs one: its liveness.
    pub worker: Arc<WorkerHealth>,
    /// Resolves' use events, committed in groups.
    pub uses: UseLog,
    /// Gateway calls' outcomes, added to their uses in groups.
    pub outcomes: OutcomeLog,
    /// Creates, committed in groups.
    pub creates: CreateLog,
    /// The access check's credential reads, grouped.
    pub reads: ReadGroup,
    /// The last read of each credential for a use, checked by the next
    /// use's own write.
    pub recent_reads: Arc<RecentReads>,
    /// Refreshed tokens, committed in groups.
    pub refreshes: RefreshLog,
}

impl Context {
    /// Unix seconds now.
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// `row`'s health now.
    pub fn health_of(&self, row: &crate::store::CredentialRow) -> crate::model::Health {
        row.health(self.now(), self.expiry_warn_secs())
    }

    /// `CREDGATE_EXPIRY_WARN_DAYS` in seconds.
    pub fn expiry_warn_secs(&self) -> i64 {
        i64::from(self.config.expiry_warn_days) * 86_400
    }

    /// The client for `settings`' endpoints: the guarded one where a person,
    /// not the operator, chose them (an MCP server's).
    pub fn http_for(&self, settings: &crate::providers::OAuthSettings) -> &reqwest::Client {
        if settings.dynamic_registration {
            &self.guarded_http
        } else {
            &self.http
        }
    }
}
