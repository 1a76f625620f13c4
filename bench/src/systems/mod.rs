//! The systems under test behind one small trait (acquire, append, release, keepalive), so each
//! workload is written once.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod fencepost;
mod files;
pub mod lockfile;
mod process;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use async_trait::async_trait;
use tokio::sync::oneshot;

use crate::cli::{Opts, SystemChoice};
use crate::history::Contents;

pub use process::rss_mib;

/// An exclusive lease (or lock) a client holds on one session.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The session granted.
    pub session: String,
    /// The fencing token; `None` where the system issues none (lock files).
    pub token: Option<u64>,
    /// What names the grant to the system: fencepost's lease id, etcd's lock key, or the line the
    /// lock file holds.
    pub id: String,
    /// The TTL the system granted; zero where leases never expire (lock files).
    pub ttl: Duration,
}

/// What a one-call cycle reports: the token it appended under and where the batch landed.
#[derive(Debug, Clone, Copy)]
pub struct OnceAck {
    /// The fencing token of the lease the server took for the call.
    pub token: u64,
    /// Sequence number of the batch's first line in the session.
    pub first_seq: u64,
}

/// A lease renewed once and then watched for its loss (W6).
pub struct LossWatch {
    /// When the client received the reply to the renewal.
    pub renewed_at: Instant,
    /// Resolves with the instant the client observed the loss.
    pub lost: oneshot::Receiver<Instant>,
}

/// A system under test.
#[async_trait]
pub trait System: Send + Sync {
    /// `fencepost`, `lockfile` or `etcd`.
    fn name(&self) -> &'static str;

    /// How clients reach it: `tcp`, `uds` or `fs`.
    fn transport(&self) -> &'static str;

    /// Whether a lease ends by itself when no longer kept alive.
    fn expires(&self) -> bool;

    /// The server process, to read its memory use.
    fn server_pid(&self) -> Option<u32>;

    /// Whether clients can do a whole cycle in one call ([`Client::append_once`]).
    fn has_append_once(&self) -> bool {
        false
    }

    /// The gRPC endpoint for the bare unary baseline (fencepost only).
    fn echo_endpoint(&self) -> Option<String> {
        None
    }

    /// A new client with its own connection whose leases get `ttl`.
    async fn connect(&self, ttl: Duration) -> Result<Box<dyn Client>>;

    /// Every session's lines as read back from each place they can be read (name, contents).
    async fn contents(&self, sessions: &[String]) -> Result<Vec<(&'static str, Contents)>>;
}

/// One client of a system, with its own connection.
#[async_trait]
pub trait Client: Send {
    /// Takes an exclusive lease on `session`, waiting as long as needed.
    async fn acquire(&mut self, session: &str) -> Result<Grant>;

    /// Appends one atomic batch under `grant`, durable when this returns; with `release`, the lease
    /// is released in the same step. Fails if the system refuses the grant (fenced out).
    async fn append(&mut self, grant: &Grant, lines: &[Vec<u8>], release: bool) -> Result<()>;

    /// Ends the lease.
    async fn release(&mut self, grant: &Grant) -> Result<()>;

    /// The whole cycle in one call, where the system has one ([`System::has_append_once`]): waits
    /// for the lease on `session`, appends one atomic batch and releases, durable when this
    /// returns.
    async fn append_once(&mut self, session: &str, lines: &[Vec<u8>]) -> Result<OnceAck> {
        let _ = (session, lines);
        anyhow::bail!("this system has no one-call cycle")
    }

    /// Opens one keepalive stream on this client's connection.
    async fn keepalive(&mut self) -> Result<Box<dyn KeepAlive>>;

    /// Renews `grant` once, then stops renewing it and listens for its loss.
    async fn watch_loss(&mut self, grant: &Grant) -> Result<LossWatch>;
}

/// A keepalive stream carrying many leases.
#[async_trait]
pub trait KeepAlive: Send {
    /// Renews every grant with one request; returns the ids of those no longer alive.
    async fn renew(&mut self, grants: &[Grant]) -> Result<Vec<String>>;
}

/// Starts (or connects to) the chosen system.
///
/// # Errors
/// The server cannot be started or reached.
pub async fn start(choice: SystemChoice, opts: &Opts, run_id: &str) -> Result<Arc<dyn System>> {
    Ok(match choice {
        SystemChoice::Fencepost => Arc::new(fencepost::Fencepost::start(opts).await?),
        SystemChoice::Lockfile => Arc::new(lockfile::LockFiles::new()?),
        #[cfg(feature = "etcd")]
        SystemChoice::Etcd => Arc::new(etcd::Etcd::start(opts, run_id).await?),
        #[cfg(not(feature = "etcd"))]
        SystemChoice::Etcd => {
            let _ = run_id;
            anyhow::bail!(
                "this bench was built without the etcd peer: cargo run --release -p fencepost-bench --features etcd -- ..."
            )
        }
        SystemChoice::All => anyhow::bail!("`all` is not one system"),
    })
}
