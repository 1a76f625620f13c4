//! Retrying transient failures: the policy, jittered exponential backoff, and the one call loop
//! every retried RPC goes through.

use std::future::Future;
use std::time::Duration;

use fencepost as proto;
use proto::v1::fencepost_client::FencepostClient;
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::{Client, Error};

/// How the SDK retries a call that failed for a transient reason ([`Error::is_transient`]:
/// unreachable server, broken connection, server stopping, client-side request timeout).
///
/// Every retried call is retry-safe: an Acquire carries an idempotency key, an Append or
/// AppendOnce a request id, generated once per logical call and sent again on every retry, so
/// a retry after an ambiguous failure returns the original result and never appends twice, as
/// long as the server remembers the id: in memory for recent calls, and kept with each batch on
/// disk, so that a retry reaching a restarted server finds the batch (among the last 4,096 of its
/// session). Fencing rejections and invalid input are never retried.
///
/// Retries stop when the next one would start after the deadline: `max_elapsed` after the call
/// began, plus the call's own queue wait for an acquire or an append-once.
///
/// ```no_run
/// use std::time::Duration;
/// use fencepost_client::{Client, RetryPolicy};
///
/// # async fn demo() -> Result<(), fencepost_client::Error> {
/// let client = Client::builder("http://127.0.0.1:7420")
///     .retry(RetryPolicy::default().max_elapsed(Duration::from_secs(30)))
///     .connect()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upper bound of the first pause (the pause is drawn uniformly below it: full jitter).
    pub initial_backoff: Duration,
    /// The bound doubles after every attempt up to this.
    pub max_backoff: Duration,
    /// How long after the call began a retry may still start; zero disables retries.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    /// 50ms first backoff bound, doubling to at most 2s, retrying for up to 15s.
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            max_elapsed: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// No retries: every call is tried exactly once.
    ///
    /// ```
    /// assert!(fencepost_client::RetryPolicy::disabled().max_elapsed.is_zero());
    /// ```
    #[must_use]
    pub fn disabled() -> Self {
        Self {
            max_elapsed: Duration::ZERO,
            ..Self::default()
        }
    }

    /// Sets how long retries may go on.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = fencepost_client::RetryPolicy::default().max_elapsed(Duration::from_secs(5));
    /// assert_eq!(policy.max_elapsed, Duration::from_secs(5));
    /// ```
    #[must_use]
    pub fn max_elapsed(mut self, max_elapsed: Duration) -> Self {
        self.max_elapsed = max_elapsed;
        self
    }

    /// Sets the first and the largest backoff bound.
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = fencepost_client::RetryPolicy::default()
    ///     .backoff(Duration::from_millis(10), Duration::from_millis(500));
    /// assert_eq!(policy.max_backoff, Duration::from_millis(500));
    /// ```
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }
}

/// Exponential backoff with full jitter: the n-th pause is uniform in `[0, min(max, initial·2ⁿ)]`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    bound: Duration,
    max: Duration,
    initial: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Self {
            bound: initial,
            max,
            initial,
        }
    }

    /// The next pause; the bound doubles each time.
    pub(crate) fn next_pause(&mut self) -> Duration {
        let bound_nanos = u64::try_from(self.bound.as_nanos()).unwrap_or(u64::MAX);
        let pause = Duration::from_nanos(fastrand::u64(0..=bound_nanos));
        self.bound = self.bound.saturating_mul(2).min(self.max);
        pause
    }

    pub(crate) fn reset(&mut self) {
        self.bound = self.initial;
    }
}

impl Client {
    /// Runs one logical call, retrying transient failures within the policy's deadline.
    ///
    /// `attempt` gets a fresh stub and what is left of `wait` (an acquire's queue wait; zero for
    /// other calls) and must send the same request every time (same key or request id). Returns
    /// the reply and the instant the successful attempt was sent.
    pub(crate) async fn call<T, Fut>(
        &self,
        wait: Duration,
        mut attempt: impl FnMut(FencepostClient<Channel>, Duration) -> Fut,
    ) -> Result<(T, Instant), Error>
    where
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let start = Instant::now();
        let wait_until = start + wait;
        let policy = self.retry;
        let deadline = (!policy.max_elapsed.is_zero()).then(|| wait_until + policy.max_elapsed);
        let mut backoff = Backoff::new(policy.initial_backoff, policy.max_backoff);
        let mut attempts = 0u32;
        loop {
            let sent = Instant::now();
            let left = wait_until.saturating_duration_since(sent);
            attempts += 1;
            let error = match self
                .bounded(left, deadline, attempt(self.rpc.clone(), left))
                .await
            {
                Ok(reply) => return Ok((reply, sent)),
                Err(error) => error,
            };
            let Some(deadline) = deadline.filter(|_| error.is_transient()) else {
                return Err(error);
            };
            let pause = backoff.next_pause();
            if Instant::now() + pause >= deadline {
                return Err(error);
            }
            tracing::debug!(attempts, ?pause, %error, "retrying after a transient failure");
            tokio::time::sleep(pause).await;
        }
    }

    /// Awaits one attempt's answer, bounded by the request timeout plus `allowance` (an
    /// acquire's queue wait) and by the retry deadline, whichever comes first.
    async fn bounded<T>(
        &self,
        allowance: Duration,
        deadline: Option<Instant>,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        let by_timeout = self
            .request_timeout
            .map(|limit| limit.saturating_add(allowance));
        let by_deadline = deadline.map(|deadline| {
            deadline
                .saturating_duration_since(Instant::now())
                .max(allowance)
        });
        let limit = match (by_timeout, by_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let answer = match limit {
            None => call.await,
            Some(after) => tokio::time::timeout(after, call)
                .await
                .map_err(|_elapsed| Error::RequestTimeout { after })?,
        };
        answer.map(tonic::Response::into_inner).map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_bounds_double_up_to_the_maximum_and_pauses_stay_below_them() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(35));
        let bounds = [10, 20, 35, 35, 35];
        for bound in bounds {
            let pause = backoff.next_pause();
            assert!(
                pause <= Duration::from_millis(bound),
                "{pause:?} > {bound}ms"
            );
        }
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(10));
    }

    #[test]
    fn a_disabled_policy_never_retries() {
        assert_eq!(RetryPolicy::disabled().max_elapsed, Duration::ZERO);
        let policy = RetryPolicy::default().backoff(Duration::from_secs(3), Duration::from_secs(1));
        assert_eq!(policy.max_backoff, Duration::from_secs(3));
    }
}
