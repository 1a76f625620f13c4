//! `client.lease(resource)...acquire()`: how a [`Lease`] is asked for and granted.

use std::time::Duration;

use fencepost as proto;
use proto::v1::OwnerKind;

use crate::{AcquireOptions, Client, Error, Lease};

/// The options a lease was acquired with, kept to acquire it again after a yield.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LeaseOptions {
    pub(crate) ttl: Option<Duration>,
    pub(crate) wait: Duration,
    pub(crate) kind: Option<OwnerKind>,
}

/// Asks for a [`Lease`] on one resource: `client.lease(resource).ttl(..).wait(..).acquire()`.
///
/// ```no_run
/// use std::time::Duration;
/// use fencepost_client::{Client, OwnerKind};
///
/// # async fn demo() -> Result<(), fencepost_client::Error> {
/// let client = Client::connect("unix:/run/fencepost.sock").await?;
/// let lease = client
///     .lease("agents/main/sessions/4f1c2a.jsonl")
///     .ttl(Duration::from_secs(15))
///     .wait(Duration::from_secs(30))
///     .kind(OwnerKind::Runner)
///     .acquire()
///     .await?;
/// println!("holding {} with token {}", lease.resource(), lease.token());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a lease builder does nothing until `acquire` is awaited"]
pub struct LeaseBuilder {
    client: Client,
    resource: String,
    options: LeaseOptions,
}

impl LeaseBuilder {
    pub(crate) fn new(client: Client, resource: String) -> Self {
        Self {
            client,
            resource,
            options: LeaseOptions::default(),
        }
    }

    /// The lease's TTL (default: the server's). The SDK renews at about a third of it.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) {
    /// let builder = client.lease("a.jsonl").ttl(std::time::Duration::from_secs(10));
    /// # }
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.options.ttl = Some(ttl);
        self
    }

    /// How long to wait in the resource's FIFO queue while someone else holds it (default:
    /// zero, try once).
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) {
    /// let builder = client.lease("a.jsonl").wait(std::time::Duration::from_secs(30));
    /// # }
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.options.wait = wait;
        self
    }

    /// The owner kind recorded with this lease and its entries (default: the client's).
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) {
    /// let builder = client.lease("a.jsonl").kind(fencepost_client::OwnerKind::Cron);
    /// # }
    /// ```
    pub fn kind(mut self, kind: OwnerKind) -> Self {
        self.options.kind = Some(kind);
        self
    }

    /// Acquires the lease and starts keeping it alive on the client's keepalive stream.
    ///
    /// The acquire carries an idempotency key made once for this call, so a retry after a lost
    /// reply gets the same lease back instead of queueing behind itself.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the resource stayed held for the whole wait;
    /// [`Error::InvalidInput`] for a bad resource name or TTL; [`Error::Unavailable`] when the
    /// server stayed unreachable for the whole retry policy.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let lease = client.lease("a.jsonl").acquire().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire(self) -> Result<Lease, Error> {
        grant(self.client, self.resource, self.options).await
    }
}

/// Acquires `resource` with `options` and wraps the grant in a kept-alive [`Lease`].
pub(crate) async fn grant(
    client: Client,
    resource: String,
    options: LeaseOptions,
) -> Result<Lease, Error> {
    let acquire = AcquireOptions {
        ttl: options.ttl,
        wait: options.wait,
        idempotency_key: Some(uuid::Uuid::new_v4().to_string()),
    };
    let (reply, sent) = client
        .acquire_as(resource.clone(), acquire, options.kind)
        .await?;
    let received = tokio::time::Instant::now();
    let (Some(lease), Some(head)) = (reply.lease, reply.head) else {
        return Err(Error::Other {
            code: tonic::Code::Internal,
            reason: None,
            message: format!("the server granted {resource} without a lease or a head"),
        });
    };
    Ok(Lease::granted(client, lease, head, options, sent, received))
}
