//! Lease deadlines for the expiry task: a min-heap with lazy updates.
//!
//! A renewal only moves a lease's deadline later, so it just rewrites the deadline in the lease
//! record (no heap operation: a keepalive of 100 leases stays cheap under the state lock). Each
//! live lease keeps one entry here at or before its real deadline. The expiry task looks up the
//! lease of the earliest entry before it sleeps: it ends it if due, schedules it again at its real
//! deadline if it was renewed, or drops the entry of a lease that already ended, until the earliest
//! entry is a real deadline, which is what it sleeps until. Entries of ended leases are also
//! dropped in bulk when they outnumber the live ones.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use tokio::time::Instant;

use super::table::LeaseKey;

/// Stale entries tolerated beyond the live leases before the heap is rebuilt.
const SLACK: usize = 1024;

#[derive(Default)]
pub(super) struct Deadlines {
    heap: BinaryHeap<Reverse<(Instant, LeaseKey)>>,
}

impl Deadlines {
    /// Schedules `id` at `deadline`; true if that is now the earliest entry (the expiry task must
    /// be told).
    pub fn schedule(&mut self, deadline: Instant, id: LeaseKey) -> bool {
        let earliest = self.next().is_none_or(|d| deadline < d);
        self.heap.push(Reverse((deadline, id)));
        earliest
    }

    /// The earliest entry's deadline.
    pub fn next(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((d, _))| *d)
    }

    /// The earliest entry.
    pub fn peek(&self) -> Option<(Instant, LeaseKey)> {
        self.heap.peek().map(|Reverse((d, id))| (*d, *id))
    }

    /// Takes the earliest entry.
    pub fn pop(&mut self) -> Option<LeaseKey> {
        self.heap.pop().map(|Reverse((_, id))| id)
    }

    /// Rebuilds the heap from the live leases if stale entries outnumber them.
    pub fn compact(&mut self, live: impl ExactSizeIterator<Item = (Instant, LeaseKey)>) {
        if self.heap.len() <= 2 * live.len() + SLACK {
            return;
        }
        self.heap = live.map(Reverse).collect();
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn entries_come_due_in_deadline_order_and_the_earliest_is_reported() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let [a, b, c] = [1, 2, 3].map(LeaseKey);
        assert!(d.schedule(t0 + Duration::from_secs(5), b));
        assert!(!d.schedule(t0 + Duration::from_secs(9), c));
        assert!(d.schedule(t0 + Duration::from_secs(1), a));
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(1)));
        assert_eq!(d.peek(), Some((t0 + Duration::from_secs(1), a)));
        let order: Vec<_> = std::iter::from_fn(|| d.pop()).collect();
        assert_eq!(order, vec![a, b, c]);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn compaction_keeps_only_live_leases_once_stale_entries_pile_up() {
        let t0 = Instant::now();
        let mut d = Deadlines::default();
        let ids: Vec<LeaseKey> = (0..3000).map(LeaseKey).collect();
        for id in &ids {
            d.schedule(t0 + Duration::from_secs(60), *id);
        }
        let live = [(t0 + Duration::from_secs(70), ids[7])];
        d.compact(live.iter().copied());
        assert_eq!(d.len(), 1);
        assert_eq!(d.next(), Some(t0 + Duration::from_secs(70)));
        // Below the slack nothing is rebuilt.
        d.schedule(t0, ids[1]);
        d.compact(live.iter().copied());
        assert_eq!(d.len(), 2);
    }
}
