//! [`Changes`]: exactly the entries others appended while a lease was yielded, with who wrote
//! each one.

use fencepost as proto;
use proto::v1::{Entry, Head, Owner, OwnerKind};

/// One entry appended by someone else while the lease was yielded.
///
/// ```no_run
/// # fn demo(change: &fencepost_client::Change) {
/// println!(
///     "seq {} by {} ({:?}): {}",
///     change.seq,
///     change.owner.name,
///     change.kind(),
///     String::from_utf8_lossy(&change.line)
/// );
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Sequence number.
    pub seq: u64,
    /// Write epoch of the batch it came in.
    pub epoch: u64,
    /// Fencing token the batch was appended under.
    pub token: u64,
    /// Who appended it: client id, name and kind.
    pub owner: Owner,
    /// Server time of the append, microseconds since the Unix epoch.
    pub time_unix_micros: u64,
    /// The line exactly as written (without the newline).
    pub line: Vec<u8>,
}

impl Change {
    /// The writer's kind (heartbeat, cron, channel, runner, ...).
    ///
    /// ```no_run
    /// # fn demo(change: &fencepost_client::Change) {
    /// let from_heartbeat = change.kind() == fencepost_client::OwnerKind::Heartbeat;
    /// # }
    /// ```
    #[must_use]
    pub fn kind(&self) -> OwnerKind {
        self.owner.kind()
    }

    /// The line parsed as JSON.
    ///
    /// # Errors
    ///
    /// When the line is not JSON (the server only stores JSON objects, so only for a file
    /// adopted by an operator).
    ///
    /// ```no_run
    /// # fn demo(change: &fencepost_client::Change) -> Result<(), serde_json::Error> {
    /// let value = change.json()?;
    /// println!("{}", value["role"]);
    /// # Ok(())
    /// # }
    /// ```
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.line)
    }
}

impl From<Entry> for Change {
    fn from(entry: Entry) -> Self {
        Self {
            seq: entry.seq,
            epoch: entry.epoch,
            token: entry.token,
            owner: entry.owner.unwrap_or_default(),
            time_unix_micros: entry.time_unix_micros,
            line: entry.data,
        }
    }
}

/// What others appended between two heads: the one remembered when the lease was yielded and
/// the one of the new grant. Read while holding the new lease, so nothing can slip in between.
///
/// ```no_run
/// # fn demo(changes: &fencepost_client::Changes) {
/// for change in changes {
///     println!("{} wrote seq {}", change.owner.name, change.seq);
/// }
/// println!("{} entries by {} writers", changes.len(), changes.writers().len());
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changes {
    since: Head,
    until: Head,
    entries: Vec<Change>,
}

impl Changes {
    pub(crate) fn new(since: Head, until: Head, entries: Vec<Change>) -> Self {
        Self {
            since,
            until,
            entries,
        }
    }

    /// True when nobody appended meanwhile.
    ///
    /// ```no_run
    /// # fn demo(changes: &fencepost_client::Changes) {
    /// if changes.is_empty() {
    ///     println!("nothing happened while we were away");
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How many entries were appended meanwhile.
    ///
    /// ```no_run
    /// # fn demo(changes: &fencepost_client::Changes) {
    /// println!("{} new entries", changes.len());
    /// # }
    /// ```
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The entries, in log order.
    ///
    /// ```no_run
    /// # fn demo(changes: &fencepost_client::Changes) {
    /// let first = changes.iter().next().map(|change| change.seq);
    /// # }
    /// ```
    pub fn iter(&self) -> std::slice::Iter<'_, Change> {
        self.entries.iter()
    }

    /// The entries as a slice.
    ///
    /// ```no_run
    /// # fn demo(changes: &fencepost_client::Changes) {
    /// let last = changes.entries().last();
    /// # }
    /// ```
    #[must_use]
    pub fn entries(&self) -> &[Change] {
        &self.entries
    }

    /// Every distinct writer (by client id), in the order of their first entry.
    ///
    /// ```no_run
    /// use fencepost_client::OwnerKind;
    /// # fn demo(changes: &fencepost_client::Changes) {
    /// let only_co_tenants = changes
    ///     .writers()
    ///     .iter()
    ///     .all(|writer| matches!(writer.kind(), OwnerKind::Heartbeat | OwnerKind::Cron));
    /// # }
    /// ```
    #[must_use]
    pub fn writers(&self) -> Vec<&Owner> {
        let mut writers: Vec<&Owner> = Vec::new();
        for change in &self.entries {
            if !writers
                .iter()
                .any(|seen| seen.client_id == change.owner.client_id)
            {
                writers.push(&change.owner);
            }
        }
        writers
    }

    /// The head when the lease was yielded: the changes start at its `next_seq`.
    ///
    /// ```no_run
    /// # fn demo(changes: &fencepost_client::Changes) {
    /// println!("from seq {}", changes.since().next_seq);
    /// # }
    /// ```
    #[must_use]
    pub fn since(&self) -> &Head {
        &self.since
    }

    /// The head of the new grant: the changes end just before its `next_seq`.
    ///
    /// ```no_run
    /// # fn demo(changes: &fencepost_client::Changes) {
    /// println!("up to epoch {}", changes.until().epoch);
    /// # }
    /// ```
    #[must_use]
    pub fn until(&self) -> &Head {
        &self.until
    }
}

impl IntoIterator for Changes {
    type Item = Change;
    type IntoIter = std::vec::IntoIter<Change>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a> IntoIterator for &'a Changes {
    type Item = &'a Change;
    type IntoIter = std::slice::Iter<'a, Change>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, client_id: &str, kind: OwnerKind) -> Change {
        Change {
            seq,
            epoch: seq,
            token: 1,
            owner: Owner {
                client_id: client_id.to_owned(),
                name: format!("{client_id} name"),
                kind: kind.into(),
            },
            time_unix_micros: 0,
            line: b"{}".to_vec(),
        }
    }

    #[test]
    fn writers_are_distinct_and_in_order_of_first_entry() {
        let changes = Changes::new(
            Head::default(),
            Head::default(),
            vec![
                change(4, "cron", OwnerKind::Cron),
                change(5, "hb", OwnerKind::Heartbeat),
                change(6, "cron", OwnerKind::Cron),
            ],
        );
        let writers: Vec<&str> = changes
            .writers()
            .iter()
            .map(|w| w.client_id.as_str())
            .collect();
        assert_eq!(writers, ["cron", "hb"]);
        assert_eq!(changes.len(), 3);
        assert_eq!(changes.iter().map(|c| c.seq).collect::<Vec<_>>(), [4, 5, 6]);
        assert_eq!(changes.entries()[1].kind(), OwnerKind::Heartbeat);
    }
}
