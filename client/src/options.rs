//! Per-call options: how to acquire, where to start reading, what to watch.

use std::time::Duration;

/// How to acquire a lease. `AcquireOptions::default()` asks for the server's default TTL and
/// tries once without waiting.
///
/// ```no_run
/// use std::time::Duration;
/// use fencepost_client::AcquireOptions;
///
/// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
/// let options = AcquireOptions::default().ttl(Duration::from_secs(10)).wait(Duration::from_secs(5));
/// let grant = client.acquire("a.jsonl", options).await?;
/// # Ok(())
/// # }
/// ```
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
    ///
    /// ```
    /// let options = fencepost_client::AcquireOptions::default().ttl(std::time::Duration::from_secs(10));
    /// assert_eq!(options.ttl, Some(std::time::Duration::from_secs(10)));
    /// ```
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets how long to wait for a held resource.
    ///
    /// ```
    /// let options = fencepost_client::AcquireOptions::default().wait(std::time::Duration::from_secs(3));
    /// assert_eq!(options.wait.as_secs(), 3);
    /// ```
    #[must_use]
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the idempotency key.
    ///
    /// ```
    /// let options = fencepost_client::AcquireOptions::default().idempotency_key("turn-7");
    /// assert_eq!(options.idempotency_key.as_deref(), Some("turn-7"));
    /// ```
    #[must_use]
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
}

/// Where a read starts and how much it returns. The default reads everything from seq 1.
///
/// ```no_run
/// use fencepost_client::ReadOptions;
///
/// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
/// let since_epoch_4 = ReadOptions { from_epoch: Some(4), ..ReadOptions::default() };
/// let entries = client.read_with("a.jsonl", since_epoch_4).await?.into_vec().await?;
/// # Ok(())
/// # }
/// ```
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
///
/// ```no_run
/// use fencepost_client::WatchTarget;
///
/// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
/// let events = client.watch(WatchTarget::Prefix("agents/main/".to_owned())).await?;
/// # Ok(())
/// # }
/// ```
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
