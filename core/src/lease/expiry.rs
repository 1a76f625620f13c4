//! The expiry task: one task over the deadline-ordered set, sleeping until the earliest deadline.
//!
//! Renewals only move deadlines later, so they never wake it; it wakes at the old earliest
//! deadline, finds it moved, and sleeps again. New leases that become the earliest notify it.

use std::sync::Arc;

use tokio::time::Instant;

use super::Inner;
use super::state::Effects;
use super::types::EndReason;

pub(super) async fn run(inner: Arc<Inner>) {
    loop {
        let mut fx = Effects::default();
        let next = {
            let mut st = inner.lock();
            if st.closed {
                return;
            }
            let now = Instant::now();
            while let Some((deadline, id)) = st.deadlines.first().cloned() {
                if deadline > now {
                    break;
                }
                tracing::info!(lease_id = %id, "lease expired");
                st.end_lease(&id, EndReason::Expired, &mut fx);
            }
            st.deadlines.first().map(|(d, _)| *d)
        };
        inner.apply(fx);
        match next {
            Some(deadline) => {
                tokio::select! {
                    () = tokio::time::sleep_until(deadline) => {}
                    () = inner.expiry.notified() => {}
                }
            }
            None => inner.expiry.notified().await,
        }
    }
}
