//! credgate: an OAuth-aware integration connector gateway. It keeps an
//! organization's credentials for outside systems encrypted (Fernet under
//! per-organization data keys wrapped by master keys), connects OAuth
//! accounts, probes connections, and hands decrypted values only to the
//! workflow engine at execution time.
//!
//! Imports point one way: `http` → the domain (`credentials`, `oauth`,
//! `execution`, `probes`, `providers`) → `store`, `vault`/`crypto`, `egress`.

pub mod api_tokens;
pub mod app;
pub mod aws_sign;
pub mod cli;
pub mod clock;
pub mod config;
pub mod context;
pub mod credentials;
pub mod crypto;
pub mod egress;
pub mod error;
pub mod execution;
pub mod fifo;
pub mod gateway;
pub mod group_commit;
pub mod http;
pub mod ids;
pub mod metrics;
pub mod model;
pub mod named_secrets;
pub mod oauth;
pub mod oauth_apps;
pub mod oauth_client;
pub mod probes;
pub mod providers;
pub mod sessions;
pub mod store;
pub mod telemetry;
pub mod vault;
pub mod webhook_endpoints;
pub mod webhooks;
