//! OAuth for stored credentials: the authorize/callback flow that connects
//! an account, the refresh of its tokens (single flight, outcome, driver) and
//! the background worker, for any provider whose file declares `oauth2`.
//! The provider calls themselves are in [`crate::oauth_client`].

pub mod flow;
pub mod outcome;
pub mod refresh;
pub mod return_to;
mod single_flight;
pub mod worker;

pub use single_flight::{Refresher, LEASE_SECS};

/// Seconds a pending authorization (`state`) stays valid.
pub const STATE_TTL_SECS: i64 = 600;
