//! The expiry task: one task over the lease deadlines, sleeping until the earliest.
//!
//! Renewals only move deadlines later, so they never wake it; it wakes at the old deadline, finds
//! the lease renewed, schedules it at its new deadline, and sleeps again. New leases that become
//! the earliest notify it.

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
            while let Some(id) = st.deadlines.pop_due(now) {
                match st.leases.get(&id).map(|rec| rec.deadline) {
                    // Ended already.
                    None => {}
                    Some(deadline) if deadline <= now => {
                        tracing::info!(lease_id = %id, "lease expired");
                        st.end_lease(&id, EndReason::Expired, &mut fx);
                    }
                    Some(renewed) => {
                        st.deadlines.schedule(renewed, id);
                    }
                }
            }
            st.deadlines.next()
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
