//! One-shot appends for co-tenant writers (heartbeat, cron, channel ingress): wait in the lease
//! queue, append one atomic batch and release, in one AppendOnce round trip.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::time::Duration;

use fencepost as proto;
use proto::v1::{AppendOnceRequest, AppendOnceResponse, OwnerKind};

use crate::entry::batch;
use crate::options::ceil_millis;
use crate::{Client, Error, IntoEntry};

impl Client {
    /// Prepares a one-shot append of `lines` to `resource`: the server waits for the lease in
    /// the FIFO queue (up to [`AppendOnce::wait`]), appends the batch atomically under a fresh
    /// token, and releases, in one call. The writer never holds a lease across slow work, and
    /// a runner that yielded the resource sees the entries in its [`crate::Changes`].
    ///
    /// Await the returned [`AppendOnce`] (or call [`AppendOnce::send`]). Its request id is made
    /// once, so a retry after a lost reply returns the original result and appends nothing.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use fencepost_client::{Client, OwnerKind};
    /// use serde_json::json;
    ///
    /// # async fn demo() -> Result<(), fencepost_client::Error> {
    /// let client = Client::builder("unix:/run/fencepost.sock")
    ///     .kind(OwnerKind::Heartbeat)
    ///     .connect()
    ///     .await?;
    /// let done = client
    ///     .append_once("agents/main/sessions/4f1c2a.jsonl", [json!({"type": "heartbeat"})])
    ///     .wait(Duration::from_secs(5))
    ///     .await?;
    /// println!("seq {} under token {}", done.first_seq, done.token);
    /// # Ok(())
    /// # }
    /// ```
    pub fn append_once<E: IntoEntry>(
        &self,
        resource: impl Into<String>,
        lines: impl IntoIterator<Item = E>,
    ) -> AppendOnce<'_> {
        AppendOnce {
            client: self,
            request: AppendOnceRequest {
                resource: resource.into(),
                owner: Some(self.owner().clone()),
                wait_ms: 0,
                entries: batch(lines),
                expected_epoch: None,
                request_id: String::new(),
            },
            wait: Duration::ZERO,
        }
    }
}

/// A prepared one-shot append; see [`Client::append_once`]. Await it to send it.
///
/// ```no_run
/// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
/// let done = client.append_once("a.jsonl", [r#"{"tick":1}"#]).send().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "an append-once does nothing until awaited"]
pub struct AppendOnce<'a> {
    client: &'a Client,
    request: AppendOnceRequest,
    wait: Duration,
}

impl AppendOnce<'_> {
    /// How long to wait in the queue while the resource is held (default zero: try once).
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// client.append_once("a.jsonl", ["{}"]).wait(std::time::Duration::from_secs(2)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Compare-and-append: accepted only if the write epoch is exactly `epoch`.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// client.append_once("a.jsonl", ["{}"]).expected_epoch(7).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn expected_epoch(mut self, epoch: u64) -> Self {
        self.request.expected_epoch = Some(epoch);
        self
    }

    /// The owner kind recorded with the entries (default: the client's).
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// use fencepost_client::OwnerKind;
    /// client.append_once("a.jsonl", ["{}"]).kind(OwnerKind::Cron).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn kind(mut self, kind: OwnerKind) -> Self {
        if let Some(owner) = &mut self.request.owner {
            owner.kind = kind.into();
        }
        self
    }

    /// Uses this request id instead of a fresh one: to make a retry across process restarts
    /// (same client id) return the original result.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// client.append_once("a.jsonl", ["{}"]).request_id("cron-2024-05-01T10:00").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn request_id(mut self, request_id: impl Into<String>) -> Self {
        self.request.request_id = request_id.into();
        self
    }

    /// Sends the append, retrying transient failures with the same request id.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when the resource stayed held for the whole wait;
    /// [`Error::HeadMismatch`] for a failed compare-and-append; [`Error::InvalidInput`] for a bad
    /// entry or resource; [`Error::ExternalModification`] when the file was changed behind the
    /// server's back.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let done = client.append_once("a.jsonl", ["{}"]).send().await?;
    /// println!("epoch {}", done.head.map_or(0, |head| head.epoch));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(self) -> Result<AppendOnceResponse, Error> {
        let mut request = self.request;
        if request.request_id.is_empty() {
            request.request_id = uuid::Uuid::new_v4().to_string();
        }
        let (reply, _sent) = self
            .client
            .call(self.wait, |mut rpc, wait| {
                let mut request = request.clone();
                request.wait_ms = ceil_millis(wait);
                async move { rpc.append_once(request).await }
            })
            .await?;
        Ok(reply)
    }
}

impl<'a> IntoFuture for AppendOnce<'a> {
    type Output = Result<AppendOnceResponse, Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'a>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}
