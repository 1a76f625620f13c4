//! What the clients saw: every grant with its token and the batches appended under it, in the
//! order the grants were acknowledged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Lines of each session, by session name, as read back from one place (a file, an RPC, a store).
pub type Contents = BTreeMap<String, Vec<Vec<u8>>>;

/// One batch appended under a grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    /// The lines, in order; a batch is atomic.
    pub lines: Vec<Vec<u8>>,
    /// True once the system acknowledged the batch; false when the outcome is unknown (the call
    /// failed or timed out), so the batch may or may not be stored.
    pub acked: bool,
}

/// One grant a client received, and what it appended under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// The session (resource) granted.
    pub session: String,
    /// Position in grant order. Taken from one process-wide counter right after the grant arrives
    /// and before anything is sent under it, so the next holder of the same session, which the
    /// system can only grant after this holder's appends and release, always gets a higher one.
    pub order: u64,
    /// The fencing token seen on the grant; `None` for systems that issue none (lock files).
    pub token: Option<u64>,
    /// The batches appended under this grant, in acknowledgement order.
    pub batches: Vec<Batch>,
    /// For a grant taken inside the system by a one-call cycle: where its batch landed.
    pub placed: Option<Placed>,
}

/// Where a one-call cycle's batch landed, as far as the client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    /// Acknowledged at `first_seq` (1-based line of the session); `sent` and `replied` are
    /// [`Recorder::tick`]s taken just before the call and just after its reply, so a call answered
    /// before another was sent must sit before it in the session.
    At {
        first_seq: u64,
        sent: u64,
        replied: u64,
    },
    /// The outcome is unknown: the batch may be anywhere in the session, or absent.
    Unknown,
}

impl GrantRecord {
    /// The record of a one-call cycle: its order is the batch's first seq (the server grants in
    /// that order), or last when the outcome is unknown. Only comparable with records of the same
    /// kind.
    pub fn placed(session: &str, token: Option<u64>, placed: Placed, batch: Batch) -> Self {
        let order = match placed {
            Placed::At { first_seq, .. } => first_seq,
            Placed::Unknown => u64::MAX,
        };
        Self {
            session: session.to_owned(),
            order,
            token,
            batches: vec![batch],
            placed: Some(placed),
        }
    }
}

/// Every grant of a workload.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub grants: Vec<GrantRecord>,
}

impl History {
    /// The sessions named by any grant.
    pub fn sessions(&self) -> Vec<String> {
        let mut names: Vec<String> = self.grants.iter().map(|g| g.session.clone()).collect();
        names.sort();
        names.dedup();
        names
    }

    /// Grants of each session, sorted by grant order.
    pub fn by_session(&self) -> BTreeMap<&str, Vec<&GrantRecord>> {
        let mut map: BTreeMap<&str, Vec<&GrantRecord>> = BTreeMap::new();
        for g in &self.grants {
            map.entry(g.session.as_str()).or_default().push(g);
        }
        for grants in map.values_mut() {
            grants.sort_by_key(|g| g.order);
        }
        map
    }
}

/// Shared by the clients of one workload: hands out grant order numbers and collects records.
#[derive(Clone, Default)]
pub struct Recorder {
    next: Arc<AtomicU64>,
    // Held only to push a finished record; nothing awaits while holding it.
    grants: Arc<Mutex<Vec<GrantRecord>>>,
}

impl Recorder {
    /// Starts a record for a grant that just arrived. Call before sending anything under it.
    pub fn granted(&self, session: &str, token: Option<u64>) -> GrantRecord {
        GrantRecord {
            session: session.to_owned(),
            order: self.next.fetch_add(1, Ordering::SeqCst),
            token,
            batches: Vec::new(),
            placed: None,
        }
    }

    /// The next value of the counter grant orders come from: a point in the clients' real time.
    pub fn tick(&self) -> u64 {
        self.next.fetch_add(1, Ordering::SeqCst)
    }

    /// Stores a finished record.
    pub fn finish(&self, record: GrantRecord) {
        self.grants.lock().expect("recorder lock").push(record);
    }

    /// Everything recorded so far.
    pub fn history(&self) -> History {
        History {
            grants: self.grants.lock().expect("recorder lock").clone(),
        }
    }
}
