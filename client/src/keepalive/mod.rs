//! The keepalive task of a [`crate::Client`]: one KeepAlive stream renewing every live lease of
//! the client, reconnecting when it breaks, and turning replies, pushed losses and missed
//! deadlines into each lease's health.
//!
//! Deadlines are the client's own and always earlier than the server's: a renewal confirmed by a
//! reply counts from the moment its request was *sent* (plus the TTL the server reported), so
//! the round trip is on the safe side.

mod in_flight;
mod task;

use std::sync::Arc;
use std::time::Duration;

use fencepost as proto;
use proto::v1::fencepost_client::FencepostClient;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::health::LeaseSignal;
use task::Task;

/// A handle to the keepalive task. The task ends when the last handle (held by the client and
/// its clones, and by every lease) is dropped.
#[derive(Debug)]
pub(crate) struct KeepAlive {
    commands: mpsc::UnboundedSender<Command>,
}

/// A lease the task keeps alive.
pub(crate) struct Registration {
    pub(crate) lease_id: String,
    /// The lease's full TTL.
    pub(crate) ttl: Duration,
    /// The client's deadline: when the grant's request was sent plus the TTL left at the grant.
    pub(crate) deadline: Instant,
    pub(crate) signal: Arc<LeaseSignal>,
}

/// What the handles tell the task.
enum Command {
    Register(Registration),
    Unregister(String),
    Pause(bool),
}

impl KeepAlive {
    /// Starts the task on the current Tokio runtime.
    pub(crate) fn spawn(rpc: FencepostClient<Channel>) -> Self {
        let (commands, inbox) = mpsc::unbounded_channel();
        tokio::spawn(Task::new(rpc, inbox).run());
        Self { commands }
    }

    /// Starts renewing a lease (at once, then every third of the shortest TTL).
    pub(crate) fn register(&self, registration: Registration) {
        // The task outlives every handle, so sending only fails while the runtime shuts down.
        let _ = self.commands.send(Command::Register(registration));
    }

    /// Stops renewing a lease (released, yielded or dropped).
    pub(crate) fn unregister(&self, lease_id: &str) {
        let _ = self.commands.send(Command::Unregister(lease_id.to_owned()));
    }

    /// Stops or resumes sending renewals; the stream stays open.
    pub(crate) fn pause(&self, paused: bool) {
        let _ = self.commands.send(Command::Pause(paused));
    }
}
