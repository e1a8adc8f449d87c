//! Every setting, read once. Each is an environment variable and a flag
//! (`credgate --listen …` / `CREDGATE_LISTEN=…`), documented on its field
//! below (so `credgate serve --help` lists them all); the one table of them,
//! with their defaults, is `docs/configuration.md`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;
use secrecy::SecretString;

mod redacted;
pub use redacted::redact_url;

/// Settings shared by every command (global flags of the CLI). `Debug`
/// hides the master keys, the webhook secret and the database password.
#[derive(Clone, Args)]
pub struct Settings {
    /// `sqlite://…` (embedded) or `postgres://…` (shared by replicas).
    #[arg(
        long,
        env = "CREDGATE_DATABASE_URL",
        default_value = "sqlite://credgate.db",
        global = true
    )]
    pub database_url: String,
    /// Listen address of the HTTP API.
    #[arg(long, env = "CREDGATE_LISTEN", default_value = "127.0.0.1:8080", global = true)]
    pub listen: SocketAddr,
    /// Base of the OAuth redirect URI.
    #[arg(long, env = "CREDGATE_PUBLIC_URL", global = true)]
    pub public_url: Option<String>,
    /// Comma-separated Fernet master keys; the first encrypts. Prefer the variable to the flag.
    #[arg(long, env = "CREDGATE_MASTER_KEYS", hide_env_values = true, global = true)]
    pub master_keys: Option<String>,
    /// Directory of provider files added to the built-in catalog (a file
    /// replaces the built-in provider of its id). Unset: `./providers` when
    /// it exists, else the built-in catalog alone.
    #[arg(long, env = "CREDGATE_PROVIDERS_DIR", global = true)]
    pub providers_dir: Option<PathBuf>,
    /// The worker refreshes tokens expiring within this many seconds.
    #[arg(long, env = "CREDGATE_REFRESH_LEAD_SECS", default_value_t = 600, global = true)]
    pub refresh_lead_secs: u64,
    /// Resolve refreshes first when the token expires within this many seconds.
    #[arg(long, env = "CREDGATE_RESOLVE_MARGIN_SECS", default_value_t = 300, global = true)]
    pub resolve_margin_secs: u64,
    /// CIDRs that probes may reach although they are not public.
    #[arg(long, env = "CREDGATE_EGRESS_ALLOW", default_value = "", global = true)]
    pub egress_allow: String,
    /// URL prefixes an OAuth `return_to` may start with.
    #[arg(long, env = "CREDGATE_ALLOWED_RETURN_URLS", default_value = "", global = true)]
    pub allowed_return_urls: String,
    /// Credentials per provider per organization.
    #[arg(long, env = "CREDGATE_MAX_PER_PROVIDER", default_value_t = 50, global = true)]
    pub max_per_provider: u32,
    /// API requests per second per organization (0: off).
    #[arg(long, env = "CREDGATE_RATE_LIMIT_PER_ORG", default_value_t = 100, global = true)]
    pub rate_limit_per_org: u32,
    /// Test-connection probes per minute per organization (0: off).
    #[arg(long, env = "CREDGATE_PROBE_LIMIT_PER_MIN", default_value_t = 30, global = true)]
    pub probe_limit_per_min: u32,
    /// Seconds a call to a provider's token or identity endpoint may take.
    #[arg(long, env = "CREDGATE_PROVIDER_TIMEOUT_SECS", default_value_t = 10, global = true)]
    pub provider_timeout_secs: u64,
    /// Token refreshes per second per provider (per replica).
    #[arg(
        long,
        env = "CREDGATE_REFRESH_RATE_PER_PROVIDER",
        default_value_t = 1000,
        global = true
    )]
    pub refresh_rate_per_provider: u32,
    /// Token refreshes in flight at once (per replica).
    #[arg(long, env = "CREDGATE_REFRESH_CONCURRENCY", default_value_t = 64, global = true)]
    pub refresh_concurrency: usize,
    /// A credential is `expiring` within this many days of its grant's or
    /// secret's end.
    #[arg(long, env = "CREDGATE_EXPIRY_WARN_DAYS", default_value_t = 14, global = true)]
    pub expiry_warn_days: u32,
    /// Audit events (uses and gateway calls with their outcomes among them)
    /// older than this many days are deleted by the worker; unset, they are
    /// kept for ever.
    #[arg(long, env = "CREDGATE_AUDIT_RETENTION_DAYS", global = true,
        value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub audit_retention_days: Option<u32>,
    /// Largest request body the gateway forwards, in bytes (413 beyond).
    #[arg(long, env = "CREDGATE_PROXY_MAX_BODY", default_value_t = 10 * 1024 * 1024, global = true)]
    pub proxy_max_body: u64,
    /// Gateway calls in flight per credential (per replica; 429 beyond).
    #[arg(
        long,
        env = "CREDGATE_PROXY_CONCURRENCY_PER_CREDENTIAL",
        default_value_t = 32,
        global = true
    )]
    pub proxy_concurrency_per_credential: usize,
    /// Where to POST signed notifications (optional).
    #[arg(long, env = "CREDGATE_WEBHOOK_URL", global = true)]
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key for webhook signatures (required with the URL).
    #[arg(long, env = "CREDGATE_WEBHOOK_SECRET", hide_env_values = true, global = true)]
    pub webhook_secret: Option<String>,
    /// Seconds a client has to send a request head (and to start the next one
    /// on a kept-alive connection).
    #[arg(long, env = "CREDGATE_HEADER_READ_TIMEOUT_SECS", default_value_t = 30, global = true)]
    pub header_read_timeout_secs: u64,
    /// Connections open at once; more wait in the listen backlog.
    #[arg(long, env = "CREDGATE_MAX_CONNECTIONS", default_value_t = 1024, global = true)]
    pub max_connections: usize,
    /// Failed authentications per second per client address, bursts of twice that (0: off).
    #[arg(long, env = "CREDGATE_AUTH_FAILURES_PER_SEC", default_value_t = 5, global = true)]
    pub auth_failures_per_sec: u32,
    /// Comma-separated CIDRs of reverse proxies whose `X-Forwarded-For` is believed.
    #[arg(long, env = "CREDGATE_TRUSTED_PROXIES", default_value = "", global = true)]
    pub trusted_proxies: String,
    /// Seconds one store operation may take (a statement, a transaction,
    /// waiting for a connection) before the request gets 503
    /// `store_unavailable`: a database that stops answering without closing
    /// the connection hangs nothing longer.
    #[arg(long, env = "CREDGATE_DB_TIMEOUT_SECS", default_value_t = 10, global = true)]
    pub db_timeout_secs: u64,
    /// Connections in this process's database pool: 16 by default with
    /// PostgreSQL (whose own limit is 100 for all clients together), 8 with
    /// SQLite (one writer at a time; more only cost memory).
    #[arg(long, env = "CREDGATE_DB_MAX_CONNECTIONS", global = true)]
    pub db_max_connections: Option<u32>,
    /// A second listen address for `/metrics`, `/healthz` and `/readyz`
    /// alone; when set, `/metrics` is not served on `CREDGATE_LISTEN`.
    #[arg(long, env = "CREDGATE_OPS_LISTEN", global = true)]
    pub ops_listen: Option<SocketAddr>,
    /// Log filter (tracing `EnvFilter` syntax); one it cannot read stops
    /// every command before it starts.
    #[arg(long, env = "CREDGATE_LOG", default_value = "info", global = true, value_parser = crate::telemetry::parse_filter)]
    pub log: String,
    /// `text` or `json`; anything else stops every command before it starts.
    #[arg(long, env = "CREDGATE_LOG_FORMAT", default_value = "text", global = true, value_parser = crate::telemetry::parse_format)]
    pub log_format: crate::telemetry::LogFormat,
}

/// The resolved configuration the application runs with. `Debug` hides
/// secrets: keys, the database password, provider override values.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub listen: SocketAddr,
    /// Base URL without a trailing slash.
    pub public_url: String,
    /// `None`: use (or create) the key file beside a SQLite database.
    pub master_keys: Option<SecretString>,
    /// Provider files added to the built-in catalog (`None`: `./providers`
    /// when it exists).
    pub providers_dir: Option<PathBuf>,
    /// `CREDGATE_PROVIDER_*` variables.
    pub provider_overrides: BTreeMap<String, String>,
    pub refresh_lead_secs: u64,
    pub resolve_margin_secs: u64,
    pub egress_allow: String,
    pub allowed_return_urls: Vec<String>,
    pub max_per_provider: u32,
    pub rate_limit_per_org: u32,
    pub probe_limit_per_min: u32,
    pub provider_timeout_secs: u64,
    pub refresh_rate_per_provider: u32,
    pub refresh_concurrency: usize,
    pub proxy_max_body: u64,
    pub proxy_concurrency_per_credential: usize,
    pub expiry_warn_days: u32,
    /// `CREDGATE_AUDIT_RETENTION_DAYS` (`None`: audit events kept for ever).
    pub audit_retention_days: Option<u32>,
    /// How long the gateway waits for a service's answer to begin.
    pub proxy_first_byte_timeout: std::time::Duration,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<SecretString>,
    pub header_read_timeout_secs: u64,
    pub max_connections: usize,
    pub auth_failures_per_sec: u32,
    /// Reverse proxies whose `X-Forwarded-For` is believed (CIDRs, comma-separated).
    pub trusted_proxies: String,
    /// Pending OAuth authorizations per organization. Not a setting (always
    /// [`MAX_PENDING_OAUTH_PER_ORG`]); tests lower it.
    pub max_pending_oauth: i64,
    /// How long a PostgreSQL statement waits for another session's lock.
    /// Not a setting (always [`crate::store::LOCK_TIMEOUT`]); tests lower it.
    pub store_lock_timeout: std::time::Duration,
    /// How long one store operation may take (`CREDGATE_DB_TIMEOUT_SECS`).
    pub db_timeout: std::time::Duration,
    /// `CREDGATE_DB_MAX_CONNECTIONS` (`None`: the dialect's default).
    pub db_max_connections: Option<u32>,
    /// `CREDGATE_OPS_LISTEN`: `/metrics` (and the health routes) apart.
    pub ops_listen: Option<SocketAddr>,
}

/// Pending OAuth authorizations (states) an organization may have at once:
/// a bound on a table that callers without a callback would otherwise grow.
pub const MAX_PENDING_OAUTH_PER_ORG: i64 = 1000;

/// How long the gateway waits for a service's answer to begin (a slow
/// model's whole completion may come before its first byte), and the
/// longest silence it allows inside either body after that.
pub const PROXY_FIRST_BYTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(300);

impl Config {
    /// Resolves parsed settings and the process environment.
    pub fn from_settings(s: &Settings) -> Self {
        let provider_overrides = std::env::vars()
            .filter(|(k, _)| k.starts_with("CREDGATE_PROVIDER_") && k != "CREDGATE_PROVIDERS_DIR")
            .collect();
        Self {
            database_url: s.database_url.clone(),
            listen: s.listen,
            public_url: s
                .public_url
                .clone()
                .unwrap_or_else(|| format!("http://{}", s.listen))
                .trim_end_matches('/')
                .to_owned(),
            master_keys: s
                .master_keys
                .clone()
                .filter(|k| !k.trim().is_empty())
                .map(SecretString::from),
            providers_dir: s.providers_dir.clone(),
            provider_overrides,
            refresh_lead_secs: s.refresh_lead_secs,
            resolve_margin_secs: s.resolve_margin_secs,
            egress_allow: s.egress_allow.clone(),
            allowed_return_urls: s
                .allowed_return_urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect(),
            max_per_provider: s.max_per_provider,
            rate_limit_per_org: s.rate_limit_per_org,
            probe_limit_per_min: s.probe_limit_per_min,
            provider_timeout_secs: s.provider_timeout_secs,
            refresh_rate_per_provider: s.refresh_rate_per_provider,
            refresh_concurrency: s.refresh_concurrency,
            proxy_max_body: s.proxy_max_body,
            expiry_warn_days: s.expiry_warn_days,
            audit_retention_days: s.audit_retention_days,
            proxy_concurrency_per_credential: s.proxy_concurrency_per_credential.max(1),
            proxy_first_byte_timeout: PROXY_FIRST_BYTE_TIMEOUT,
            webhook_url: s.webhook_url.clone().filter(|u| !u.is_empty()),
            webhook_secret: s
                .webhook_secret
                .clone()
                .filter(|k| !k.is_empty())
                .map(SecretString::from),
            header_read_timeout_secs: s.header_read_timeout_secs,
            max_connections: s.max_connections,
            auth_failures_per_sec: s.auth_failures_per_sec,
            trusted_proxies: s.trusted_proxies.clone(),
            max_pending_oauth: MAX_PENDING_OAUTH_PER_ORG,
            store_lock_timeout: crate::store::LOCK_TIMEOUT,
            db_timeout: std::time::Duration::from_secs(s.db_timeout_secs.max(1)),
            db_max_connections: s.db_max_connections.map(|n| n.max(1)),
            ops_listen: s.ops_listen,
        }
    }

    /// Settings that parse but cannot work, each named with its variable:
    /// a public URL with a path (the pages, their cookies and the OAuth
    /// callback live at the root) or without `http(s)://`.
    pub fn check(&self) -> Result<(), String> {
        let url = url::Url::parse(&self.public_url)
            .map_err(|e| format!("CREDGATE_PUBLIC_URL {:?} is not a URL: {e}", self.public_url))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(format!(
                "CREDGATE_PUBLIC_URL {:?} must be an http:// or https:// URL with a host",
                self.public_url
            ));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "CREDGATE_PUBLIC_URL {:?} has a path: credgate serves its pages, their cookies and the OAuth \
                 callback at the root of its address, so give it a host (or port) of its own in the proxy \
                 rather than a path prefix",
                self.public_url
            ));
        }
        Ok(())
    }

    /// Defaults for `database_url`, as a test or benchmark starts from.
    pub fn for_database(database_url: &str) -> Self {
        let settings = Settings {
            database_url: database_url.to_owned(),
            listen: "127.0.0.1:0".parse().expect("valid address"),
            public_url: None,
            master_keys: None,
            providers_dir: Some(PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/providers"))),
            refresh_lead_secs: 600,
            resolve_margin_secs: 300,
            egress_allow: String::new(),
            allowed_return_urls: String::new(),
            max_per_provider: 50,
            rate_limit_per_org: 100,
            probe_limit_per_min: 30,
            provider_timeout_secs: 10,
            refresh_rate_per_provider: 1000,
            refresh_concurrency: 64,
            proxy_max_body: 10 * 1024 * 1024,
            expiry_warn_days: 14,
            audit_retention_days: None,
            proxy_concurrency_per_credential: 32,
            webhook_url: None,
            webhook_secret: None,
            header_read_timeout_secs: 30,
            max_connections: 1024,
            auth_failures_per_sec: 5,
            trusted_proxies: String::new(),
            db_timeout_secs: 10,
            db_max_connections: None,
            ops_listen: None,
            log: "info".into(),
            log_format: crate::telemetry::LogFormat::Text,
        };
        let mut config = Self::from_settings(&settings);
        config.provider_overrides.clear();
        config
    }
}
