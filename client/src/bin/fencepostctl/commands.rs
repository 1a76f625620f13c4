//! The lease commands: acquire, append, append-once, release, renew.

use std::time::Duration;

use clap::{ArgGroup, Args};
use fencepost_client::proto::v1::AppendRequest;
use fencepost_client::{AcquireOptions, OwnerKind};
use tokio::io::AsyncReadExt;

use crate::exit::Failure;
use crate::output::{
    AcquireView, AdoptView, AppendOnceView, AppendView, HeadView, ReleaseView, RenewView, emit,
};
use crate::{Connection, KindArg, parse_duration};

#[derive(Debug, Args)]
pub struct AcquireArgs {
    /// The resource (session file path under the server's data root).
    resource: String,
    /// Lease TTL, e.g. 10s (default: the server's default TTL).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// How long to wait while the resource is held (0 = try once).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "0s")]
    wait: Duration,
    /// Owner name recorded with the lease and its entries (default: fencepostctl@<host> pid <pid>).
    #[arg(long, value_name = "NAME")]
    owner: Option<String>,
    /// Owner kind recorded with the lease and its entries.
    #[arg(long, value_enum, default_value_t = KindArg::Cli)]
    kind: KindArg,
    /// Retry-safe acquire: the same --client-id and key get the same live lease back.
    #[arg(long, value_name = "K")]
    idempotency_key: Option<String>,
}

pub async fn acquire(conn: &Connection, args: AcquireArgs) -> Result<(), Failure> {
    let client = conn.client(args.owner, args.kind.into()).await?;
    let options = AcquireOptions {
        ttl: args.ttl,
        wait: args.wait,
        idempotency_key: args.idempotency_key,
    };
    let reply = client.acquire(args.resource, options).await?;
    emit(&AcquireView::from(&reply))
}

#[derive(Debug, Args)]
pub struct AppendArgs {
    /// The resource to append to.
    resource: String,
    /// The live lease.
    #[arg(long, visible_alias = "lease-id", value_name = "ID")]
    lease: String,
    /// The lease's fencing token.
    #[arg(long, value_name = "N")]
    token: u64,
    /// Append only if the resource's write epoch is exactly N (compare-and-append).
    #[arg(long, value_name = "N")]
    expect_epoch: Option<u64>,
    /// Release the lease in the same call (it passes to the next waiter once the batch is
    /// accepted; the reply still waits until the batch is durable).
    #[arg(long)]
    release: bool,
    /// Makes re-running the command safe: the same id under the same lease returns the first
    /// run's result and appends nothing (while the server remembers it; not across a restart).
    /// Default: a fresh id per run.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
}

/// Reads one JSON object per line from stdin and appends them all as one atomic batch.
pub async fn append(conn: &Connection, args: AppendArgs) -> Result<(), Failure> {
    let entries = stdin_entries("append").await?;
    let count = entries.len();
    let client = conn.client(None, OwnerKind::Cli).await?;
    let reply = client
        .append_request(AppendRequest {
            resource: args.resource.clone(),
            lease_id: args.lease,
            token: args.token,
            entries,
            expected_epoch: args.expect_epoch,
            request_id: args.request_id.unwrap_or_default(),
            release: args.release,
        })
        .await?;
    emit(&AppendView::new(&args.resource, count, &reply))
}

#[derive(Debug, Args)]
pub struct AppendOnceArgs {
    /// The resource to append to.
    resource: String,
    /// How long to wait while the resource is held (0 = try once).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "0s")]
    wait: Duration,
    /// Append only if the resource's write epoch is exactly N (compare-and-append).
    #[arg(long, value_name = "N")]
    expect_epoch: Option<u64>,
    /// Owner name recorded with the entries (default: fencepostctl@<host> pid <pid>).
    #[arg(long, value_name = "NAME")]
    owner: Option<String>,
    /// Owner kind recorded with the entries.
    #[arg(long, value_enum, default_value_t = KindArg::Cli)]
    kind: KindArg,
    /// Request id: retrying with the same --client-id and id appends nothing twice.
    #[arg(long, value_name = "ID")]
    request_id: Option<String>,
}

/// Waits for the lease, appends the JSON lines on stdin as one batch and releases, in one call.
pub async fn append_once(conn: &Connection, args: AppendOnceArgs) -> Result<(), Failure> {
    let entries = stdin_entries("append-once").await?;
    let count = entries.len();
    let client = conn.client(args.owner, args.kind.into()).await?;
    let mut once = client
        .append_once(args.resource.as_str(), entries)
        .wait(args.wait);
    if let Some(epoch) = args.expect_epoch {
        once = once.expected_epoch(epoch);
    }
    if let Some(request_id) = args.request_id {
        once = once.request_id(request_id);
    }
    let reply = once.await?;
    emit(&AppendOnceView::new(&args.resource, count, &reply))
}

/// The batch on stdin; none at all is bad input.
async fn stdin_entries(command: &str) -> Result<Vec<Vec<u8>>, Failure> {
    let mut input = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut input)
        .await
        .map_err(|err| Failure::other("STDIN", &format!("cannot read stdin: {err}")))?;
    let entries = entries_from(&input);
    if entries.is_empty() {
        return Err(Failure::bad_input(
            "INVALID_ENTRY",
            &format!(
                "no entries on stdin: {command} reads one JSON object per line and sends them \
                 all as one batch"
            ),
        ));
    }
    Ok(entries)
}

/// One entry per line, without its "\n" or "\r\n"; blank (all-whitespace) lines are skipped.
/// The lines are otherwise sent as they are: the server validates them and says what is wrong.
fn entries_from(input: &[u8]) -> Vec<Vec<u8>> {
    input
        .split(|&byte| byte == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
        .map(<[u8]>::to_vec)
        .collect()
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("which").required(true).args(["lease", "force"])))]
pub struct ReleaseArgs {
    /// The resource the lease covers.
    resource: String,
    /// The lease to release.
    #[arg(long, visible_alias = "lease-id", value_name = "ID")]
    lease: Option<String>,
    /// Operator action: end whatever lease holds the resource now; its token becomes stale.
    #[arg(long)]
    force: bool,
}

pub async fn release(conn: &Connection, args: ReleaseArgs) -> Result<(), Failure> {
    let client = conn.client(None, OwnerKind::Cli).await?;
    let reply = match args.lease {
        Some(lease) => client.release(args.resource, lease).await?,
        None => client.force_release(args.resource).await?,
    };
    emit(&ReleaseView::new(reply.outcome, reply.lease_id))
}

#[derive(Debug, Args)]
pub struct RenewArgs {
    /// The resource the lease covers.
    resource: String,
    /// The lease to renew.
    #[arg(long, visible_alias = "lease-id", value_name = "ID")]
    lease: String,
}

pub async fn renew(conn: &Connection, args: RenewArgs) -> Result<(), Failure> {
    let client = conn.client(None, OwnerKind::Cli).await?;
    let reply = client.renew(args.resource, args.lease).await?;
    emit(&RenewView {
        ttl_remaining_ms: reply.ttl_remaining_ms,
    })
}

#[derive(Debug, Args)]
pub struct AdoptArgs {
    /// The resource whose current file content to accept.
    resource: String,
}

/// Operator action: accept an externally modified session file as a new head.
pub async fn adopt(conn: &Connection, args: AdoptArgs) -> Result<(), Failure> {
    let client = conn.client(None, OwnerKind::Cli).await?;
    let reply = client.adopt(args.resource.clone()).await?;
    emit(&AdoptView {
        resource: args.resource,
        epoch: reply.head.as_ref().map_or(0, |h| h.epoch),
        head: reply.head.as_ref().map(HeadView::from),
        detail: reply.detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stdin_lines_become_entries_without_line_endings() {
        let input = b"{\"a\":1}\n\n{\"b\":2}\r\n   \n{\"c\":3}";
        let entries = entries_from(input);
        assert_eq!(
            entries,
            vec![
                b"{\"a\":1}".to_vec(),
                b"{\"b\":2}".to_vec(),
                b"{\"c\":3}".to_vec()
            ]
        );
    }

    #[test]
    fn empty_or_blank_stdin_has_no_entries() {
        assert!(entries_from(b"").is_empty());
        assert!(entries_from(b"\n\r\n \n").is_empty());
    }

    #[test]
    fn lines_are_not_validated_locally() {
        assert_eq!(entries_from(b"not json\n"), vec![b"not json".to_vec()]);
    }
}
