//! Server-streaming replies (read, watch, keepalive) as a `Stream` of SDK results.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio_stream::{Stream, StreamExt};

use crate::Error;

/// A stream of messages from the server; each item is a message or the [`Error`] that ended the
/// stream. Dropping it cancels the call.
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
    pub async fn message(&mut self) -> Result<Option<T>, Error> {
        self.inner.message().await.map_err(Error::from)
    }

    /// Every remaining message, in order.
    ///
    /// # Errors
    ///
    /// The first error the stream produced; the messages before it are discarded.
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
