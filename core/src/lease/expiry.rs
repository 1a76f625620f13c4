//! The expiry task: one task over the lease deadlines, sleeping until the earliest.
//!
//! Renewals only move deadlines later, so they never wake it. Before it sleeps it puts the earliest
//! entries right (see [`super::deadlines`]): renewed leases go back at their new deadlines, ended
//! ones are dropped, due ones end; so it sleeps until a real deadline and wakes only for leases
//! that may really expire, not once per renewed lease. New leases that become the earliest notify
//! it.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Inner;
use super::state::Effects;
use super::types::EndReason;

/// Entries put right per hold of the state lock: a keepalive waits for at most this many.
const CHUNK: usize = 256;

pub(super) async fn run(inner: Arc<Inner>) {
    loop {
        let mut fx = Effects::default();
        let mut expired = Vec::new();
        let (next, more) = {
            let mut st = inner.lock();
            if st.closed {
                return;
            }
            let now = Instant::now();
            let mut budget = CHUNK;
            while let Some((at, key)) = st.deadlines.peek() {
                match st.leases.by_key(key).map(|rec| (rec.deadline, &rec.id)) {
                    // Ended already.
                    None => {
                        st.deadlines.pop();
                    }
                    Some((deadline, id)) if deadline <= now => {
                        let id = id.clone();
                        st.deadlines.pop();
                        let late_us = now.saturating_duration_since(deadline).as_micros();
                        st.end_lease(&id, EndReason::Expired, &mut fx);
                        expired.push((id, late_us));
                    }
                    Some((renewed, _)) if renewed > at => {
                        st.deadlines.pop();
                        st.deadlines.schedule(renewed, key);
                    }
                    // A real deadline, still ahead.
                    Some(_) => break,
                }
                budget -= 1;
                if budget == 0 {
                    break;
                }
            }
            (st.deadlines.next(), budget == 0)
        };
        // The next holders' grants start first; logging waits for them and never holds the lock.
        inner.apply(fx);
        for (lease_id, late_us) in expired {
            tracing::info!(%lease_id, late_us, "lease expired");
        }
        if more {
            tokio::task::yield_now().await;
            continue;
        }
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
/// on the first millisecond tick at or after the time asked, often a tick later when idle, and
/// later still when the workers are busy; the blocking sleep is cheap (the task sleeps only until
/// real deadlines), so the margin is generous.
const MARGIN: Duration = Duration::from_millis(4);

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
