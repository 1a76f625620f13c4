//! The streaming RPCs: KeepAlive, Read and Watch. Each runs in its own task and ends when the
//! client goes away or the server shuts down.

use std::pin::Pin;
use std::sync::Arc;

use fencepost as proto;
use fencepost_core::lease::{LossSender, ReadFrom};
use fencepost_core::{Core, ResourceName, StoredEntry};
use proto::v1;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::convert::{self, status};

type Out<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;
pub type KeepAliveStream = Out<v1::KeepAliveResponse>;
pub type ReadStream = Out<v1::Entry>;
pub type WatchStream = Out<v1::WatchEvent>;

/// Replies buffered per stream.
const BUFFER: usize = 64;

/// Renews the leases each request names, answers with their status, and pushes a status as soon
/// as any lease this stream has renewed ends (the core tells the stream directly, per lease).
pub fn keepalive(
    core: Core,
    mut inbound: Streaming<v1::KeepAliveRequest>,
    shutdown: CancellationToken,
) -> KeepAliveStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    let (loss_tx, mut loss_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let reply = tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) if req.lease_ids.len() > proto::MAX_KEEPALIVE_IDS => {
                        let _ = tx.send(Err(too_many_ids(req.lease_ids.len()))).await;
                        break;
                    }
                    Ok(Some(req)) => renew_all(&core, req.lease_ids, &loss_tx),
                    Ok(None) | Err(_) => break,
                },
                Some(id) = loss_rx.recv() => {
                    let mut ids = vec![id];
                    while let Ok(id) = loss_rx.try_recv() {
                        ids.push(id);
                    }
                    lost(&core, &ids)
                }
                () = shutdown.cancelled() => break,
            };
            if tx.send(Ok(reply)).await.is_err() {
                break;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

fn too_many_ids(count: usize) -> Status {
    convert::invalid(
        "lease_ids",
        format!(
            "names {count} leases in one message; the limit is {}: split them over several \
             messages",
            proto::MAX_KEEPALIVE_IDS
        ),
    )
}

fn renew_all(core: &Core, ids: Vec<String>, loss: &LossSender) -> v1::KeepAliveResponse {
    let statuses = core.keepalive_many(&ids, Some(loss));
    let leases = ids
        .into_iter()
        .zip(statuses)
        .map(|(id, s)| convert::lease_status(id, s))
        .collect();
    v1::KeepAliveResponse { leases }
}

fn lost(core: &Core, ids: &[Arc<str>]) -> v1::KeepAliveResponse {
    v1::KeepAliveResponse {
        leases: ids
            .iter()
            .map(|id| convert::lease_status(id.to_string(), core.lease_status(id)))
            .collect(),
    }
}

/// Streams `first` and then further chunks until `limit` entries or the end of the log.
pub fn read(
    core: Core,
    resource: ResourceName,
    first: Vec<StoredEntry>,
    limit: u64,
    chunk: usize,
) -> ReadStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    tokio::spawn(async move {
        let mut sent = 0u64;
        let mut batch = first;
        loop {
            // A chunk may be cut short by its byte bound: read on until one comes back empty.
            let next_seq = batch.last().map(|e| e.seq + 1);
            for e in batch {
                if tx.send(Ok(convert::entry(e))).await.is_err() {
                    return;
                }
                sent += 1;
            }
            let (Some(next_seq), true) = (next_seq, sent < limit) else {
                return;
            };
            let want = usize::try_from(limit - sent)
                .unwrap_or(usize::MAX)
                .min(chunk);
            batch = match core.read(&resource, ReadFrom::Seq(next_seq), want).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(status(&e))).await;
                    return;
                }
            };
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Which resources a watch covers.
pub enum Filter {
    /// One resource.
    Exact(ResourceName),
    /// Every resource starting with this string ("" = all).
    Prefix(String),
}

impl Filter {
    fn matches(&self, r: &ResourceName) -> bool {
        match self {
            Self::Exact(name) => name == r,
            Self::Prefix(p) => r.has_prefix(p),
        }
    }
}

/// Streams lease and append events for the filter; tells the watcher when it lagged.
pub fn watch(core: &Core, filter: Filter, shutdown: CancellationToken) -> WatchStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    let mut events = core.subscribe();
    tokio::spawn(async move {
        loop {
            let out = tokio::select! {
                event = events.recv() => match event {
                    Ok(e) if filter.matches(&e.resource) => convert::event(&e),
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(n)) => v1::WatchEvent {
                        kind: v1::WatchEventKind::Lagged.into(),
                        dropped: n,
                        ..Default::default()
                    },
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                () = tx.closed() => return,
                () = shutdown.cancelled() => return,
            };
            if tx.send(Ok(out)).await.is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}
