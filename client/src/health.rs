//! A lease's health as its holder sees it (healthy, in jeopardy, lost and why): the shared signal
//! the keepalive task updates, and the [`Lease`] methods that observe it.

use std::future::Future;

use fencepost as proto;
use proto::v1::LeaseEnd;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::Lease;

/// Why a lease was lost. Once lost, a lease stays lost: stop writing under its token and, if the
/// work must go on, acquire the resource again.
///
/// ```
/// use fencepost_client::LossReason;
///
/// assert_eq!(LossReason::ConnectionLost.as_str(), "CONNECTION_LOST");
/// assert!(LossReason::Expired.to_string().contains("TTL"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LossReason {
    /// The server expired it: it was not renewed within its TTL.
    Expired,
    /// It was released: broken elsewhere by an operator's forced release, released through
    /// another handle, or released by this SDK ([`crate::Lease::release`], dropping the
    /// [`crate::Lease`], or yielding it).
    Released,
    /// The server no longer knows the lease (`LEASE_END_UNKNOWN`): it restarted, and every lease
    /// ends on a restart.
    ServerRestarted,
    /// No keepalive succeeded for longer than the TTL (the server was unreachable or did not
    /// answer): the server may have expired the lease by now, so the SDK gives it up first.
    ConnectionLost,
}

impl LossReason {
    /// The upper-case name used in logs and error lines: `EXPIRED`, `RELEASED`,
    /// `SERVER_RESTARTED`, `CONNECTION_LOST`.
    ///
    /// ```
    /// assert_eq!(fencepost_client::LossReason::Released.as_str(), "RELEASED");
    /// ```
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Expired => "EXPIRED",
            Self::Released => "RELEASED",
            Self::ServerRestarted => "SERVER_RESTARTED",
            Self::ConnectionLost => "CONNECTION_LOST",
        }
    }

    /// The reason for a lease a keepalive status reported dead.
    pub(crate) fn from_end(ended: i32) -> Self {
        match LeaseEnd::try_from(ended) {
            Ok(LeaseEnd::Released | LeaseEnd::Forced) => Self::Released,
            Ok(LeaseEnd::Unknown) => Self::ServerRestarted,
            Ok(LeaseEnd::Expired | LeaseEnd::Unspecified) | Err(_) => Self::Expired,
        }
    }

    /// The reason behind a fencing rejection of a call made through the lease, if the rejection
    /// means the lease is gone (a head mismatch or an external modification does not).
    pub(crate) fn from_rejection(err: &crate::Error) -> Option<Self> {
        match err {
            crate::Error::StaleToken { .. } => Some(Self::Released),
            crate::Error::LeaseLost { reason, .. } => match reason.as_str() {
                "LEASE_EXPIRED" => Some(Self::Expired),
                "LEASE_RELEASED" => Some(Self::Released),
                "LEASE_NOT_FOUND" => Some(Self::ServerRestarted),
                _ => None,
            },
            crate::Error::Lost { reason } => Some(*reason),
            _ => None,
        }
    }
}

impl std::fmt::Display for LossReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self {
            Self::Expired => "the server expired the lease (not renewed within its TTL)",
            Self::Released => {
                "the lease was released (by its holder or an operator's forced release)"
            }
            Self::ServerRestarted => "the server restarted and no longer knows the lease",
            Self::ConnectionLost => "no keepalive succeeded within the lease's TTL",
        };
        write!(f, "{}: {what}", self.as_str())
    }
}

/// A lease's health as its holder sees it.
///
/// ```
/// use fencepost_client::{LeaseHealth, LossReason};
///
/// let health = LeaseHealth::Lost(LossReason::Expired);
/// assert!(health.is_lost());
/// assert!(!LeaseHealth::Jeopardy.is_lost());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LeaseHealth {
    /// Renewed recently: more than half of the TTL is left.
    Healthy,
    /// No renewal was confirmed for half the TTL: the lease is still live, but unless a
    /// keepalive gets through it will be lost. A good moment to stop starting new work.
    Jeopardy,
    /// The lease is gone; see the reason.
    Lost(LossReason),
}

impl LeaseHealth {
    /// True once the lease is lost.
    ///
    /// ```
    /// assert!(!fencepost_client::LeaseHealth::Healthy.is_lost());
    /// ```
    #[must_use]
    pub fn is_lost(self) -> bool {
        matches!(self, Self::Lost(_))
    }
}

/// What the keepalive task and the lease's observers share: the health channel and the loss
/// token, cancelled exactly once, when the lease is lost or released.
#[derive(Debug)]
pub(crate) struct LeaseSignal {
    health: watch::Sender<LeaseHealth>,
    token: CancellationToken,
}

impl LeaseSignal {
    pub(crate) fn new() -> Self {
        Self {
            health: watch::Sender::new(LeaseHealth::Healthy),
            token: CancellationToken::new(),
        }
    }

    pub(crate) fn current(&self) -> LeaseHealth {
        *self.health.borrow()
    }

    /// Healthy or in jeopardy; ignored once lost (loss is final).
    pub(crate) fn set_live(&self, health: LeaseHealth) {
        self.health.send_if_modified(|current| {
            if current.is_lost() || *current == health {
                return false;
            }
            *current = health;
            true
        });
    }

    /// Marks the lease lost; only the first reason counts. Returns true if this call lost it.
    pub(crate) fn lose(&self, reason: LossReason) -> bool {
        let first = self.health.send_if_modified(|current| {
            if current.is_lost() {
                return false;
            }
            *current = LeaseHealth::Lost(reason);
            true
        });
        self.token.cancel();
        first
    }

    pub(crate) fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<LeaseHealth> {
        self.health.subscribe()
    }

    /// Resolves with the loss reason once the lease is lost.
    pub(crate) fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        let mut health = self.subscribe();
        async move {
            loop {
                if let LeaseHealth::Lost(reason) = *health.borrow_and_update() {
                    return reason;
                }
                if health.changed().await.is_err() {
                    // The signal is gone with the lease; a lease only goes after being lost or
                    // released, and the value above would have said which.
                    return LossReason::Released;
                }
            }
        }
    }

    /// Resolves with the first health other than [`LeaseHealth::Healthy`].
    pub(crate) fn jeopardy(&self) -> impl Future<Output = LeaseHealth> + Send + 'static {
        let mut health = self.subscribe();
        async move {
            loop {
                let now = *health.borrow_and_update();
                if now != LeaseHealth::Healthy {
                    return now;
                }
                if health.changed().await.is_err() {
                    return LeaseHealth::Lost(LossReason::Released);
                }
            }
        }
    }
}

/// How a [`Lease`]'s holder watches it.
impl Lease {
    /// The lease's health right now.
    ///
    /// ```no_run
    /// # fn demo(lease: &fencepost_client::Lease) {
    /// if lease.health() == fencepost_client::LeaseHealth::Jeopardy {
    ///     eprintln!("renewals are not getting through");
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn health(&self) -> LeaseHealth {
        self.signal().current()
    }

    /// Every change of the lease's health: healthy, jeopardy (no renewal confirmed for half the
    /// TTL; it may recover), lost (final).
    ///
    /// ```no_run
    /// # async fn demo(lease: &fencepost_client::Lease) {
    /// let mut health = lease.health_watch();
    /// while health.changed().await.is_ok() {
    ///     eprintln!("lease is now {:?}", *health.borrow());
    /// }
    /// # }
    /// ```
    #[must_use]
    pub fn health_watch(&self) -> watch::Receiver<LeaseHealth> {
        self.signal().subscribe()
    }

    /// Resolves when the lease leaves [`LeaseHealth::Healthy`]: with `Jeopardy` when no renewal
    /// was confirmed for half the TTL, or with `Lost(..)` when it was lost outright (a forced
    /// release is reported at once, without a jeopardy first). The future owns what it needs, so
    /// it can be moved into a task.
    ///
    /// ```no_run
    /// # async fn demo(lease: &fencepost_client::Lease) {
    /// let health = lease.jeopardy().await;
    /// eprintln!("lease in trouble: {health:?}");
    /// # }
    /// ```
    pub fn jeopardy(&self) -> impl Future<Output = LeaseHealth> + Send + 'static {
        self.signal().jeopardy()
    }

    /// Resolves with the reason once the lease is lost: expired, released elsewhere or forced,
    /// unknown to a restarted server, or not renewed within the TTL. The client's deadline counts
    /// from when a renewal was sent, so this resolves no later than the server could expire the
    /// lease. It also resolves, with [`LossReason::Released`], when the lease is released or
    /// dropped. The future owns what it needs, so it can be moved into a task.
    ///
    /// ```no_run
    /// # async fn demo(lease: &fencepost_client::Lease) {
    /// let reason = lease.lost().await;
    /// eprintln!("stop writing: {reason}");
    /// # }
    /// ```
    pub fn lost(&self) -> impl Future<Output = LossReason> + Send + 'static {
        self.signal().lost()
    }

    /// A token cancelled when the lease ends for any reason: lost, released or dropped. Hand it
    /// to work that must stop writing once the lease is gone.
    ///
    /// ```no_run
    /// # async fn demo(lease: &fencepost_client::Lease) {
    /// let stop = lease.loss_token();
    /// tokio::spawn(async move {
    ///     stop.cancelled().await;
    ///     eprintln!("lease gone; stopping the worker");
    /// });
    /// # }
    /// ```
    #[must_use]
    pub fn loss_token(&self) -> CancellationToken {
        self.signal().token()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lease_end_maps_to_a_loss_reason() {
        assert_eq!(
            LossReason::from_end(LeaseEnd::Forced.into()),
            LossReason::Released
        );
        assert_eq!(
            LossReason::from_end(LeaseEnd::Released.into()),
            LossReason::Released
        );
        assert_eq!(
            LossReason::from_end(LeaseEnd::Expired.into()),
            LossReason::Expired
        );
        assert_eq!(
            LossReason::from_end(LeaseEnd::Unknown.into()),
            LossReason::ServerRestarted
        );
        assert_eq!(LossReason::from_end(99), LossReason::Expired);
    }

    #[test]
    fn a_rejection_that_ends_the_lease_names_the_reason() {
        let expired = crate::Error::LeaseLost {
            reason: "LEASE_EXPIRED".to_owned(),
            message: String::new(),
        };
        assert_eq!(
            LossReason::from_rejection(&expired),
            Some(LossReason::Expired)
        );
        let mismatch = crate::Error::HeadMismatch {
            message: String::new(),
        };
        assert_eq!(LossReason::from_rejection(&mismatch), None);
    }

    #[tokio::test]
    async fn loss_is_final_and_cancels_the_token() {
        let signal = LeaseSignal::new();
        let token = signal.token();
        let lost = signal.lost();
        let jeopardy = signal.jeopardy();
        signal.set_live(LeaseHealth::Jeopardy);
        assert_eq!(jeopardy.await, LeaseHealth::Jeopardy);
        signal.set_live(LeaseHealth::Healthy);
        assert!(signal.lose(LossReason::Expired));
        assert!(!signal.lose(LossReason::Released));
        signal.set_live(LeaseHealth::Healthy);
        assert_eq!(signal.current(), LeaseHealth::Lost(LossReason::Expired));
        assert_eq!(lost.await, LossReason::Expired);
        assert!(token.is_cancelled());
    }
}
