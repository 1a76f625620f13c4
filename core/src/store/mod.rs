//! The narrow storage interface the lease layer uses, and its backends.
//!
//! A backend issues durable fencing tokens and gives each resource a log that appends batches
//! durably and reads them back. Everything about leases and waiting lives above this line.

pub mod embedded;

use std::sync::Arc;

use async_trait::async_trait;

use crate::error::CoreError;
use crate::model::{Head, Owner, StoredEntry};
use crate::resource::ResourceName;

/// A batch ready to be written: validated entries plus the metadata the lease layer decided.
#[derive(Debug, Clone)]
pub struct NewBatch {
    /// Write epoch of this batch (the head's epoch + 1).
    pub epoch: u64,
    /// Token it is appended under.
    pub token: u64,
    /// Who appends it.
    pub owner: Arc<Owner>,
    /// Server time, microseconds since the Unix epoch.
    pub time_unix_micros: u64,
    /// The lines, without newlines.
    pub entries: Vec<Vec<u8>>,
    /// The request it answers, kept with the batch (see [`ResourceLog::recorded`]).
    pub request: Option<BatchRequest>,
}

/// The request id a batch was appended with: under a lease (Append), or by the owner's client id
/// (AppendOnce, `lease_id` none).
#[derive(Debug, Clone)]
pub struct BatchRequest {
    /// The client's request id.
    pub request_id: String,
    /// The lease it was appended under, for Append.
    pub lease_id: Option<String>,
}

/// A durable batch found by its request (see [`ResourceLog::recorded`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recorded {
    /// Seq of its first entry.
    pub first_seq: u64,
    /// Seq of its last entry.
    pub last_seq: u64,
    /// The head right after it.
    pub head: Head,
    /// The token it was appended under.
    pub token: u64,
}

/// A storage backend.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Opens a resource's log, recovering and verifying it. Does not create the file.
    ///
    /// # Errors
    /// [`CoreError::InvalidResource`] when the path is unsafe (symlink, not a directory), or a
    /// storage or metadata error.
    async fn open(&self, name: &ResourceName) -> Result<Arc<dyn ResourceLog>, CoreError>;

    /// Issues a fencing token for `name`, durable before it returns: strictly greater than any
    /// token ever issued for it, across crashes and restarts, and than `floor` (the newest token
    /// recorded in its log, in case the token state was lost or restored from an old copy).
    ///
    /// # Errors
    /// A storage error; no token is issued then.
    async fn issue_token(&self, name: &ResourceName, floor: u64) -> Result<u64, CoreError>;

    /// Every resource the store has metadata for (for the start-up tamper scan).
    ///
    /// # Errors
    /// A storage error listing them.
    async fn resources(&self) -> Result<Vec<ResourceName>, CoreError>;

    /// Why the store stopped accepting writes (a failed write, fsync or checkpoint), once it has;
    /// `None` while writes work. A restart recovers from the write-ahead log.
    fn failure(&self) -> Option<String> {
        None
    }

    /// Makes everything written so far durable and stops background work (clean shutdown).
    async fn close(&self);
}

/// One resource's log. Appends are serialized by the caller (one at a time per resource), but
/// need not wait for each other's durability: a batch is ordered when [`ResourceLog::append`]
/// returns and durable when [`ResourceLog::durable`] says so.
#[async_trait]
pub trait ResourceLog: Send + Sync {
    /// The head including every ordered batch, durable or not yet.
    fn head(&self) -> Head;

    /// True if the session file exists.
    fn exists(&self) -> bool;

    /// Token of the newest ordered batch (0 if none).
    fn last_token(&self) -> u64;

    /// The problem that stops appends to this resource, if any (external modification, failed
    /// write), as an error to return.
    fn blocked(&self) -> Option<CoreError>;

    /// Orders a batch after every batch ordered before it and starts writing it; all entries or
    /// none. Returns the head it makes. The batch is not acknowledged until
    /// [`ResourceLog::durable`] for that head succeeds; if it fails, every batch ordered after it
    /// fails too.
    ///
    /// # Errors
    /// The error that stopped the log (see [`ResourceLog::blocked`]), or a storage error creating
    /// the session file; nothing is ordered then.
    async fn append(&self, batch: NewBatch) -> Result<Head, CoreError>;

    /// Waits until the batch that made `head` (as [`ResourceLog::append`] returned it) is durable.
    ///
    /// # Errors
    /// [`CoreError::ExternalModification`] if the file changed behind the server's back before
    /// it was written, [`CoreError::StorageFailed`] if a write or fsync failed (the log then
    /// refuses all appends) or the batch is not in the log (it failed and the log was adopted
    /// since).
    async fn durable(&self, head: Head) -> Result<(), CoreError>;

    /// Entries from `from_seq` on, at most `limit`; durable ones only (see
    /// [`ResourceLog::settled`]).
    ///
    /// # Errors
    /// A storage error.
    async fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEntry>, CoreError>;

    /// Operator action: accepts the session file's current content as a new head with a new
    /// epoch. Entries that still match keep their metadata; everything after the first difference
    /// becomes one adopted batch. Returns a description of what was adopted, for the audit log.
    ///
    /// # Errors
    /// A file that ends in a partial line, an unsafe path, storage errors.
    async fn adopt(&self) -> Result<String, CoreError>;

    /// The seq of the first durable entry whose epoch is at least `epoch` (the durable head's
    /// next seq if none).
    fn first_seq_at_epoch(&self, epoch: u64) -> u64;

    /// The batch appended with `request_id`, under `lease_id` if given, else by client
    /// `client_id` without a lease, among the newest batches the log held when it was opened:
    /// those a server that restarted since has no other memory of. `None` if there is none (or
    /// the backend keeps no request ids).
    fn recorded(
        &self,
        request_id: &str,
        lease_id: Option<&str>,
        client_id: &str,
    ) -> Option<Recorded> {
        let _ = (request_id, lease_id, client_id);
        None
    }

    /// Waits until every batch ordered so far is durable or has failed, so that a read sees
    /// everything appended before it.
    async fn settled(&self) {
        let _ = self.durable(self.head()).await;
    }
}
