//! credgate: an OAuth-aware integration connector gateway. It keeps an
//! organization's credentials for outside systems encrypted (Fernet under
//! per-organization data keys wrapped by master keys), connects OAuth
//! accounts, probes connections, and hands decrypted values only to the
//! workflow engine at execution time.

pub mod app;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod egress;
pub mod error;
pub mod http;
pub mod metrics;
pub mod oauth;
pub mod probes;
pub mod providers;
pub mod ratelimit;
pub mod store;
pub mod telemetry;
pub mod vault;
pub mod webhooks;
