//! The streaming calls (read, watch, keepalive) and their replies as a `Stream` of SDK results.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use fencepost as proto;
use proto::v1::{
    Entry, KeepAliveRequest, KeepAliveResponse, ReadRequest, WatchEvent, WatchRequest,
};
use tokio_stream::wrappers::IntervalStream;
use tokio_stream::{Stream, StreamExt};

use crate::{Client, Error, ReadOptions, WatchTarget};

impl Client {
    /// Streams the entries of `resource` from seq `from_seq` (0 or 1 = from the start), each with
    /// its metadata.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad resource name; later errors arrive in the stream.
    ///
    /// ```no_run
    /// use tokio_stream::StreamExt;
    ///
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let mut entries = client.read("a.jsonl", 1).await?;
    /// while let Some(entry) = entries.next().await {
    ///     let entry = entry?;
    ///     println!("seq {}: {}", entry.seq, String::from_utf8_lossy(&entry.data));
    /// }
    /// # Ok(())
    /// # }
    /// ```
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
    ///
    /// ```no_run
    /// use fencepost_client::ReadOptions;
    ///
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let last_ten = ReadOptions { from_seq: 91, limit: 10, ..ReadOptions::default() };
    /// let entries = client.read_with("a.jsonl", last_ten).await?.into_vec().await?;
    /// # Ok(())
    /// # }
    /// ```
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
        let (stream, _sent) = self
            .call(Duration::ZERO, |mut rpc, _| {
                let request = request.clone();
                async move { rpc.read(request).await }
            })
            .await?;
        Ok(ResponseStream::new(stream))
    }

    /// Streams lease and append events for one resource or a prefix until the stream is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a bad resource name or prefix; later errors arrive in the
    /// stream.
    ///
    /// ```no_run
    /// use fencepost_client::WatchTarget;
    /// use tokio_stream::StreamExt;
    ///
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let mut events = client.watch(WatchTarget::Resource("a.jsonl".to_owned())).await?;
    /// while let Some(event) = events.next().await {
    ///     let event = event?;
    ///     println!("{:?} on {}", event.kind(), event.resource);
    /// }
    /// # Ok(())
    /// # }
    /// ```
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
        let (stream, _sent) = self
            .call(Duration::ZERO, |mut rpc, _| {
                let request = request.clone();
                async move { rpc.watch(request).await }
            })
            .await?;
        Ok(ResponseStream::new(stream))
    }

    /// Opens a KeepAlive stream that sends `requests` as they come. The server answers each with
    /// the status of the leases it names, and pushes an `alive = false` status as soon as any
    /// lease named on the stream is lost. Ending `requests` ends the call.
    ///
    /// # Errors
    ///
    /// [`Error::Unavailable`] when the stream cannot be opened.
    ///
    /// ```no_run
    /// use fencepost_client::proto::v1::KeepAliveRequest;
    ///
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let once = tokio_stream::iter([KeepAliveRequest { lease_ids: vec!["lease-id".to_owned()] }]);
    /// let mut replies = client.keepalive(once).await?;
    /// let status = replies.message().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn keepalive(
        &self,
        requests: impl Stream<Item = KeepAliveRequest> + Send + 'static,
    ) -> Result<ResponseStream<KeepAliveResponse>, Error> {
        let mut rpc = self.rpc.clone();
        let stream = match self.request_timeout {
            None => rpc.keep_alive(requests).await,
            Some(after) => tokio::time::timeout(after, rpc.keep_alive(requests))
                .await
                .map_err(|_elapsed| Error::RequestTimeout { after })?,
        };
        Ok(ResponseStream::new(
            stream.map_err(Error::from)?.into_inner(),
        ))
    }

    /// Keeps `lease_ids` alive: renews them all at once, then every `interval`, and yields every
    /// reply (including pushed loss notifications) until the returned stream is dropped.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidInput`] for a zero interval; [`Error::Unavailable`] when the stream cannot
    /// be opened.
    ///
    /// ```no_run
    /// use std::time::Duration;
    ///
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let mut replies = client
    ///     .keepalive_stream(vec!["lease-id".to_owned()], Duration::from_secs(3))
    ///     .await?;
    /// while let Some(reply) = replies.message().await? {
    ///     if reply.leases.iter().any(|status| !status.alive) {
    ///         break;
    ///     }
    /// }
    /// # Ok(())
    /// # }
    /// ```
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
}

/// A stream of messages from the server; each item is a message or the [`Error`] that ended the
/// stream. Dropping it cancels the call.
///
/// ```no_run
/// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
/// let entries: fencepost_client::ResponseStream<_> = client.read("a.jsonl", 1).await?;
/// let all = entries.into_vec().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ResponseStream<T> {
    inner: tonic::Streaming<T>,
}

impl<T> ResponseStream<T> {
    pub(crate) fn new(inner: tonic::Streaming<T>) -> Self {
        Self { inner }
    }

    /// The next message, or `None` once the server has ended the stream cleanly.
    ///
    /// # Errors
    ///
    /// The status the server ended the stream with, or [`Error::Unavailable`] when the connection
    /// broke.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let mut entries = client.read("a.jsonl", 1).await?;
    /// while let Some(entry) = entries.message().await? {
    ///     println!("seq {}", entry.seq);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn message(&mut self) -> Result<Option<T>, Error> {
        self.inner.message().await.map_err(Error::from)
    }

    /// Every remaining message, in order.
    ///
    /// # Errors
    ///
    /// The first error the stream produced; the messages before it are discarded.
    ///
    /// ```no_run
    /// # async fn demo(client: fencepost_client::Client) -> Result<(), fencepost_client::Error> {
    /// let entries = client.read("a.jsonl", 1).await?.into_vec().await?;
    /// println!("{} entries", entries.len());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn into_vec(mut self) -> Result<Vec<T>, Error> {
        let mut all = Vec::new();
        while let Some(item) = self.next().await {
            all.push(item?);
        }
        Ok(all)
    }
}

impl<T> Stream for ResponseStream<T> {
    type Item = Result<T, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.inner)
            .poll_next(cx)
            .map(|item| item.map(|result| result.map_err(Error::from)))
    }
}
