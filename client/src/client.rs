//! The fencepost client: the connection, the owner identity, the keepalive task, and the
//! read-only unary calls (describe, list). Lease calls by id live in `raw`, streams in `stream`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use fencepost as proto;
use proto::v1::fencepost_client::FencepostClient;
use proto::v1::{
    AdoptRequest, AdoptResponse, DescribeRequest, DescribeResponse, Lease, ListRequest, Owner,
    OwnerKind,
};
use tonic::transport::Channel;

use crate::keepalive::KeepAlive;
use crate::lease_builder::LeaseBuilder;
use crate::{ClientBuilder, Error, RetryPolicy};

/// Largest reply the client decodes: well above any entry the server accepts (1 MiB by default,
/// configurable), so a large configured limit does not make reads fail on the client side.
const MAX_DECODING_MESSAGE_SIZE: usize = 256 * 1024 * 1024;

/// A connection to a fencepost server plus the owner identity it acquires leases as.
///
/// Cloning is cheap and shares the connection, the identity and the keepalive task; the
/// connection reconnects by itself after a failure, on the next call. The keepalive task (one
/// KeepAlive stream for all the client's leases) starts with the first [`Client::lease`] and
/// stops when the client, its clones and its leases are all dropped.
///
/// ```no_run
/// use fencepost_client::Client;
///
/// # async fn demo() -> Result<(), fencepost_client::Error> {
/// let client = Client::connect("http://127.0.0.1:7420").await?;
/// let state = client.describe("agents/main/sessions/4f1c2a.jsonl").await?;
/// println!("{} waiting", state.waiters);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Client {
    pub(crate) rpc: FencepostClient<Channel>,
    /// The connection, for services other than fencepost's own (health).
    channel: Channel,
    pub(crate) owner: Owner,
    pub(crate) request_timeout: Option<Duration>,
    pub(crate) retry: RetryPolicy,
    keepalive: Arc<OnceLock<KeepAlive>>,
}

impl Client {
    /// Connects with the defaults: 5s connect timeout, no request timeout, the default
    /// [`RetryPolicy`], a fresh `client_id`, name `<hostname> pid <pid>`, kind RUNNER. Use
    /// [`Client::builder`] to change them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for an endpoint that cannot be parsed, [`Error::Unavailable`] when
    /// the server cannot be reached.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// let client = fencepost_client::Client::connect("unix:/run/fencepost.sock").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(endpoint: &str) -> Result<Self, Error> {
        Self::builder(endpoint).connect().await
    }

    /// Starts configuring a connection to `endpoint` (`http://host:port`, `host:port` or
    /// `unix:/path/to.sock`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// let client = fencepost_client::Client::builder("127.0.0.1:7420")
    ///     .request_timeout(std::time::Duration::from_secs(5))
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(endpoint: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(endpoint)
    }

    /// Wraps an already open channel, with a fresh owner identity of kind RUNNER.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:7420")
    ///     .connect()
    ///     .await?;
    /// let client = fencepost_client::Client::from_channel(channel);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn from_channel(channel: Channel) -> Self {
        Self::from_parts(
            channel,
            crate::new_owner(OwnerKind::Runner),
            None,
            RetryPolicy::default(),
        )
    }

    pub(crate) fn from_parts(
        channel: Channel,
        owner: Owner,
        request_timeout: Option<Duration>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            rpc: FencepostClient::new(channel.clone())
                .max_decoding_message_size(MAX_DECODING_MESSAGE_SIZE),
            channel,
            owner,
            request_timeout,
            retry,
            keepalive: Arc::new(OnceLock::new()),
        }
    }

    /// This client with another owner name (recorded with its leases and entries).
    ///
    /// ```no_run
    /// # fn demo(client: fencepost_client::Client) {
    /// let client = client.with_name("gateway@host1 pid 74269");
    /// # }
    /// ```
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.owner.name = name.into();
        self
    }

    /// This client with another owner kind.
    ///
    /// ```no_run
    /// # fn demo(client: fencepost_client::Client) {
    /// let heartbeat = client.with_kind(fencepost_client::OwnerKind::Heartbeat);
    /// # }
    /// ```
    #[must_use]
    pub fn with_kind(mut self, kind: OwnerKind) -> Self {
        self.owner.kind = kind.into();
        self
    }

    /// This client with a chosen `client_id` instead of its fresh one.
    ///
    /// ```no_run
    /// # fn demo(client: fencepost_client::Client) {
    /// let client = client.with_client_id("gateway-1");
    /// # }
    /// ```
    #[must_use]
    pub fn with_client_id(mut self, client_id: impl Into<String>) -> Self {
        self.owner.client_id = client_id.into();
        self
    }

    /// The owner identity this client acquires leases as.
    ///
    /// ```no_run
    /// # fn demo(client: &fencepost_client::Client) {
    /// println!("{} ({})", client.owner().name, client.owner().client_id);
    /// # }
    /// ```
    #[must_use]
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    /// This client's `client_id`.
    ///
    /// ```no_run
    /// # fn demo(client: &fencepost_client::Client) {
    /// println!("{}", client.client_id());
    /// # }
    /// ```
    #[must_use]
    pub fn client_id(&self) -> &str {
        &self.owner.client_id
    }

    /// Starts asking for a kept-alive [`crate::Lease`] on `resource`; see [`LeaseBuilder`].
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let lease = client
    ///     .lease("agents/main/sessions/4f1c2a.jsonl")
    ///     .wait(std::time::Duration::from_secs(10))
    ///     .acquire()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn lease(&self, resource: impl Into<String>) -> LeaseBuilder {
        LeaseBuilder::new(self.clone(), resource.into())
    }

    /// Failure drills and tests: stops (`true`) or resumes (`false`) the renewals of this
    /// client's leases while the keepalive stream stays open. Paused leases go into jeopardy at
    /// half their TTL and are reported lost ([`crate::LossReason::ConnectionLost`]) when their
    /// TTL runs out, just as if the network dropped the renewals; the server expires them.
    ///
    /// ```no_run
    /// # fn demo(client: &fencepost_client::Client) {
    /// client.pause_keepalives(true);
    /// # }
    /// ```
    pub fn pause_keepalives(&self, paused: bool) {
        self.keepalive_task().pause(paused);
    }

    /// The keepalive task, started on first use.
    pub(crate) fn keepalive_task(&self) -> &KeepAlive {
        self.keepalive
            .get_or_init(|| KeepAlive::spawn(self.rpc.clone()))
    }

    /// The current holder, newest token, queue length and head of `resource`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad resource name.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let state = client.describe("a.jsonl").await?;
    /// println!("held: {}", state.holder.is_some());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn describe(&self, resource: impl Into<String>) -> Result<DescribeResponse, Error> {
        let request = DescribeRequest {
            resource: resource.into(),
        };
        let (reply, _sent) = self
            .call(Duration::ZERO, |mut rpc, _| {
                let request = request.clone();
                async move { rpc.describe(request).await }
            })
            .await?;
        Ok(reply)
    }

    /// Operator action: accepts a session file that was changed behind the server's back as a new
    /// head with a new write epoch. Entries that still match keep their metadata; the rest
    /// becomes one batch owned by `operator`. The resource must be free.
    ///
    /// # Errors
    ///
    /// [`Error::Other`] with reason `RESOURCE_BUSY` while the resource is held or waited for;
    /// [`Error::ExternalModification`] if the file ends in a partial line;
    /// [`Error::InvalidInput`] for a bad resource name.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let adopted = client.adopt("agents/main/s1.jsonl").await?;
    /// println!("{}", adopted.detail);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn adopt(&self, resource: impl Into<String>) -> Result<AdoptResponse, Error> {
        let request = AdoptRequest {
            resource: resource.into(),
        };
        let (reply, _sent) = self
            .call(Duration::ZERO, |mut rpc, _| {
                let request = request.clone();
                async move { rpc.adopt(request).await }
            })
            .await?;
        Ok(reply)
    }

    /// All live leases on resources starting with `prefix` (`""` = all), ordered by resource.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the server cannot be reached.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// for lease in client.list("agents/").await? {
    ///     println!("{} held with token {}", lease.resource, lease.token);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list(&self, prefix: impl Into<String>) -> Result<Vec<Lease>, Error> {
        let request = ListRequest {
            prefix: prefix.into(),
        };
        let (reply, _sent) = self
            .call(Duration::ZERO, |mut rpc, _| {
                let request = request.clone();
                async move { rpc.list(request).await }
            })
            .await?;
        Ok(reply.leases)
    }

    /// Whether the server serves the fencepost API now, by the standard gRPC health check of
    /// `fencepost.v1.Fencepost`: false while it drains for a shutdown, and once its store stopped
    /// accepting writes after a failed write or fsync (a restart recovers). One attempt, bounded by the
    /// request timeout if one is set: a probe reports the present, it does not wait for recovery.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the server cannot be reached.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// if !client.serving().await? {
    ///     eprintln!("fencepost is shutting down");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn serving(&self) -> Result<bool, Error> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

        let mut health = HealthClient::new(self.channel.clone());
        let check = health.check(HealthCheckRequest {
            service: proto::v1::fencepost_server::SERVICE_NAME.to_owned(),
        });
        let reply = match self.request_timeout {
            Some(after) => tokio::time::timeout(after, check)
                .await
                .map_err(|_elapsed| Error::RequestTimeout { after })?,
            None => check.await,
        }?;
        Ok(reply.into_inner().status == ServingStatus::Serving as i32)
    }
}
