//! End-to-end tests, one binary: real SQLite files and a real PostgreSQL
//! server (127.0.0.1:5432), a real sshd, the real HTTP stack on loopback
//! ports, and stand-ins for the providers.

mod helpers;

mod access;
mod architecture;
mod auth_limits;
mod catalog;
mod cli;
mod connections;
mod credentials;
mod durability;
mod gateway;
mod gateway_answers;
mod gateway_bodies;
mod gateway_refusals;
mod gateway_stalls;
mod gateway_stopping;
mod generated_client;
mod generic;
mod group_commit;
mod group_retries;
mod hardening;
mod health;
mod idempotency;
mod left_callers;
mod limits;
mod liveness;
mod mcp;
mod minted;
mod notifications;
mod oauth;
mod oauth_apps;
mod oauth_server;
mod openapi_conformance;
mod openapi_schemas;
mod operations;
mod operator;
mod org_deletion;
mod outage;
mod outbox;
mod ownership;
mod pages;
mod paging;
mod ports;
mod probes;
mod provider_quirks;
mod races;
mod refresh;
mod refresh_groups;
mod reused_reads;
mod secrecy_checks;
mod secrets;
mod ses;
mod sharing;
mod webhook_endpoints;
