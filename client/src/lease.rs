//! [`Lease`]: a held, kept-alive lease whose loss is observable; appends go through it and it is
//! released when consumed or dropped.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use fencepost as proto;
use proto::v1::{AppendRequest, AppendResponse, Head, Owner, ReleaseOutcome};
use tokio::time::Instant;

use crate::entry::batch;
use crate::health::LeaseSignal;
use crate::keepalive::Registration;
use crate::lease_builder::LeaseOptions;
use crate::{Client, Error, IntoEntry, LeaseHealth, LossReason};

/// An exclusive lease on one resource, kept alive in the background by its [`Client`].
///
/// Get one with [`Client::lease`]. While it lives, the client's keepalive task renews it at
/// about a third of its TTL; [`Lease::lost`] and [`Lease::loss_token`] tell when it is lost and
/// why, [`Lease::jeopardy`] warns earlier, when renewals stop getting through.
///
/// Appends through the lease carry its id and fencing token, and [`Lease::head`] follows them.
/// Consuming it with [`Lease::release`] frees the resource; dropping it does the same in the
/// background (on the current Tokio runtime; if there is none, the lease simply expires).
///
/// ```no_run
/// use fencepost_client::{Client, LossReason};
/// use serde_json::json;
///
/// # async fn demo() -> Result<(), fencepost_client::Error> {
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let lease = client.lease("agents/main/sessions/4f1c2a.jsonl").acquire().await?;
/// tokio::select! {
///     reason = lease.lost() => eprintln!("stopped: {reason}"),
///     done = lease.append([json!({"role": "assistant", "text": "hello"})]) => {
///         println!("appended at seq {}", done?.first_seq);
///     }
/// }
/// lease.release().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Lease {
    client: Client,
    resource: String,
    lease_id: String,
    token: u64,
    ttl: Duration,
    owner: Owner,
    options: LeaseOptions,
    // Never held across an await.
    head: Mutex<Head>,
    signal: Arc<LeaseSignal>,
    /// Released or yielded: nothing left for `Drop` to do.
    ended: bool,
}

impl Lease {
    /// Wraps a grant whose request was sent at `sent` and answered at `received`, and starts
    /// keeping it alive.
    pub(crate) fn granted(
        client: Client,
        lease: proto::v1::Lease,
        head: Head,
        options: LeaseOptions,
        sent: Instant,
        received: Instant,
    ) -> Self {
        let signal = Arc::new(LeaseSignal::new());
        client.keepalive_task().register(Registration {
            lease_id: lease.lease_id.clone(),
            ttl: Duration::from_millis(lease.ttl_ms),
            deadline: grant_deadline(
                sent,
                received,
                Duration::from_millis(lease.ttl_remaining_ms),
            ),
            signal: Arc::clone(&signal),
        });
        Self {
            client,
            resource: lease.resource,
            lease_id: lease.lease_id,
            token: lease.token,
            ttl: Duration::from_millis(lease.ttl_ms),
            owner: lease.owner.unwrap_or_default(),
            options,
            head: Mutex::new(head),
            signal,
            ended: false,
        }
    }

    /// The resource this lease covers.
    ///
    /// ```no_run
    /// # fn demo(lease: &fencepost_client::Lease) {
    /// println!("{}", lease.resource());
    /// # }
    /// ```
    #[must_use]
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The opaque lease id.
    ///
    /// ```no_run
    /// # fn demo(lease: &fencepost_client::Lease) {
    /// println!("{}", lease.lease_id());
    /// # }
    /// ```
    #[must_use]
    pub fn lease_id(&self) -> &str {
        &self.lease_id
    }

    /// The fencing token: strictly increasing per resource.
    ///
    /// ```no_run
    /// # fn demo(lease: &fencepost_client::Lease) {
    /// println!("token {}", lease.token());
    /// # }
    /// ```
    #[must_use]
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The TTL the server granted.
    ///
    /// ```no_run
    /// # fn demo(lease: &fencepost_client::Lease) {
    /// println!("ttl {:?}", lease.ttl());
    /// # }
    /// ```
    #[must_use]
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The owner the lease was granted to (this client's identity, with the lease's kind).
    ///
    /// ```no_run
    /// # fn demo(lease: &fencepost_client::Lease) {
    /// println!("held by {}", lease.owner().name);
    /// # }
    /// ```
    #[must_use]
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// The resource head as last seen through this lease: at the grant, then after each append
    /// made through it.
    ///
    /// ```no_run
    /// # fn demo(lease: &fencepost_client::Lease) {
    /// println!("next entry will be seq {}", lease.head().next_seq);
    /// # }
    /// ```
    #[must_use]
    pub fn head(&self) -> Head {
        self.lock_head().clone()
    }

    /// The write epoch of [`Lease::head`]: pass it to [`Lease::append_expecting`].
    ///
    /// ```no_run
    /// # fn demo(lease: &fencepost_client::Lease) {
    /// println!("epoch {}", lease.epoch());
    /// # }
    /// ```
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.lock_head().epoch
    }

    /// The client this lease belongs to.
    ///
    /// ```no_run
    /// # fn demo(lease: &fencepost_client::Lease) {
    /// println!("client {}", lease.client().client_id());
    /// # }
    /// ```
    #[must_use]
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Appends `lines` as one atomic batch (all or none) under this lease and its token; answered
    /// once durable. Items are raw JSON lines or [`serde_json::Value`]s (see [`IntoEntry`]).
    ///
    /// The request id is made once for this call, so a retry after an ambiguous failure returns
    /// the original result and appends nothing twice.
    ///
    /// # Errors
    ///
    /// [`Error::Lost`] without sending anything once the lease is known lost; the server's
    /// fencing rejections ([`Error::StaleToken`], [`Error::LeaseLost`], which also mark the lease
    /// lost, [`Error::ExternalModification`]); [`Error::InvalidInput`] for a bad entry.
    ///
    /// ```no_run
    /// # async fn demo(lease: &fencepost_client::Lease) -> Result<(), fencepost_client::Error> {
    /// let done = lease
    ///     .append([r#"{"role":"user","text":"hi"}"#, r#"{"role":"assistant","text":"hello"}"#])
    ///     .await?;
    /// assert_eq!(done.last_seq, done.first_seq + 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append<E: IntoEntry>(
        &self,
        lines: impl IntoIterator<Item = E>,
    ) -> Result<AppendResponse, Error> {
        self.send(batch(lines), None, false).await
    }

    /// Appends `lines` as one atomic batch and releases the lease in the same call, so an
    /// acquire/append/release cycle takes two round trips; consumes the lease. The server hands
    /// the lease to the next waiter as soon as the batch is accepted, while it is made durable;
    /// this call is answered once it is durable.
    ///
    /// # Errors
    ///
    /// As [`Lease::append`]. A batch that was refused leaves the lease held: it is then released
    /// in the background, as when a lease is dropped.
    ///
    /// ```no_run
    /// # async fn demo(lease: fencepost_client::Lease) -> Result<(), fencepost_client::Error> {
    /// let done = lease.append_and_release([r#"{"role":"tool","text":"done"}"#]).await?;
    /// println!("appended up to seq {}", done.last_seq);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_and_release<E: IntoEntry>(
        mut self,
        lines: impl IntoIterator<Item = E>,
    ) -> Result<AppendResponse, Error> {
        // The server ends the lease before it answers: keepalives stop first, so the end does
        // not reach this lease's loss handles as a loss while the call is still in flight.
        self.client.keepalive_task().unregister(&self.lease_id);
        let reply = self.send(batch(lines), None, true).await?;
        self.end_locally();
        Ok(reply)
    }

    /// Compare-and-append: appends only if the resource's write epoch is still `epoch`.
    ///
    /// # Errors
    ///
    /// [`Error::HeadMismatch`] when the epoch moved on; otherwise as [`Lease::append`].
    ///
    /// ```no_run
    /// # async fn demo(lease: &fencepost_client::Lease) -> Result<(), fencepost_client::Error> {
    /// lease.append_expecting(lease.epoch(), [r#"{"role":"user"}"#]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_expecting<E: IntoEntry>(
        &self,
        epoch: u64,
        lines: impl IntoIterator<Item = E>,
    ) -> Result<AppendResponse, Error> {
        self.send(batch(lines), Some(epoch), false).await
    }

    async fn send(
        &self,
        entries: Vec<Vec<u8>>,
        expected_epoch: Option<u64>,
        release: bool,
    ) -> Result<AppendResponse, Error> {
        if let LeaseHealth::Lost(reason) = self.signal.current() {
            return Err(Error::Lost { reason });
        }
        let request = AppendRequest {
            resource: self.resource.clone(),
            lease_id: self.lease_id.clone(),
            token: self.token,
            entries,
            expected_epoch,
            request_id: uuid::Uuid::new_v4().to_string(),
            release,
        };
        match self.client.append_request(request).await {
            Ok(reply) => {
                if let Some(new) = &reply.head {
                    let mut head = self.lock_head();
                    if new.epoch > head.epoch {
                        *head = new.clone();
                    }
                }
                Ok(reply)
            }
            Err(error) => {
                if let Some(reason) = LossReason::from_rejection(&error) {
                    self.client.keepalive_task().unregister(&self.lease_id);
                    self.signal.lose(reason);
                }
                Err(error)
            }
        }
    }

    /// Releases the lease and wakes the next waiter; consumes it. The outcome says what the
    /// server found (`Released`, or how the lease had already ended; `AlreadyReleased` can also
    /// mean an earlier attempt of this same call got through before its reply was lost).
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the server stayed unreachable (the lease then expires by
    /// itself after its TTL).
    ///
    /// ```no_run
    /// # async fn demo(lease: fencepost_client::Lease) -> Result<(), fencepost_client::Error> {
    /// let outcome = lease.release().await?;
    /// println!("{outcome:?}");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn release(mut self) -> Result<ReleaseOutcome, Error> {
        self.release_now().await
    }

    /// Stops the keepalives, marks the lease released and releases it on the server.
    pub(crate) async fn release_now(&mut self) -> Result<ReleaseOutcome, Error> {
        self.end_locally();
        let reply = self.client.release(&self.resource, &self.lease_id).await?;
        Ok(reply.outcome())
    }

    /// What the lease needs to be acquired again: client, resource and options.
    pub(crate) fn parts(&self) -> (Client, String, LeaseOptions) {
        (
            self.client.clone(),
            self.resource.clone(),
            self.options.clone(),
        )
    }

    fn end_locally(&mut self) {
        self.ended = true;
        self.client.keepalive_task().unregister(&self.lease_id);
        self.signal.lose(LossReason::Released);
    }

    pub(crate) fn signal(&self) -> &LeaseSignal {
        &self.signal
    }

    fn lock_head(&self) -> MutexGuard<'_, Head> {
        self.head.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The client's first deadline for a grant, before its first renewal (sent at once) is answered.
///
/// The server counts the TTL left from when it answered, which is after `sent` but before
/// `received`. For a grant without a queue wait, `sent` is the safe start. After a long queue wait
/// `sent` is far too early (the lease would look expired on arrival), so the answer is assumed
/// to have taken at most [`GRANT_REPLY_GUARD`] (or a tenth of the TTL) on the way back; the
/// first renewal's reply then gives a deadline that needs no such assumption.
fn grant_deadline(sent: Instant, received: Instant, remaining: Duration) -> Instant {
    let guard = GRANT_REPLY_GUARD.min(remaining / 10);
    let answered = received
        .checked_sub(guard)
        .map_or(sent, |earliest| earliest.max(sent));
    answered + remaining
}

/// See [`grant_deadline`].
const GRANT_REPLY_GUARD: Duration = Duration::from_secs(1);

impl Drop for Lease {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        self.end_locally();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let client = self.client.clone();
        let resource = std::mem::take(&mut self.resource);
        let lease_id = std::mem::take(&mut self.lease_id);
        runtime.spawn(async move {
            if let Err(error) = client.release(&resource, &lease_id).await {
                tracing::debug!(%error, lease_id, "releasing a dropped lease failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quick_grant_counts_its_ttl_from_the_request() {
        let sent = Instant::now();
        let received = sent + Duration::from_millis(3);
        let ttl = Duration::from_secs(10);
        assert_eq!(grant_deadline(sent, received, ttl), sent + ttl);
    }

    #[test]
    fn a_grant_after_a_long_wait_counts_from_just_before_the_answer() {
        let sent = Instant::now();
        let received = sent + Duration::from_secs(30);
        let ttl = Duration::from_secs(10);
        assert_eq!(
            grant_deadline(sent, received, ttl),
            received - Duration::from_secs(1) + ttl
        );
        let short = Duration::from_secs(2);
        assert_eq!(
            grant_deadline(sent, received, short),
            received - Duration::from_millis(200) + short
        );
    }
}
