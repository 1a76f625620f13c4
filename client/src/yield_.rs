//! The yield pattern: release a lease during slow work, acquire it again in FIFO order, and learn
//! exactly what others appended meanwhile.

use std::future::Future;
use std::time::Duration;

use fencepost as proto;
use proto::v1::Head;
use tokio_stream::StreamExt;

use crate::lease_builder::{LeaseOptions, grant};
use crate::{Change, Changes, Client, Error, Lease, ReadOptions};

impl Lease {
    /// Yields the lease while `work` runs: releases it (remembering the head), awaits `work`,
    /// acquires the resource again with the same options (TTL, wait, kind; in the queue's FIFO
    /// order), and returns `work`'s output, the [`Changes`] others appended meanwhile, and the new
    /// lease (a new lease id and a higher token).
    ///
    /// The lease is consumed: if acquiring again fails, the error is returned and `work`'s output
    /// is dropped. To keep the output whatever happens, use [`Lease::suspend`] and
    /// [`Suspended::resume`], which this method is made of.
    ///
    /// # Errors
    ///
    /// As [`Lease::release`] before `work` runs (then `work` does not run); as
    /// [`crate::LeaseBuilder::acquire`] and [`Client::read`] after.
    ///
    /// ```no_run
    /// # async fn slow_model_call() -> String { String::new() }
    /// # async fn demo(lease: fencepost_client::Lease) -> Result<(), fencepost_client::Error> {
    /// let (reply, changes, lease) = lease.yield_for(slow_model_call()).await?;
    /// if !changes.is_empty() {
    ///     println!("{} entries appended meanwhile", changes.len());
    /// }
    /// lease.append([reply.as_str()]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn yield_for<F: Future>(self, work: F) -> Result<(F::Output, Changes, Lease), Error> {
        let suspended = self.suspend().await?;
        let output = work.await;
        let (changes, lease) = suspended.resume().await?;
        Ok((output, changes, lease))
    }

    /// Releases the lease for a while, remembering its head and options; [`Suspended::resume`]
    /// acquires it again.
    ///
    /// # Errors
    ///
    /// As [`Lease::release`].
    ///
    /// ```no_run
    /// # async fn demo(lease: fencepost_client::Lease) -> Result<(), fencepost_client::Error> {
    /// let suspended = lease.suspend().await?;
    /// // ... slow work, whose result is kept even if resuming fails ...
    /// let (changes, lease) = suspended.resume().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn suspend(mut self) -> Result<Suspended, Error> {
        let head = self.head();
        let (client, resource, options) = self.parts();
        self.release_now().await?;
        Ok(Suspended {
            client,
            resource,
            options,
            head,
        })
    }
}

/// A lease released by [`Lease::suspend`]: what is needed to acquire it again and to tell what
/// changed meanwhile.
///
/// ```no_run
/// # async fn demo(lease: fencepost_client::Lease) -> Result<(), fencepost_client::Error> {
/// let suspended = lease.suspend().await?;
/// println!("yielded {} at epoch {}", suspended.resource(), suspended.head().epoch);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use = "a suspended lease is released; resume it to write again"]
pub struct Suspended {
    client: Client,
    resource: String,
    options: LeaseOptions,
    head: Head,
}

impl Suspended {
    /// The resource that was yielded.
    ///
    /// ```no_run
    /// # fn demo(suspended: &fencepost_client::Suspended) {
    /// println!("{}", suspended.resource());
    /// # }
    /// ```
    #[must_use]
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The head when the lease was released; the changes start at its `next_seq`.
    ///
    /// ```no_run
    /// # fn demo(suspended: &fencepost_client::Suspended) {
    /// println!("released at seq {}", suspended.head().next_seq);
    /// # }
    /// ```
    #[must_use]
    pub fn head(&self) -> &Head {
        &self.head
    }

    /// Waits up to `wait` in the queue when resuming, instead of the original lease's wait.
    ///
    /// ```no_run
    /// # async fn demo(suspended: fencepost_client::Suspended) -> Result<(), fencepost_client::Error> {
    /// let (changes, lease) = suspended.wait(std::time::Duration::from_secs(60)).resume().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.options.wait = wait;
        self
    }

    /// Acquires the resource again (same TTL, wait and kind) and reads what others appended
    /// since the remembered head, up to the new grant's head.
    ///
    /// # Errors
    ///
    /// As [`crate::LeaseBuilder::acquire`] ([`Error::Timeout`] when others kept the resource for
    /// the whole wait); as [`Client::read`] for the changes (the new lease is then released);
    /// [`Error::ChangesIncomplete`] if the read came back short.
    ///
    /// ```no_run
    /// # async fn demo(suspended: fencepost_client::Suspended) -> Result<(), fencepost_client::Error> {
    /// let (changes, lease) = suspended.resume().await?;
    /// for writer in changes.writers() {
    ///     println!("{} wrote while we were away", writer.name);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn resume(self) -> Result<(Changes, Lease), Error> {
        let lease = grant(self.client.clone(), self.resource, self.options).await?;
        let until = lease.head();
        let changes = read_between(&self.client, lease.resource(), self.head, until).await?;
        Ok((changes, lease))
    }
}

/// The entries from `since.next_seq` up to (not including) `until.next_seq`.
async fn read_between(
    client: &Client,
    resource: &str,
    since: Head,
    until: Head,
) -> Result<Changes, Error> {
    let expected = until.next_seq.saturating_sub(since.next_seq);
    let mut entries = Vec::new();
    if expected > 0 {
        let options = ReadOptions {
            from_seq: since.next_seq,
            from_epoch: None,
            limit: expected,
        };
        let mut stream = client.read_with(resource, options).await?;
        while let Some(entry) = stream.next().await {
            entries.push(Change::from(entry?));
        }
    }
    let received = entries.len() as u64;
    if received != expected {
        return Err(Error::ChangesIncomplete { expected, received });
    }
    Ok(Changes::new(since, until, entries))
}
