//! fencepost's KeepAlive stream: one bidirectional stream per connection renewing many leases,
//! and the same stream left quiet to hear the server's push when a lease is lost.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use fencepost as proto;
use proto::v1::{KeepAliveRequest, KeepAliveResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use super::{Rpc, rpc_error};
use crate::systems::{Grant, KeepAlive, LossWatch};

/// Opens a KeepAlive stream: requests go through the sender, replies and pushes come back.
async fn open_keepalive(
    rpc: &mut Rpc,
) -> Result<(mpsc::Sender<KeepAliveRequest>, Streaming<KeepAliveResponse>)> {
    let (tx, rx) = mpsc::channel(16);
    let replies = rpc
        .keep_alive(ReceiverStream::new(rx))
        .await
        .map_err(|s| rpc_error("open keepalive stream", &s))?
        .into_inner();
    Ok((tx, replies))
}

/// One KeepAlive stream carrying many leases.
pub(super) struct Stream {
    tx: mpsc::Sender<KeepAliveRequest>,
    replies: Streaming<KeepAliveResponse>,
}

impl Stream {
    /// Opens a stream on the client's connection.
    pub(super) async fn open(rpc: &mut Rpc) -> Result<Self> {
        let (tx, replies) = open_keepalive(rpc).await?;
        Ok(Self { tx, replies })
    }
}

#[async_trait]
impl KeepAlive for Stream {
    async fn renew(&mut self, grants: &[Grant]) -> Result<Vec<String>> {
        let ids: Vec<String> = grants.iter().map(|g| g.id.clone()).collect();
        self.tx
            .send(KeepAliveRequest {
                lease_ids: ids.clone(),
            })
            .await
            .map_err(|_| anyhow!("keepalive stream closed"))?;
        let mut lost = Vec::new();
        loop {
            let msg = self
                .replies
                .message()
                .await
                .map_err(|s| rpc_error("keepalive", &s))?
                .context("keepalive stream ended")?;
            let is_reply = msg.leases.len() == ids.len()
                && msg.leases.iter().zip(&ids).all(|(s, id)| &s.lease_id == id);
            lost.extend(
                msg.leases
                    .into_iter()
                    .filter(|s| !s.alive)
                    .map(|s| s.lease_id),
            );
            if is_reply {
                return Ok(lost);
            }
        }
    }
}

/// Renews once on a fresh stream, then waits for the server's push saying the lease is lost.
pub(super) async fn renew_then_watch(rpc: &mut Rpc, grant: &Grant) -> Result<LossWatch> {
    let (tx, mut replies) = open_keepalive(rpc).await?;
    tx.send(KeepAliveRequest {
        lease_ids: vec![grant.id.clone()],
    })
    .await
    .map_err(|_| anyhow!("keepalive stream closed"))?;
    let first = replies
        .message()
        .await
        .map_err(|s| rpc_error("keepalive", &s))?
        .context("keepalive stream ended")?;
    let renewed_at = Instant::now();
    if !first
        .leases
        .iter()
        .any(|s| s.lease_id == grant.id && s.alive)
    {
        bail!("lease {} was not alive at its first renewal", grant.id);
    }
    let (lost_tx, lost) = oneshot::channel();
    let id = grant.id.clone();
    // Bounded: the push is due one TTL from now; give up well after that.
    let give_up = grant.ttl + Duration::from_secs(60);
    tokio::spawn(async move {
        // The sender stays open so the server keeps tracking the lease on this stream.
        let _open = tx;
        let waiting = async {
            while let Ok(Some(msg)) = replies.message().await {
                if msg.leases.iter().any(|s| s.lease_id == id && !s.alive) {
                    return Some(Instant::now());
                }
            }
            None
        };
        if let Ok(Some(at)) = tokio::time::timeout(give_up, waiting).await {
            let _ = lost_tx.send(at);
        }
    });
    Ok(LossWatch { renewed_at, lost })
}
