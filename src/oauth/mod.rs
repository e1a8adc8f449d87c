//! OAuth for stored credentials: the authorize/callback flow that connects
//! an account, the refresh of its tokens (single flight, outcome, driver) and
//! the background worker, for any provider whose file declares `oauth2`.
//! The provider calls themselves are in [`crate::oauth_client`].

pub mod flow;
pub mod mcp;
pub mod outcome;
pub mod refresh;
pub mod return_to;
pub mod worker;

/// How long a refresh lease lasts: well past the provider timeout, so a
/// live holder never loses it, short enough that a dead one is replaced.
pub const LEASE_SECS: i64 = 60;

/// Seconds a pending authorization (`state`) stays valid.
pub const STATE_TTL_SECS: i64 = 600;
