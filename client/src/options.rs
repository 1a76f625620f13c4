//! Per-call options: how to acquire, where to start reading, what to watch.

use std::time::Duration;

/// How to acquire a lease. `AcquireOptions::default()` asks for the server's default TTL and
/// tries once without waiting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcquireOptions {
    /// Requested TTL; `None` means the server default. A TTL above the server's maximum is
    /// refused with [`crate::Error::InvalidInput`].
    pub ttl: Option<Duration>,
    /// How long to wait in the resource's FIFO queue while it is held; zero means try once.
    pub wait: Duration,
    /// Makes the acquire retry-safe: a second acquire by the same client (same `client_id`) with
    /// the same key gets the same live lease back instead of queueing behind itself.
    pub idempotency_key: Option<String>,
}

impl AcquireOptions {
    /// Sets the requested TTL.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets how long to wait for a held resource.
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// Where a read starts and how much it returns. The default reads everything from seq 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// First sequence number to return (0 or 1 = from the start).
    pub from_seq: u64,
    /// Start at the first entry whose write epoch is at least this; takes precedence over
    /// `from_seq`.
    pub from_epoch: Option<u64>,
    /// At most this many entries; 0 = all.
    pub limit: u64,
}

/// What a watch follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchTarget {
    /// Exactly this resource.
    Resource(String),
    /// Every resource whose name starts with this prefix.
    Prefix(String),
}

/// Whole milliseconds for the wire, rounding a non-zero sub-millisecond remainder up so that a
/// tiny positive duration never turns into the wire's "0 = default / try once".
pub(crate) fn ceil_millis(duration: Duration) -> u64 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_round_up_but_keep_zero() {
        assert_eq!(ceil_millis(Duration::ZERO), 0);
        assert_eq!(ceil_millis(Duration::from_micros(1)), 1);
        assert_eq!(ceil_millis(Duration::from_millis(250)), 250);
        assert_eq!(ceil_millis(Duration::from_secs(10)), 10_000);
        assert_eq!(ceil_millis(Duration::MAX), u64::MAX);
    }

    #[test]
    fn acquire_options_chain() {
        let options = AcquireOptions::default()
            .ttl(Duration::from_secs(5))
            .wait(Duration::from_secs(1))
            .idempotency_key("k");
        assert_eq!(options.ttl, Some(Duration::from_secs(5)));
        assert_eq!(options.wait, Duration::from_secs(1));
        assert_eq!(options.idempotency_key.as_deref(), Some("k"));
    }
}
