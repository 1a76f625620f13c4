//! Matching keepalive replies to the renewals they answer, to know when each was sent.

use std::collections::VecDeque;

use tokio::time::Instant;

use super::task::MAX_IN_FLIGHT;

/// Renewals awaiting their reply, oldest first, with the instant each was sent.
///
/// The server answers requests in order, and in between pushes `alive = false` statuses for
/// leases lost meanwhile. A reply matches the oldest request when it names exactly that request's
/// leases; anything else is a push. A push can only be mistaken for a reply when it names exactly
/// a request's leases, all of them dead, so a mismatch never extends a live lease's deadline.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    sent: VecDeque<(Instant, Vec<String>)>,
}

impl InFlight {
    pub(super) fn push(&mut self, at: Instant, lease_ids: Vec<String>) {
        self.sent.push_back((at, lease_ids));
    }

    /// Whether a round of `messages` may be sent now: at most [`MAX_IN_FLIGHT`] messages go
    /// unanswered, except that a larger round may go alone, so that no lease is ever left out.
    pub(super) fn room_for(&self, messages: usize) -> bool {
        self.sent.is_empty() || self.sent.len() + messages <= MAX_IN_FLIGHT
    }

    /// The send time of the request this reply answers, if it answers the oldest one.
    pub(super) fn answered(&mut self, reply_ids: &[&str]) -> Option<Instant> {
        let (_, ids) = self.sent.front()?;
        if ids.len() == reply_ids.len() && ids.iter().zip(reply_ids).all(|(a, b)| a == b) {
            self.sent.pop_front().map(|(at, _)| at)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_reply_matches_the_oldest_request_with_the_same_leases() {
        let t0 = Instant::now();
        let t1 = t0 + Duration::from_millis(5);
        let mut in_flight = InFlight::default();
        in_flight.push(t0, vec!["a".into(), "b".into()]);
        in_flight.push(t1, vec!["a".into(), "b".into()]);
        // A pushed loss of `a` alone is not the reply.
        assert_eq!(in_flight.answered(&["a"]), None);
        assert_eq!(in_flight.answered(&["a", "b"]), Some(t0));
        assert_eq!(in_flight.answered(&["a", "b"]), Some(t1));
        assert_eq!(in_flight.answered(&["a", "b"]), None);
        assert!(in_flight.sent.is_empty());
    }
}
