//! The replicas serving the gateway, which share each credential's cap on
//! calls in flight: each marks itself live in the store.

use crate::context::Context;
use crate::error::Error;

/// How often a replica serving the gateway marks itself live.
pub const REPLICA_BEAT: std::time::Duration = std::time::Duration::from_secs(2);

/// A replica not seen for this long is gone (crashed): the others take
/// its share of the cap.
pub const REPLICA_EXPIRES_SECS: i64 = 10;

/// This replica's heartbeat: marks `replica` live and takes its share of
/// each credential's cap from the number of live replicas. When the store
/// cannot be reached the share stays as it was (and so do the calls,
/// which need the store for their use).
pub async fn replica_beat(ctx: &Context, replica: &str) -> Result<usize, Error> {
    let live = ctx.store.replica_seen(replica, REPLICA_EXPIRES_SECS).await?;
    ctx.gateway.set_replicas(live);
    ctx.metrics.gateway_replicas.set(live as i64);
    Ok(live)
}

/// This replica stops: its share goes to the others at their next beat.
pub async fn replica_gone(ctx: &Context, replica: &str) -> Result<(), Error> {
    ctx.store.replica_gone(replica).await?;
    Ok(())
}
