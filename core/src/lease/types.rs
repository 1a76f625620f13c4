//! Values the lease layer takes and returns.

use std::sync::Arc;
use std::time::Duration;

use crate::model::{Head, Owner};
use crate::resource::ResourceName;

/// Where a keepalive stream hears that a lease it renewed has ended: the lease id, once, however
/// it ended (see [`super::Core::keepalive_many`]).
pub type LossSender = tokio::sync::mpsc::UnboundedSender<Arc<str>>;

/// How a lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndReason {
    /// Its holder released it.
    Released,
    /// It was not renewed within its TTL.
    Expired,
    /// An operator force-released it.
    Forced,
}

impl EndReason {
    /// Lowercase name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Released => "released",
            Self::Expired => "expired",
            Self::Forced => "forced",
        }
    }

    /// A phrase for messages: "expired", "been released", ...
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Released => "been released by its holder",
            Self::Expired => "expired (no keepalive within its TTL)",
            Self::Forced => "been force-released by an operator",
        }
    }
}

/// An Acquire call.
#[derive(Debug, Clone)]
pub struct AcquireArgs {
    /// The resource.
    pub resource: ResourceName,
    /// Who asks.
    pub owner: Owner,
    /// Requested TTL (`None` = server default).
    pub ttl: Option<Duration>,
    /// How long to wait in the queue (zero = try once).
    pub wait: Duration,
    /// Idempotency key: a retry by the same client with the same key gets the same live lease.
    pub idempotency_key: Option<String>,
}

/// A live lease as seen from outside.
#[derive(Debug, Clone)]
pub struct LeaseView {
    /// Opaque id.
    pub lease_id: Arc<str>,
    /// The resource.
    pub resource: ResourceName,
    /// Fencing token.
    pub token: u64,
    /// The TTL.
    pub ttl: Duration,
    /// Time left before expiry.
    pub remaining: Duration,
    /// The holder.
    pub owner: Arc<Owner>,
}

/// A granted lease and the head at grant time.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The lease.
    pub lease: LeaseView,
    /// The resource head.
    pub head: Head,
}

/// An Append call.
#[derive(Debug, Clone)]
pub struct AppendArgs {
    /// The resource.
    pub resource: ResourceName,
    /// The lease.
    pub lease_id: String,
    /// Its token.
    pub token: u64,
    /// The lines.
    pub entries: Vec<Vec<u8>>,
    /// Compare-and-append epoch.
    pub expected_epoch: Option<u64>,
    /// Retry de-duplication key.
    pub request_id: Option<String>,
    /// Release the lease once the batch is ordered (it is durable before the append returns).
    pub release: bool,
}

/// An AppendOnce call: wait for the lease, append, release.
#[derive(Debug, Clone)]
pub struct AppendOnceArgs {
    /// The resource.
    pub resource: ResourceName,
    /// The writer.
    pub owner: Owner,
    /// How long to wait in the queue.
    pub wait: Duration,
    /// The lines.
    pub entries: Vec<Vec<u8>>,
    /// Compare-and-append epoch.
    pub expected_epoch: Option<u64>,
    /// Retry de-duplication key (per client id).
    pub request_id: Option<String>,
}

/// A durable append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// First seq of the batch.
    pub first_seq: u64,
    /// Last seq of the batch.
    pub last_seq: u64,
    /// Head after the batch.
    pub head: Head,
}

/// What a Release did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// The lease was live and is now released (or force-released).
    Released(Arc<str>),
    /// The lease had already ended.
    AlreadyEnded(Arc<str>, EndReason),
    /// A forced release found the resource free.
    NotHeld,
}

/// The state of one resource.
#[derive(Debug, Clone)]
pub struct Description {
    /// The resource.
    pub resource: ResourceName,
    /// The live lease, if any.
    pub holder: Option<LeaseView>,
    /// Newest token issued for it.
    pub token: u64,
    /// Queue length.
    pub waiters: usize,
    /// Its head.
    pub head: Head,
    /// Whether the session file exists.
    pub exists: bool,
    /// Why appends are refused, if they are.
    pub blocked: Option<String>,
}

/// A lease's status for keepalives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Live, with this much time left.
    Alive(Duration),
    /// Ended.
    Ended(EndReason),
    /// Never known, or forgotten.
    Unknown,
}

/// What happened, for watchers and keepalive streams.
#[derive(Debug, Clone)]
pub struct Event {
    /// What.
    pub kind: EventKind,
    /// Where.
    pub resource: ResourceName,
    /// Which lease.
    pub lease_id: Arc<str>,
    /// Its token.
    pub token: u64,
    /// Its owner.
    pub owner: Arc<Owner>,
    /// For appends: first and last seq.
    pub seqs: Option<(u64, u64)>,
    /// Head after the event, where known.
    pub head: Option<Head>,
    /// Server time, microseconds since the Unix epoch.
    pub time_unix_micros: u64,
}

/// Kinds of [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A lease was granted.
    Granted,
    /// A lease ended.
    Ended(EndReason),
    /// A batch was appended.
    Appended,
    /// The session file was found changed behind the server's back (what changed).
    ExternalModification(Arc<str>),
    /// An operator adopted the file's current content (what was adopted).
    Adopted(Arc<str>),
}
