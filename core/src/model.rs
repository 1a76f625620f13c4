//! The core's own value types: owners, heads and stored entries. Persisted with serde; never wire types.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What kind of writer holds a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OwnerKind {
    /// The agent run itself.
    Runner,
    /// A heartbeat writer.
    Heartbeat,
    /// A scheduled job.
    Cron,
    /// Channel ingress.
    Channel,
    /// A command-line tool.
    Cli,
    /// Anything else.
    #[default]
    Other,
}

/// Who holds a lease or wrote an entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    /// Unique per client process instance.
    pub client_id: String,
    /// Human-readable name.
    pub name: String,
    /// Writer kind.
    pub kind: OwnerKind,
}

/// Longest `client_id`, in bytes.
pub const MAX_CLIENT_ID_LEN: usize = 128;
/// Longest owner name, in bytes.
pub const MAX_OWNER_NAME_LEN: usize = 256;

/// A chain hash: `h0 = [0; 32]`, `h(n) = SHA-256(h(n-1) || line n)` (line without its newline).
pub type ChainHash = [u8; 32];

/// Extends a chain hash by one entry.
#[must_use]
pub fn chain(prev: &ChainHash, line: &[u8]) -> ChainHash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(line);
    h.finalize().into()
}

/// The state of a resource's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Write epoch: one more per accepted batch.
    pub epoch: u64,
    /// Sequence number of the next entry (entries start at 1).
    pub next_seq: u64,
    /// File length in bytes.
    pub length: u64,
    /// Chain hash over all entries.
    pub chain_hash: ChainHash,
}

impl Head {
    /// The head of an empty resource.
    pub const EMPTY: Head = Head {
        epoch: 0,
        next_seq: 1,
        length: 0,
        chain_hash: [0; 32],
    };
}

/// One stored entry with its metadata, as returned by reads.
#[derive(Debug, Clone)]
pub struct StoredEntry {
    /// Sequence number.
    pub seq: u64,
    /// Write epoch of its batch.
    pub epoch: u64,
    /// Token its batch was appended under.
    pub token: u64,
    /// Who appended it.
    pub owner: std::sync::Arc<Owner>,
    /// Server time of the append, microseconds since the Unix epoch.
    pub time_unix_micros: u64,
    /// Chain hash after this entry.
    pub chain_hash: ChainHash,
    /// The line as sent, without its newline.
    pub data: Vec<u8>,
}

/// Microseconds since the Unix epoch, by the wall clock (for records only; leases use the monotonic clock).
#[must_use]
pub fn now_unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
