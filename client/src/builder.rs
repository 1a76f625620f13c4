//! Connection settings for a [`Client`]: endpoint, timeouts and owner identity.

use std::time::Duration;

use fencepost as proto;
use proto::v1::OwnerKind;

use crate::endpoint::{Target, TlsOptions};
use crate::{Client, Error, RetryPolicy, owner};

/// The connect timeout used unless [`ClientBuilder::connect_timeout`] says otherwise.
///
/// ```
/// assert_eq!(fencepost_client::DEFAULT_CONNECT_TIMEOUT.as_secs(), 5);
/// ```
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Builds a [`Client`]: `Client::builder("unix:/run/fencepost.sock").request_timeout(..).connect()`.
///
/// ```no_run
/// # async fn demo() -> Result<(), fencepost_client::Error> {
/// use fencepost_client::{Client, OwnerKind};
/// let client = Client::builder("unix:/run/fencepost.sock")
///     .name("cron@host1")
///     .kind(OwnerKind::Cron)
///     .connect()
///     .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ClientBuilder {
    endpoint: String,
    connect_timeout: Duration,
    request_timeout: Option<Duration>,
    retry: RetryPolicy,
    client_id: Option<String>,
    name: Option<String>,
    kind: OwnerKind,
    tls: TlsOptions,
}

impl ClientBuilder {
    pub(crate) fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: None,
            retry: RetryPolicy::default(),
            client_id: None,
            name: None,
            kind: OwnerKind::Runner,
            tls: TlsOptions::default(),
        }
    }

    /// How long connecting (socket plus HTTP/2 handshake) may take. Default 5s.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// let client = fencepost_client::Client::builder("127.0.0.1:7420")
    ///     .connect_timeout(std::time::Duration::from_secs(1))
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long each call may wait for its answer; unset (the default) waits as long as the
    /// server takes. An acquire gets its own `wait` on top of this, so a long queue wait is never
    /// cut short. On streaming calls it bounds only the wait for the stream to open. A call
    /// that times out is retried like any transient failure (see [`ClientBuilder::retry`]).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// let client = fencepost_client::Client::builder("127.0.0.1:7420")
    ///     .request_timeout(std::time::Duration::from_secs(3))
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = Some(timeout);
        self
    }

    /// How transient failures are retried (default [`RetryPolicy::default`]: up to 15s);
    /// [`RetryPolicy::disabled`] tries every call once.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// use fencepost_client::{Client, RetryPolicy};
    /// let client = Client::builder("127.0.0.1:7420")
    ///     .retry(RetryPolicy::disabled())
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Uses this `client_id` instead of a fresh UUID: for a process that must be recognised as
    /// the same owner across restarts (an acquire retried with the same idempotency key).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// let client = fencepost_client::Client::builder("127.0.0.1:7420")
    ///     .client_id("gateway-1")
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The owner name recorded with leases and entries. Default `<hostname> pid <pid>`.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// let client = fencepost_client::Client::builder("127.0.0.1:7420")
    ///     .name("heartbeat@host1")
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The owner kind recorded with leases and entries. Default [`OwnerKind::Runner`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// let client = fencepost_client::Client::builder("127.0.0.1:7420")
    ///     .kind(fencepost_client::OwnerKind::Cron)
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn kind(mut self, kind: OwnerKind) -> Self {
        self.kind = kind;
        self
    }

    /// For an `https://` endpoint: trust the CA in `pem` (the one that issued the server's
    /// certificate) instead of the public CAs.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let client = fencepost_client::Client::builder("https://fencepost.internal:7420")
    ///     .tls_ca_certificate(std::fs::read("/etc/fencepost/ca.pem")?)
    ///     .connect()
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tls_ca_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca = Some(pem.into());
        self
    }

    /// For an `https://` endpoint whose server requires client certificates (mutual TLS): this
    /// client's certificate chain and private key, both PEM.
    pub fn tls_client_identity(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// Connects to the endpoint: `http://host:port`, `https://host:port`, `host:port` or
    /// `unix:/path/to.sock`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] (reason `INVALID_ENDPOINT`) for an endpoint that cannot be parsed,
    /// or TLS settings without an `https://` endpoint; [`Error::Unavailable`] when the server
    /// cannot be reached, or its TLS handshake fails, within the connect timeout.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// let client = fencepost_client::Client::builder("unix:/run/fencepost.sock").connect().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(self) -> Result<Client, Error> {
        let target = Target::parse(&self.endpoint)?;
        let channel = target.connect(self.connect_timeout, &self.tls).await?;
        tracing::debug!(endpoint = %target, "connected to fencepost");
        let mut identity = owner::new_owner(self.kind);
        if let Some(client_id) = self.client_id {
            identity.client_id = client_id;
        }
        if let Some(name) = self.name {
            identity.name = name;
        }
        Ok(Client::from_parts(
            channel,
            identity,
            self.request_timeout,
            self.retry,
        ))
    }
}
