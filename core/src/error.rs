//! The one domain error enum of the core. The server maps it to gRPC statuses in one table.

use crate::lease::EndReason;

/// Everything the core can refuse or fail with. Each variant carries what a person needs to act.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum CoreError {
    /// The resource name breaks the grammar, or its path is unsafe on disk.
    #[error("invalid resource name {name:?}: {reason}")]
    InvalidResource {
        /// The name as given.
        name: String,
        /// What is wrong, naming the offending segment.
        reason: String,
    },
    /// An entry is not a single-line UTF-8 JSON object (or the batch is empty).
    #[error("entry {index} of the batch is invalid: {reason}; nothing was appended")]
    InvalidEntry {
        /// Position of the entry in the batch (0-based).
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// An entry is larger than the server's limit.
    #[error(
        "entry {index} of the batch is {size} bytes; the limit is {limit}; nothing was appended"
    )]
    EntryTooLarge {
        /// Position of the entry in the batch (0-based).
        index: usize,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// The whole batch is larger than the server's limit.
    #[error("the batch is {size} bytes; the limit is {limit}; split it")]
    BatchTooLarge {
        /// Batch size in bytes.
        size: usize,
        /// The limit in bytes.
        limit: usize,
    },
    /// Another request field is invalid.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The presented token is not the resource's current token.
    #[error(
        "token {presented} is stale: the current token of {resource} is {current}; acquire the lease again"
    )]
    StaleToken {
        /// The resource.
        resource: String,
        /// The token the caller presented.
        presented: u64,
        /// The resource's current token.
        current: u64,
    },
    /// The lease is no longer live.
    #[error("lease {lease_id} on {resource} has {}; acquire the lease again", reason.describe())]
    LeaseEnded {
        /// The lease.
        lease_id: String,
        /// Its resource.
        resource: String,
        /// How it ended.
        reason: EndReason,
    },
    /// The server does not know this lease (never granted, or granted before a restart).
    #[error(
        "lease {lease_id} is unknown to this server (never granted, long ended, or granted before a restart)"
    )]
    LeaseNotFound {
        /// The lease id as given.
        lease_id: String,
    },
    /// The lease covers a different resource than the request names.
    #[error(
        "lease {lease_id} covers {lease_resource}, not {requested}; refusing to write to the wrong session"
    )]
    WrongResource {
        /// The lease.
        lease_id: String,
        /// The resource the lease covers.
        lease_resource: String,
        /// The resource the request names.
        requested: String,
    },
    /// Compare-and-append failed.
    #[error(
        "head mismatch on {resource}: expected write epoch {expected}, current is {actual}; read what changed and retry"
    )]
    HeadMismatch {
        /// The resource.
        resource: String,
        /// The epoch the caller expected.
        expected: u64,
        /// The current epoch.
        actual: u64,
    },
    /// The session file changed behind the server's back; appends are refused until an operator adopts it.
    #[error(
        "{resource} was modified outside fencepost ({detail}); appends are refused until an operator adopts the file"
    )]
    ExternalModification {
        /// The resource.
        resource: String,
        /// What changed (kind and byte range).
        detail: String,
    },
    /// An operator action needs the resource free (no holder, no waiters).
    #[error("{resource} is held or has waiters ({detail}); release or force-release it first")]
    ResourceBusy {
        /// The resource.
        resource: String,
        /// Who holds or waits.
        detail: String,
    },
    /// The wait for a lease ran out.
    #[error(
        "timed out after {waited_ms} ms waiting for the lease on {resource} ({waiters} waiting, holder token {holder_token})"
    )]
    WaitTimeout {
        /// The resource.
        resource: String,
        /// How long the caller waited.
        waited_ms: u64,
        /// Waiters still queued.
        waiters: usize,
        /// The current holder's token (0 if none).
        holder_token: u64,
    },
    /// A write or fsync failed; the resource (or server) stops accepting writes.
    #[error(
        "storage failure on {resource}: {detail}; writes to it are stopped, see the server log"
    )]
    StorageFailed {
        /// The resource, or `*` for the whole store.
        resource: String,
        /// The underlying error.
        detail: String,
    },
    /// The server's own metadata is unreadable.
    #[error("metadata of {resource} is corrupt: {detail}")]
    CorruptMetadata {
        /// The resource.
        resource: String,
        /// What is wrong.
        detail: String,
    },
    /// Granting another lease would pass a limit on leases held or waited for.
    #[error(
        "{holder} already holds or waits for {count} leases, the limit set by {flag} ({limit}); release leases that are no longer needed, or raise {flag}"
    )]
    TooManyLeases {
        /// Who is at the limit: a client id, or the server as a whole.
        holder: String,
        /// Leases held plus acquires waiting.
        count: usize,
        /// The limit.
        limit: usize,
        /// The server flag that sets it.
        flag: &'static str,
    },
    /// A retry of this Acquire (same client id and idempotency key) took its place in the queue.
    #[error(
        "a retry of this acquire (client {client_id:?}, idempotency key {key:?}) took its place in the queue for {resource}; the retry gets the lease"
    )]
    Superseded {
        /// The resource.
        resource: String,
        /// The client that retried.
        client_id: String,
        /// The idempotency key both calls carry.
        key: String,
    },
    /// The server is shutting down.
    #[error("the server is shutting down; retry against another instance or after restart")]
    ShuttingDown,
}

impl CoreError {
    /// The machine-readable reason, stable across versions.
    #[must_use]
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidResource { .. } => "INVALID_RESOURCE",
            Self::InvalidEntry { .. } => "INVALID_ENTRY",
            Self::EntryTooLarge { .. } => "ENTRY_TOO_LARGE",
            Self::BatchTooLarge { .. } => "BATCH_TOO_LARGE",
            Self::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Self::StaleToken { .. } => "STALE_TOKEN",
            Self::LeaseEnded {
                reason: EndReason::Expired,
                ..
            } => "LEASE_EXPIRED",
            Self::LeaseEnded { .. } => "LEASE_RELEASED",
            Self::LeaseNotFound { .. } => "LEASE_NOT_FOUND",
            Self::WrongResource { .. } => "WRONG_RESOURCE",
            Self::HeadMismatch { .. } => "HEAD_MISMATCH",
            Self::ExternalModification { .. } => "EXTERNAL_MODIFICATION",
            Self::WaitTimeout { .. } => "WAIT_TIMEOUT",
            Self::ResourceBusy { .. } => "RESOURCE_BUSY",
            Self::StorageFailed { .. } => "STORAGE_FAILED",
            Self::CorruptMetadata { .. } => "CORRUPT_METADATA",
            Self::TooManyLeases { .. } => "TOO_MANY_LEASES",
            Self::Superseded { .. } => "SUPERSEDED",
            Self::ShuttingDown => "SHUTTING_DOWN",
        }
    }

    /// Structured fields for machine consumers (status details metadata).
    #[must_use]
    pub fn metadata(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::InvalidResource { name, .. } => vec![("resource", name.clone())],
            Self::InvalidEntry { index, .. } => vec![("index", index.to_string())],
            Self::EntryTooLarge { index, size, limit } => vec![
                ("index", index.to_string()),
                ("size", size.to_string()),
                ("limit", limit.to_string()),
            ],
            Self::BatchTooLarge { size, limit } => {
                vec![("size", size.to_string()), ("limit", limit.to_string())]
            }
            Self::InvalidArgument { field, .. } => vec![("field", (*field).to_owned())],
            Self::StaleToken {
                resource,
                presented,
                current,
            } => vec![
                ("resource", resource.clone()),
                ("presented", presented.to_string()),
                ("current", current.to_string()),
            ],
            Self::LeaseEnded {
                lease_id,
                resource,
                reason,
            } => vec![
                ("lease_id", lease_id.clone()),
                ("resource", resource.clone()),
                ("how", reason.as_str().to_owned()),
            ],
            Self::LeaseNotFound { lease_id } => vec![("lease_id", lease_id.clone())],
            Self::WrongResource {
                lease_id,
                lease_resource,
                requested,
            } => vec![
                ("lease_id", lease_id.clone()),
                ("lease_resource", lease_resource.clone()),
                ("resource", requested.clone()),
            ],
            Self::HeadMismatch {
                resource,
                expected,
                actual,
            } => vec![
                ("resource", resource.clone()),
                ("expected_epoch", expected.to_string()),
                ("current_epoch", actual.to_string()),
            ],
            Self::ExternalModification { resource, detail }
            | Self::ResourceBusy { resource, detail }
            | Self::StorageFailed { resource, detail }
            | Self::CorruptMetadata { resource, detail } => {
                vec![("resource", resource.clone()), ("detail", detail.clone())]
            }
            Self::WaitTimeout {
                resource,
                waited_ms,
                ..
            } => vec![
                ("resource", resource.clone()),
                ("waited_ms", waited_ms.to_string()),
            ],
            Self::TooManyLeases {
                count, limit, flag, ..
            } => vec![
                ("count", count.to_string()),
                ("limit", limit.to_string()),
                ("flag", (*flag).to_owned()),
            ],
            Self::Superseded { resource, key, .. } => vec![
                ("resource", resource.clone()),
                ("idempotency_key", key.clone()),
            ],
            Self::ShuttingDown => vec![],
        }
    }
}
