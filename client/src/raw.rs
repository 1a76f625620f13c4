//! The lease RPCs by lease id and token (acquire, renew, release, append) for callers that manage
//! leases themselves; each retries transient failures with the same idempotency key or request id.

use std::time::Duration;

use fencepost as proto;
use proto::v1::{
    AcquireRequest, AcquireResponse, AppendRequest, AppendResponse, OwnerKind, ReleaseRequest,
    ReleaseResponse, RenewRequest, RenewResponse,
};
use tokio::time::Instant;

use crate::options::ceil_millis;
use crate::{AcquireOptions, Client, Error};

impl Client {
    /// Acquires an exclusive lease on `resource`, waiting up to `options.wait` in its FIFO queue,
    /// and returns the raw grant: nothing keeps it alive (see [`Client::lease`] for a lease the
    /// SDK keeps alive). Without an idempotency key, one is made for this call so that retries
    /// get the same lease back.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the resource stayed held for the whole wait (or at once when
    /// `wait` is zero); [`Error::InvalidInput`] for a bad resource name or TTL.
    ///
    /// ```no_run
    /// use fencepost_client::AcquireOptions;
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let grant = client.acquire("a.jsonl", AcquireOptions::default()).await?;
    /// println!("token {}", grant.lease.unwrap_or_default().token);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn acquire(
        &self,
        resource: impl Into<String>,
        options: AcquireOptions,
    ) -> Result<AcquireResponse, Error> {
        let (reply, _sent) = self.acquire_as(resource, options, None).await?;
        Ok(reply)
    }

    /// Acquires as this client's owner (with `kind` instead of its own, if given); returns the
    /// reply and when the successful attempt was sent.
    pub(crate) async fn acquire_as(
        &self,
        resource: impl Into<String>,
        options: AcquireOptions,
        kind: Option<OwnerKind>,
    ) -> Result<(AcquireResponse, Instant), Error> {
        let mut owner = self.owner.clone();
        if let Some(kind) = kind {
            owner.kind = kind.into();
        }
        let request = AcquireRequest {
            resource: resource.into(),
            owner: Some(owner),
            ttl_ms: options.ttl.map_or(0, ceil_millis),
            wait_ms: 0,
            idempotency_key: options
                .idempotency_key
                .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        };
        self.call(options.wait, |mut rpc, wait| {
            let mut request = request.clone();
            request.wait_ms = ceil_millis(wait);
            async move { rpc.acquire(request).await }
        })
        .await
    }

    /// Renews one lease to its full TTL.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] when the lease already ended or covers another resource.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let renewed = client.renew("a.jsonl", "lease-id").await?;
    /// println!("{} ms left", renewed.ttl_remaining_ms);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn renew(
        &self,
        resource: impl Into<String>,
        lease_id: impl Into<String>,
    ) -> Result<RenewResponse, Error> {
        let request = RenewRequest {
            resource: resource.into(),
            lease_id: lease_id.into(),
        };
        let (reply, _sent) = self
            .call(Duration::ZERO, |mut rpc, _| {
                let request = request.clone();
                async move { rpc.renew(request).await }
            })
            .await?;
        Ok(reply)
    }

    /// Releases a lease and wakes the next waiter. Releasing a lease that already ended is not an
    /// error: the outcome says what had happened to it.
    ///
    /// # Errors
    ///
    /// [`Error::LeaseLost`] (`WRONG_RESOURCE`, `LEASE_NOT_FOUND`) when the lease is not one of
    /// this resource's.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let reply = client.release("a.jsonl", "lease-id").await?;
    /// println!("{:?}", reply.outcome());
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// client.force_release("agents/main/sessions/4f1c2a.jsonl").await?;
    /// # Ok(())
    /// # }
    /// ```
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
        let (reply, _sent) = self
            .call(Duration::ZERO, |mut rpc, _| {
                let request = request.clone();
                async move { rpc.release(request).await }
            })
            .await?;
        Ok(reply)
    }

    /// Appends `entries` (one JSON object each, no newline) as one atomic batch under a live
    /// lease and its fencing token; answered once the batch is durable. With `expected_epoch`
    /// the batch is accepted only if the resource's write epoch is exactly that.
    ///
    /// Each call carries a fresh request id, reused by its own retries; use
    /// [`Client::append_request`] to choose it.
    ///
    /// # Errors
    ///
    /// [`Error::StaleToken`], [`Error::LeaseLost`], [`Error::HeadMismatch`] or
    /// [`Error::ExternalModification`] when the write is fenced off (nothing was appended);
    /// [`Error::InvalidInput`] for an entry that is not a single-line JSON object or too large.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let done = client.append("a.jsonl", "lease-id", 7, [r#"{"a":1}"#], None).await?;
    /// # Ok(())
    /// # }
    /// ```
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

    /// Sends a prepared append, retrying transient failures with the same request id. An empty
    /// `request_id` is replaced by a fresh UUID; the same request id under the same lease
    /// returns the original result and appends nothing, which makes retries safe.
    ///
    /// # Errors
    ///
    /// As [`Client::append`].
    ///
    /// ```no_run
    /// use fencepost_client::proto::v1::AppendRequest;
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let request = AppendRequest {
    ///     resource: "a.jsonl".to_owned(),
    ///     lease_id: "lease-id".to_owned(),
    ///     token: 7,
    ///     entries: vec![br#"{"a":1}"#.to_vec()],
    ///     request_id: "turn-12".to_owned(),
    ///     ..AppendRequest::default()
    /// };
    /// client.append_request(request).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn append_request(
        &self,
        mut request: AppendRequest,
    ) -> Result<AppendResponse, Error> {
        if request.request_id.is_empty() {
            request.request_id = uuid::Uuid::new_v4().to_string();
        }
        let (reply, _sent) = self
            .call(Duration::ZERO, |mut rpc, _| {
                let request = request.clone();
                async move { rpc.append(request).await }
            })
            .await?;
        Ok(reply)
    }
}
