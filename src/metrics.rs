//! Prometheus metrics (text exposition at `/metrics`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of one HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// Labels of a latency observation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

/// Labels of a refresh attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefreshLabels {
    pub provider: String,
    /// `success`, `needs_reauth`, `transient_failure`.
    pub outcome: String,
}

/// A provider label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub provider: String,
}

/// Labels of a gateway call: the provider and the service's status class
/// (`2xx` … `5xx`, or `failed` when no answer came).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayLabels {
    pub provider: String,
    pub status_class: String,
}

/// Labels of an attempt to deliver to an organization's webhook endpoint:
/// `delivered`, `refused` (an HTTP answer but 2xx), `unreachable`,
/// `denied` (the egress policy), `unreadable` (its secret did not open);
/// and `given_up`, besides, when the last attempt failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub outcome: &'static str,
}

/// Metric families only a process that runs the refresh worker exports.
const WORKER_ONLY: [&str; 2] = [
    "credgate_worker_last_step_timestamp_seconds",
    "credgate_token_refresh_backlog",
];

/// Every metric credgate exports.
pub struct Metrics {
    registry: Registry,
    /// `credgate_http_requests_total{method,route,status}`.
    pub requests: Family<RequestLabels, Counter>,
    /// `credgate_http_request_duration_seconds{method,route}`.
    pub latency: Family<RouteLabels, Histogram>,
    /// `credgate_token_refresh_attempts_total{provider,outcome}`.
    pub refresh_attempts: Family<RefreshLabels, Counter>,
    /// `credgate_token_refresh_duration_seconds{provider}`.
    pub refresh_latency: Family<ProviderLabels, Histogram>,
    /// Gateway calls by provider and the service's status class.
    pub gateway_calls: Family<GatewayLabels, Counter>,
    /// `credgate_webhook_deliveries_total{outcome}`: attempts to deliver to
    /// organizations' endpoints.
    pub webhook_deliveries: Family<DeliveryLabels, Counter>,
    /// Time to the service's answer (its head), by provider.
    pub gateway_latency: Family<ProviderLabels, Histogram>,
    /// `credgate_token_refresh_backlog`: due but not yet refreshed.
    pub refresh_backlog: Gauge,
    /// `credgate_gateway_outcomes_unwritten`: gateway calls' outcomes this
    /// process has queued and not yet written (set when scraped).
    pub gateway_outcomes_unwritten: Gauge,
    /// `credgate_gateway_replicas`: live replicas sharing the gateway's
    /// per-credential cap, as this one last counted them.
    pub gateway_replicas: Gauge,
    /// `credgate_worker_last_step_timestamp_seconds`: when this process's
    /// refresh worker last finished a step.
    pub worker_last_step: Gauge,
    /// `credgate_api_key_lookups_total`: bearer tokens looked up in the
    /// store (neither cached as known nor as unknown).
    pub api_key_lookups: Counter,
    /// `credgate_readiness_store_checks_total`: times `/readyz` asked the
    /// store (its answer is kept for a second).
    pub readiness_checks: Counter,
    /// Whether this process runs the refresh worker: only then are the
    /// worker's own gauges exported (an API-only replica's would read 0).
    worker: std::sync::atomic::AtomicBool,
    /// `credgate_listing_pages_read_total`: listing pages read from the
    /// store's tables.
    pub listing_pages_read: Counter,
    /// `credgate_listing_pages_reused_total`: listing pages read before in
    /// this process, served again after a check found them unchanged.
    pub listing_pages_reused: Counter,
    /// `credgate_listing_pages_uses_read_total`: listing pages read before
    /// in this process, served again with their rows' use times read anew
    /// (nothing else about them had changed).
    pub listing_pages_uses_read: Counter,
    /// `credgate_use_reads_reused_total`: uses (resolves, gateway calls)
    /// decided on this process's earlier read of their credential, which
    /// their own write found still current.
    pub use_reads_reused: Counter,
    /// `credgate_use_reads_stale_total`: uses whose earlier read was no
    /// longer current (or would have needed a refresh), decided again on a
    /// read of their own.
    pub use_reads_stale: Counter,
    /// `credgate_log_lines_dropped_total`: log lines dropped because
    /// stderr did not take them in time (see `telemetry`); brought up to
    /// date at each rendering.
    log_lines_dropped: Counter,
    /// The dropped lines already counted in `log_lines_dropped`.
    log_lines_dropped_seen: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("credgate");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        registry.register("http_requests", "HTTP requests by route and status", requests.clone());
        registry.register("http_request_duration_seconds", "HTTP request latency", latency.clone());
        let refresh_attempts = Family::<RefreshLabels, Counter>::default();
        let refresh_latency = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 12))
        });
        let refresh_backlog = Gauge::default();
        let gateway_calls = Family::<GatewayLabels, Counter>::default();
        let gateway_latency = Family::<ProviderLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 16))
        });
        registry.register(
            "gateway_calls",
            "Gateway calls by provider and the service's status class",
            gateway_calls.clone(),
        );
        let webhook_deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "webhook_deliveries",
            "Attempts to deliver to organizations' webhook endpoints, by outcome",
            webhook_deliveries.clone(),
        );
        let gateway_outcomes_unwritten = Gauge::default();
        registry.register(
            "gateway_outcomes_unwritten",
            "Gateway calls' outcomes this process has queued and not yet written",
            gateway_outcomes_unwritten.clone(),
        );
        let gateway_replicas = Gauge::default();
        gateway_replicas.set(1);
        registry.register(
            "gateway_replicas",
            "Live replicas sharing the gateway's cap on a credential's calls in flight",
            gateway_replicas.clone(),
        );
        registry.register(
            "gateway_upstream_duration_seconds",
            "Time to the service's answer through the gateway",
            gateway_latency.clone(),
        );
        registry.register(
            "token_refresh_attempts",
            "Token refresh attempts by provider and outcome",
            refresh_attempts.clone(),
        );
        registry.register(
            "token_refresh_duration_seconds",
            "Token endpoint latency",
            refresh_latency.clone(),
        );
        registry.register(
            "token_refresh_backlog",
            "OAuth credentials due for refresh",
            refresh_backlog.clone(),
        );
        let worker_last_step = Gauge::default();
        registry.register(
            "worker_last_step_timestamp_seconds",
            "When this process's refresh worker last finished a step (unix seconds)",
            worker_last_step.clone(),
        );
        let api_key_lookups = Counter::default();
        registry.register(
            "api_key_lookups",
            "Bearer tokens looked up in the store (not answered from a cache)",
            api_key_lookups.clone(),
        );
        let readiness_checks = Counter::default();
        registry.register(
            "readiness_store_checks",
            "Times /readyz asked the store whether it is reachable",
            readiness_checks.clone(),
        );
        let listing_pages_read = Counter::default();
        registry.register(
            "listing_pages_read",
            "Credential listing pages read from the store's tables",
            listing_pages_read.clone(),
        );
        let listing_pages_reused = Counter::default();
        registry.register(
            "listing_pages_reused",
            "Credential listing pages read before, served again after a check found them unchanged",
            listing_pages_reused.clone(),
        );
        let listing_pages_uses_read = Counter::default();
        registry.register(
            "listing_pages_uses_read",
            "Credential listing pages read before, served again with their rows' use times read anew",
            listing_pages_uses_read.clone(),
        );
        let use_reads_reused = Counter::default();
        registry.register(
            "use_reads_reused",
            "Uses decided on an earlier read of their credential that their own write found still current",
            use_reads_reused.clone(),
        );
        let use_reads_stale = Counter::default();
        registry.register(
            "use_reads_stale",
            "Uses whose earlier read of their credential was no longer current, decided again on a read of their own",
            use_reads_stale.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because stderr did not take them in time",
            log_lines_dropped.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            refresh_attempts,
            refresh_latency,
            gateway_calls,
            webhook_deliveries,
            gateway_latency,
            refresh_backlog,
            gateway_outcomes_unwritten,
            gateway_replicas,
            worker_last_step,
            api_key_lookups,
            readiness_checks,
            worker: std::sync::atomic::AtomicBool::new(false),
            listing_pages_read,
            listing_pages_reused,
            listing_pages_uses_read,
            use_reads_reused,
            use_reads_stale,
            log_lines_dropped,
            log_lines_dropped_seen: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Registers another metric (used by the worker and probes).
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// This process runs the refresh worker: export its gauges.
    pub fn register_worker(&self) {
        self.worker.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The text exposition: the metrics of what this process runs.
    pub fn render(&self) -> String {
        // Each line dropped is counted once, whichever rendering sees it.
        let dropped = crate::telemetry::dropped_lines();
        let seen = self
            .log_lines_dropped_seen
            .fetch_max(dropped, std::sync::atomic::Ordering::Relaxed);
        if dropped > seen {
            self.log_lines_dropped.inc_by(dropped - seen);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        if self.worker.load(std::sync::atomic::Ordering::Relaxed) {
            return out;
        }
        let of_worker = |line: &str| {
            WORKER_ONLY
                .iter()
                .any(|name| line.split_whitespace().any(|w| w.starts_with(name)))
        };
        out.lines()
            .filter(|line| !of_worker(line))
            .flat_map(|line| [line, "\n"])
            .collect()
    }
}
