//! The read-only commands: read, describe, list, watch, health.

use std::time::Duration;

use clap::{ArgGroup, Args};
use fencepost_client::{OwnerKind, ReadOptions, WatchTarget};
use tokio_stream::StreamExt;

use crate::Connection;
use crate::exit::Failure;
use crate::output::{DescribeView, EntryView, HealthView, LeaseView, WatchView, emit};
use crate::signals::Interrupt;

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// The resource to read.
    resource: String,
    /// First sequence number to print (entries are numbered from 1).
    #[arg(long, value_name = "N", default_value_t = 1)]
    from_seq: u64,
    /// Start at the first entry whose write epoch is at least N (overrides --from-seq).
    #[arg(long, value_name = "N")]
    from_epoch: Option<u64>,
    /// Print at most N entries (0 = all).
    #[arg(long, value_name = "N", default_value_t = 0)]
    limit: u64,
}

/// Prints one JSON line per entry.
pub async fn read(conn: &Connection, args: ReadArgs) -> Result<(), Failure> {
    let client = conn.client(None, OwnerKind::Cli).await?;
    let options = ReadOptions {
        from_seq: args.from_seq,
        from_epoch: args.from_epoch,
        limit: args.limit,
    };
    let mut entries = client.read_with(args.resource, options).await?;
    while let Some(entry) = entries.next().await {
        emit(&EntryView::from(&entry?))?;
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// The resource to describe.
    resource: String,
}

pub async fn describe(conn: &Connection, args: DescribeArgs) -> Result<(), Failure> {
    let client = conn.client(None, OwnerKind::Cli).await?;
    let reply = client.describe(args.resource).await?;
    emit(&DescribeView::from(&reply))
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only leases on resources starting with this prefix.
    #[arg(long, value_name = "P", default_value = "")]
    prefix: String,
}

/// Prints one JSON line per live lease.
pub async fn list(conn: &Connection, args: ListArgs) -> Result<(), Failure> {
    let client = conn.client(None, OwnerKind::Cli).await?;
    for lease in client.list(args.prefix).await? {
        emit(&LeaseView::from(&lease))?;
    }
    Ok(())
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["resource", "prefix"])))]
pub struct WatchArgs {
    /// Watch exactly this resource.
    resource: Option<String>,
    /// Watch every resource whose name starts with this prefix.
    #[arg(long, value_name = "P")]
    prefix: Option<String>,
}

/// Prints one JSON line per event until SIGINT/SIGTERM.
pub async fn watch(conn: &Connection, args: WatchArgs) -> Result<(), Failure> {
    let mut interrupt = Interrupt::install()?;
    let target = match (args.resource, args.prefix) {
        (Some(resource), _) => WatchTarget::Resource(resource),
        (None, prefix) => WatchTarget::Prefix(prefix.unwrap_or_default()),
    };
    let client = conn.client(None, OwnerKind::Cli).await?;
    let mut events = client.watch(target).await?;
    loop {
        tokio::select! {
            () = interrupt.recv() => return Ok(()),
            event = events.next() => match event {
                Some(event) => emit(&WatchView::from(&event?))?,
                None => {
                    return Err(Failure::other(
                        "UNAVAILABLE",
                        "the server ended the watch stream",
                    ));
                }
            },
        }
    }
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    /// Give up after this long, connecting included.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = crate::parse_duration)]
    timeout: Duration,
}

/// Prints `{"status":"serving"}` and succeeds while the server serves the fencepost API; a
/// server that is draining, or whose store stopped accepting writes, prints `not_serving` and
/// fails (for health probes).
pub async fn health(conn: &Connection, args: HealthArgs) -> Result<(), Failure> {
    let probe = async {
        let client = conn.client(None, OwnerKind::Cli).await?;
        Ok::<_, Failure>(client.serving().await?)
    };
    let serving = tokio::time::timeout(args.timeout, probe)
        .await
        .map_err(|_elapsed| {
            Failure::other(
                "UNAVAILABLE",
                &format!(
                    "no answer from {} within {}",
                    conn.endpoint,
                    humantime::format_duration(args.timeout)
                ),
            )
        })??;
    emit(&HealthView {
        status: if serving { "serving" } else { "not_serving" },
    })?;
    if serving {
        Ok(())
    } else {
        Err(Failure::other(
            "NOT_SERVING",
            "the server is draining for a shutdown, or its store stopped accepting writes \
             (see its log; a restart recovers)",
        ))
    }
}
