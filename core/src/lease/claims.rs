//! Caps on what clients can make the server hold: leases plus Acquire calls waiting for one,
//! server-wide and per client id.
//!
//! An Acquire takes a [`Claim`] when it queues; the claim moves into the lease it is granted and
//! is dropped with the waiter or the lease, so the counts cannot drift from what is held. The
//! counts have their own lock, taken after the state lock (never the other way round): claims
//! drop where leases and waiters do, often under the state lock.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::CoreError;

/// Leases and waiting acquires, in all and by client id.
#[derive(Default)]
struct Counts {
    total: usize,
    by_client: HashMap<String, usize>,
}

/// The claim counter and its limits.
pub(super) struct Claims {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
    max_per_client: usize,
}

/// One lease held or waited for by `client`; released on drop.
pub(super) struct Claim {
    counts: Arc<Mutex<Counts>>,
    client: String,
}

fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Claims {
    pub fn new(max_total: usize, max_per_client: usize) -> Self {
        Self {
            counts: Arc::default(),
            max_total,
            max_per_client,
        }
    }

    /// A claim for `client_id`, or [`CoreError::TooManyLeases`] naming the limit it would pass.
    pub fn take(&self, client_id: &str) -> Result<Claim, CoreError> {
        let mut counts = lock(&self.counts);
        let mine = counts.by_client.get(client_id).copied().unwrap_or(0);
        if mine >= self.max_per_client {
            return Err(CoreError::TooManyLeases {
                holder: format!("client {client_id:?}"),
                count: mine,
                limit: self.max_per_client,
                flag: "--max-leases-per-client",
            });
        }
        if counts.total >= self.max_total {
            return Err(CoreError::TooManyLeases {
                holder: "the server".into(),
                count: counts.total,
                limit: self.max_total,
                flag: "--max-leases",
            });
        }
        counts.total += 1;
        *counts.by_client.entry(client_id.to_owned()).or_default() += 1;
        Ok(Claim {
            counts: Arc::clone(&self.counts),
            client: client_id.to_owned(),
        })
    }

    /// Leases held plus acquires waiting (or being granted), in all.
    pub fn total(&self) -> usize {
        lock(&self.counts).total
    }

    /// Leases held or waited for: in all, and by `client_id`.
    #[cfg(test)]
    pub fn count(&self, client_id: &str) -> (usize, usize) {
        let counts = lock(&self.counts);
        let mine = counts.by_client.get(client_id).copied().unwrap_or(0);
        (counts.total, mine)
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total -= 1;
        if let Some(mine) = counts.by_client.get_mut(&self.client) {
            *mine -= 1;
            if *mine == 0 {
                counts.by_client.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_capped_per_client_and_in_all_and_given_back_on_drop() {
        let claims = Claims::new(3, 2);
        let a1 = claims.take("a").unwrap();
        let a2 = claims.take("a").unwrap();
        let err = claims.take("a").err().expect("a third claim for a");
        assert!(err.to_string().contains("--max-leases-per-client"), "{err}");
        let b1 = claims.take("b").unwrap();
        let err = claims.take("c").err().expect("a fourth claim in all");
        assert!(err.to_string().contains("the server"), "{err}");
        assert!(
            err.metadata()
                .contains(&("flag", "--max-leases".to_owned()))
        );
        assert_eq!(claims.count("a"), (3, 2));
        drop(a1);
        assert_eq!(claims.count("a"), (2, 1));
        let c1 = claims.take("c").unwrap();
        drop((a2, b1, c1));
        assert_eq!(claims.count("a"), (0, 0));
        assert!(
            lock(&claims.counts).by_client.is_empty(),
            "no empty entries"
        );
    }
}
