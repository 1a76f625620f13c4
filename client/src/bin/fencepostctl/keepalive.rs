//! `keepalive`: hold a lease over the KeepAlive stream until interrupted or the lease is lost.

use std::time::Duration;

use clap::Args;
use fencepost_client::OwnerKind;
use fencepost_client::proto::v1::{LeaseEnd, LeaseStatus};
use tokio_stream::StreamExt;

use crate::exit::Failure;
use crate::output::{LeaseStatusView, emit};
use crate::signals::Interrupt;
use crate::{Connection, parse_duration};

/// The shortest default renewal interval, for leases with a tiny TTL.
const MIN_DEFAULT_INTERVAL: Duration = Duration::from_millis(10);

#[derive(Debug, Args)]
pub struct KeepaliveArgs {
    /// The resource the lease covers.
    resource: String,
    /// The lease to keep alive.
    #[arg(long, visible_alias = "lease-id", value_name = "ID")]
    lease: String,
    /// How often to renew (default: a third of the lease's TTL).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    interval: Option<Duration>,
}

/// Prints one JSON line per keepalive reply; exits 0 on SIGINT/SIGTERM, 3 once the lease is lost.
pub async fn keepalive(conn: &Connection, args: KeepaliveArgs) -> Result<(), Failure> {
    let mut interrupt = Interrupt::install()?;
    let client = conn.client(None, OwnerKind::Cli).await?;
    // A unary renew first: unlike the stream it checks that the lease covers this resource, it
    // fails with the server's own reason when the lease is already gone, and it reports the TTL
    // the default interval derives from.
    let renewed = client.renew(&args.resource, &args.lease).await?;
    let interval = args
        .interval
        .unwrap_or_else(|| default_interval(renewed.ttl_remaining_ms));
    let mut replies = client
        .keepalive_stream(vec![args.lease.clone()], interval)
        .await?;
    loop {
        tokio::select! {
            () = interrupt.recv() => return Ok(()),
            reply = replies.next() => {
                let Some(reply) = reply else {
                    return Err(Failure::other(
                        "UNAVAILABLE",
                        "the server ended the keepalive stream",
                    ));
                };
                for status in reply?.leases {
                    emit(&LeaseStatusView::from(&status))?;
                    if status.lease_id == args.lease && !status.alive {
                        return Err(lost(&status));
                    }
                }
            }
        }
    }
}

/// A third of the TTL: two renewals can go missing before the lease expires.
fn default_interval(ttl_ms: u64) -> Duration {
    (Duration::from_millis(ttl_ms) / 3).max(MIN_DEFAULT_INTERVAL)
}

/// The failure for a lease the server reported lost, named like the server's own rejection.
fn lost(status: &LeaseStatus) -> Failure {
    let (reason, what) = match LeaseEnd::try_from(status.ended) {
        Ok(LeaseEnd::Released) => ("LEASE_RELEASED", "was released"),
        Ok(LeaseEnd::Forced) => ("LEASE_RELEASED", "was force-released by an operator"),
        Ok(LeaseEnd::Expired) => ("LEASE_EXPIRED", "expired"),
        Ok(LeaseEnd::Unknown) => ("LEASE_NOT_FOUND", "is not known to the server"),
        Ok(LeaseEnd::Unspecified) | Err(_) => ("LEASE_LOST", "is no longer alive"),
    };
    Failure::fenced(
        reason,
        &format!(
            "lease {} {what}; stop writing under its token",
            status.lease_id
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_interval_is_a_third_of_the_ttl() {
        assert_eq!(default_interval(9_000), Duration::from_secs(3));
        assert_eq!(default_interval(3), MIN_DEFAULT_INTERVAL);
    }
}
