//! The expiry task: one task over the lease deadlines, sleeping until the earliest.
//!
//! Renewals only move deadlines later, so they never wake it; it wakes at the old deadline, finds
//! the lease renewed, schedules it at its new deadline, and sleeps again. New leases that become
//! the earliest notify it.

use std::sync::Arc;
use std::time::Duration;

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
                    () = sleep_until_precisely(deadline) => {}
                    () = inner.expiry.notified() => {}
                }
            }
            None => inner.expiry.notified().await,
        }
    }
}

/// How long before a deadline the runtime timer hands over to a blocking sleep. Its timer fires
/// on the first millisecond tick at or after the time asked, often a tick later when idle.
const MARGIN: Duration = Duration::from_millis(2);

/// Sleeps until `deadline`, waking within a fraction of a millisecond of it rather than on one of
/// the runtime timer's later ticks, so a waiter gets an expired lease without that extra delay.
/// The runtime timer sleeps until [`MARGIN`] before; a blocking sleep on the blocking pool, which
/// the OS times in microseconds, does the rest. A paused test clock does not move during that
/// sleep, so a last runtime sleep moves it to the deadline.
async fn sleep_until_precisely(deadline: Instant) {
    if let Some(early) = deadline.checked_sub(MARGIN) {
        tokio::time::sleep_until(early).await;
    }
    let rest = deadline.saturating_duration_since(Instant::now());
    if !rest.is_zero() && rest <= MARGIN {
        let _ = tokio::task::spawn_blocking(move || std::thread::sleep(rest)).await;
    }
    if Instant::now() < deadline {
        tokio::time::sleep_until(deadline).await;
    }
}
