//! Futures that finish even when their caller stops waiting for them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs a future in the caller's task; if the caller drops it before it completes, the rest runs
/// on a task of its own. For work that must not stop halfway (an append that is ordered but not
/// yet durable, whose retry state and event come after; a grant, which must install the lease or
/// pass it on), without spawning a task, and waking two, on every call: W1 with 16 clients ran
/// about 3% faster than with a task per append, and about 3% faster again with uncontended
/// grants run this way.
pub(crate) struct Detach<F>(Option<Pin<Box<F>>>)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static;

impl<F> Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    pub(crate) fn new(future: F) -> Self {
        Self(Some(Box::pin(future)))
    }
}

impl<F> Future for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let future = self.0.as_mut().expect("polled after it completed");
        let output = std::task::ready!(future.as_mut().poll(cx));
        self.0 = None;
        Poll::Ready(output)
    }
}

impl<F> Drop for Detach<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        // Outside a runtime (it is shutting down) there is nothing left to run the rest on.
        if let Some(rest) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_rest_runs_after_the_caller_drops_it_and_nothing_runs_twice() {
        let (reached, mut done) = tokio::sync::mpsc::unbounded_channel();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let mut call = Box::pin(Detach::new(async move {
            reached.send("started").unwrap();
            let _ = wait.await;
            reached.send("finished").unwrap();
        }));
        let first = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        drop(call);
        release.send(()).unwrap();
        assert_eq!(done.recv().await, Some("started"));
        assert_eq!(done.recv().await, Some("finished"));
        assert_eq!(done.recv().await, None, "ran once, and ended");
    }
}
