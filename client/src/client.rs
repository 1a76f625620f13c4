//! The fencepost client: one typed method per RPC, carrying this client's owner identity.

use std::future::Future;
use std::time::Duration;

use fencepost as proto;
use proto::v1::fencepost_client::FencepostClient;
use proto::v1::{
    AcquireRequest, AcquireResponse, AppendRequest, AppendResponse, DescribeRequest,
    DescribeResponse, Entry, KeepAliveRequest, KeepAliveResponse, Lease, ListRequest, Owner,
    OwnerKind, ReadRequest, ReleaseRequest, ReleaseResponse, RenewRequest, RenewResponse,
    WatchEvent, WatchRequest,
};
use tokio_stream::{Stream, StreamExt, wrappers::IntervalStream};
use tonic::transport::Channel;

use crate::options::ceil_millis;
use crate::{AcquireOptions, ClientBuilder, Error, ReadOptions, ResponseStream, WatchTarget};

/// Largest reply the client decodes: well above any entry the server accepts (1 MiB by default,
/// configurable), so a large configured limit does not make reads fail on the client side.
const MAX_DECODING_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// A connection to a fencepost server plus the owner identity it acquires leases as.
///
/// Cloning is cheap and shares the connection and the identity; the connection reconnects by
/// itself after a failure, on the next call.
#[derive(Debug, Clone)]
pub struct Client {
    rpc: FencepostClient<Channel>,
    owner: Owner,
    request_timeout: Option<Duration>,
}

impl Client {
    /// Connects with the defaults: 5s connect timeout, no request timeout, a fresh `client_id`,
    /// name `<hostname> pid <pid>`, kind RUNNER. Use [`Client::builder`] to change them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an endpoint that cannot be parsed, [`Error::Unavailable`] when
    /// the server cannot be reached.
    pub async fn connect(endpoint: &str) -> Result<Self, Error> {
        Self::builder(endpoint).connect().await
    }

    /// Starts configuring a connection to `endpoint` (`http://host:port`, `host:port` or
    /// `unix:/path/to.sock`).
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// Wraps an already open channel, with a fresh owner identity of kind RUNNER.
    #[must_use]
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_parts(channel, crate::new_owner(OwnerKind::Runner), None)
    }

    pub(crate) fn from_parts(
        channel: Channel,
        owner: Owner,
        request_timeout: Option<Duration>,
    ) -> Self {
        Self {
            rpc: FencepostClient::new(channel).max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            owner,
            request_timeout,
        }
    }

    /// This client with another owner name (recorded with its leases and entries).
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.owner.name = name.into();
        self
    }

    /// This client with another owner kind.
    #[must_use]
    pub fn with_kind(mut self, kind: OwnerKind) -> Self {
        self.owner.kind = kind.into();
        self
    }

    /// This client with a chosen `client_id` instead of its fresh one.
    #[must_use]
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.owner.client_id = client_id.into();
        self
    }

    /// The owner identity this client acquires leases as.
    #[must_use]
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// This client's `client_id`.
    #[must_use]
    pub fn client_id(&self) -> &str {
        &self.owner.client_id
    }

    /// Acquires an exclusive lease on `resource`, waiting up to `options.wait` in its FIFO queue.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the resource stayed held for the whole wait (or at once when
    /// `wait` is zero); [`Error::InvalidInput`] for a bad resource name or TTL.
    pub async fn acquire(
        &self,
        resource: impl Into<String>,
        options: AcquireOptions,
    ) -> Result<AcquireResponse, Error> {
        let request = AcquireRequest {
            resource: resource.into(),
            owner: Some(self.owner.clone()),
            ttl_ms: options.ttl.map_or(0, ceil_millis),
            wait_ms: ceil_millis(options.wait),
            idempotency_key: options.idempotency_key.unwrap_or_default(),
        };
        let mut rpc = self.rpc.clone();
        self.unary(options.wait, rpc.acquire(request)).await
    }

    /// Renews one lease to its full TTL.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the lease already ended or covers another resource.
    pub async fn renew(
        &self,
        resource: impl Into<String>,
        lease_id: impl Into<String>,
    ) -> Result<RenewResponse, Error> {
        let request = RenewRequest {
            resource: resource.into(),
            lease_id: lease_id.into(),
        };
        let mut rpc = self.rpc.clone();
        self.unary(Duration::ZERO, rpc.renew(request)).await
    }

    /// Releases a lease and wakes the next waiter. Releasing a lease that already ended is not an
    /// error: the outcome says what had happened to it.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] (`WRONG_RESOURCE`, `LEASE_NOT_FOUND`) when the lease is not one of
    /// this resource's.
    pub async fn release(
        &self,
        resource: impl Into<String>,
        lease_id: impl Into<String>,
    ) -> Result<ReleaseResponse, Error> {
        self.release_request(ReleaseRequest {
            resource: resource.into(),
            lease_id: lease_id.into(),
            force: false,
        })
        .await
    }

    /// Operator action: ends whatever lease holds `resource` now. Its holder learns the lease
    /// was lost and its token becomes stale.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad resource name.
    pub async fn force_release(
        &self,
        resource: impl Into<String>,
    ) -> Result<ReleaseResponse, Error> {
        self.release_request(ReleaseRequest {
            resource: resource.into(),
            lease_id: String::new(),
            force: true,
        })
        .await
    }

    async fn release_request(&self, request: ReleaseRequest) -> Result<ReleaseResponse, Error> {
        let mut rpc = self.rpc.clone();
        self.unary(Duration::ZERO, rpc.release(request)).await
    }

    /// Appends `entries` (one JSON object each, no newline) as one atomic batch under a live
    /// lease and its fencing token; answered once the batch is durable. With `expected_epoch`
    /// the batch is accepted only if the resource's write epoch is exactly that.
    ///
    /// Each call carries a fresh request id; use [`Client::append_request`] to retry with the
    /// same one.
    ///
    /// # Errors
    ///
    /// [`Error::StaleToken`], [`Error::LeaseLost`], [`Error::HeadMismatch`] or
    /// [`Error::ExternalModification`] when the write is fenced off (nothing was appended);
    /// [`Error::InvalidInput`] for an entry that is not a single-line JSON object or too large.
    pub async fn append(
        &self,
        resource: impl Into<String>,
        lease_id: impl Into<String>,
        token: u64,
        entries: impl IntoIterator<Item = impl Into<Vec<u8>>>,
        expected_epoch: Option<u64>,
    ) -> Result<AppendResponse, Error> {
        self.append_request(AppendRequest {
            resource: resource.into(),
            lease_id: lease_id.into(),
            token,
            entries: entries.into_iter().map(Into::into).collect(),
            expected_epoch,
            request_id: String::new(),
            release: false,
        })
        .await
    }

    /// Sends a prepared append. An empty `request_id` is replaced by a fresh UUID; sending the
    /// same request id again under the same lease returns the original result and appends
    /// nothing, which makes a retry after a lost reply safe.
    ///
    /// # Errors
    ///
    /// As [`Client::append`].
    pub async fn append_request(
        &self,
        mut request: AppendRequest,
    ) -> Result<AppendResponse, Error> {
        if request.request_id.is_empty() {
            request.request_id = uuid::Uuid::new_v4().to_string();
        }
        let mut rpc = self.rpc.clone();
        self.unary(Duration::ZERO, rpc.append(request)).await
    }

    /// Streams the entries of `resource` from seq `from_seq` (0 or 1 = from the start), each with
    /// its metadata.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad resource name; later errors arrive in the stream.
    pub async fn read(
        &self,
        resource: impl Into<String>,
        from_seq: u64,
    ) -> Result<ResponseStream<Entry>, Error> {
        let options = ReadOptions {
            from_seq,
            ..ReadOptions::default()
        };
        self.read_with(resource, options).await
    }

    /// Streams the entries of `resource` selected by `options` (start seq or epoch, limit).
    ///
    /// # Errors
    ///
    /// As [`Client::read`].
    pub async fn read_with(
        &self,
        resource: impl Into<String>,
        options: ReadOptions,
    ) -> Result<ResponseStream<Entry>, Error> {
        let request = ReadRequest {
            resource: resource.into(),
            from_seq: options.from_seq,
            from_epoch: options.from_epoch,
            limit: options.limit,
        };
        let mut rpc = self.rpc.clone();
        let stream = self.unary(Duration::ZERO, rpc.read(request)).await?;
        Ok(ResponseStream::new(stream))
    }

    /// The current holder, newest token, queue length and head of `resource`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad resource name.
    pub async fn describe(&self, resource: impl Into<String>) -> Result<DescribeResponse, Error> {
        let request = DescribeRequest {
            resource: resource.into(),
        };
        let mut rpc = self.rpc.clone();
        self.unary(Duration::ZERO, rpc.describe(request)).await
    }

    /// All live leases on resources starting with `prefix` (`""` = all), ordered by resource.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the server cannot be reached.
    pub async fn list(&self, prefix: impl Into<String>) -> Result<Vec<Lease>, Error> {
        let request = ListRequest {
            prefix: prefix.into(),
        };
        let mut rpc = self.rpc.clone();
        let reply = self.unary(Duration::ZERO, rpc.list(request)).await?;
        Ok(reply.leases)
    }

    /// Streams lease and append events for one resource or a prefix until the stream is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad resource name or prefix; later errors arrive in the
    /// stream.
    pub async fn watch(&self, target: WatchTarget) -> Result<ResponseStream<WatchEvent>, Error> {
        let request = match target {
            WatchTarget::Resource(resource) => WatchRequest {
                resource,
                prefix: String::new(),
            },
            WatchTarget::Prefix(prefix) => WatchRequest {
                resource: String::new(),
                prefix,
            },
        };
        let mut rpc = self.rpc.clone();
        let stream = self.unary(Duration::ZERO, rpc.watch(request)).await?;
        Ok(ResponseStream::new(stream))
    }

    /// Opens a KeepAlive stream that sends `requests` as they come. The server answers each with
    /// the status of the leases it names, and pushes an `alive = false` status as soon as any
    /// lease named on the stream is lost. Ending `requests` ends the call.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the stream cannot be opened.
    pub async fn keepalive(
        &self,
        requests: impl Stream<Item = KeepAliveRequest> + Send + 'static,
    ) -> Result<ResponseStream<KeepAliveResponse>, Error> {
        let mut rpc = self.rpc.clone();
        let stream = self.unary(Duration::ZERO, rpc.keep_alive(requests)).await?;
        Ok(ResponseStream::new(stream))
    }

    /// Keeps `lease_ids` alive: renews them all at once, then every `interval`, and yields every
    /// reply (including pushed loss notifications) until the returned stream is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero interval; [`Error::Unavailable`] when the stream cannot
    /// be opened.
    pub async fn keepalive_stream(
        &self,
        lease_ids: Vec<String>,
        interval: Duration,
    ) -> Result<ResponseStream<KeepAliveResponse>, Error> {
        if interval.is_zero() {
            return Err(Error::InvalidInput {
                reason: "INVALID_ARGUMENT".to_owned(),
                message: "the keepalive interval must be greater than zero".to_owned(),
            });
        }
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let requests = IntervalStream::new(ticks).map(move |_| KeepAliveRequest {
            lease_ids: lease_ids.clone(),
        });
        self.keepalive(requests).await
    }

    /// Awaits one call's answer, bounded by the request timeout plus `allowance` (an acquire's
    /// queue wait).
    async fn unary<T>(
        &self,
        allowance: Duration,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, Error> {
        let answer = match self.request_timeout {
            None => call.await,
            Some(limit) => {
                let after = limit.saturating_add(allowance);
                tokio::time::timeout(after, call)
                    .await
                    .map_err(|_elapsed| Error::RequestTimeout { after })?
            }
        };
        answer.map(tonic::Response::into_inner).map_err(Error::from)
    }
}
