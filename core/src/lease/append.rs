//! Fenced appends and reads.

use std::sync::Arc;

use tokio::time::Instant;

use super::state::Effects;
use super::types::{
    AcquireArgs, AppendArgs, AppendOnceArgs, Appended, EndReason, Event, EventKind,
};
use super::{Core, Inner};
use crate::detach::Detach;
use crate::entry::validate_batch;
use crate::error::CoreError;
use crate::model::{StoredEntry, now_unix_micros};
use crate::resource::ResourceName;
use crate::store::{BatchRequest, NewBatch, Recorded, ResourceLog};

/// Where a read starts.
#[derive(Debug, Clone, Copy)]
pub enum ReadFrom {
    /// At this seq (0 and 1 both mean the start).
    Seq(u64),
    /// At the first entry whose write epoch is at least this.
    Epoch(u64),
}

impl Core {
    /// Appends a batch under a live lease and its current token; durable before it returns.
    /// Runs to completion even if the caller's future is dropped (the rest moves to a task of its
    /// own on the current Tokio runtime), so a cancelled request never leaves a half-known outcome
    /// on the server. The future must be polled to completion or dropped: held but not polled, it
    /// can keep other appends to the resource waiting.
    ///
    /// # Errors
    /// Fencing rejections ([`CoreError::StaleToken`], [`CoreError::LeaseEnded`],
    /// [`CoreError::LeaseNotFound`], [`CoreError::WrongResource`], [`CoreError::HeadMismatch`]),
    /// invalid entries, external modification and storage failures.
    pub async fn append(&self, args: AppendArgs) -> Result<Appended, CoreError> {
        self.append_inner(args, None).await
    }

    /// [`Core::append`], remembering the result under `once_key` (an AppendOnce's client id and
    /// request id) in the same critical section that releases the lease.
    async fn append_inner(
        &self,
        args: AppendArgs,
        once_key: Option<(String, String)>,
    ) -> Result<Appended, CoreError> {
        validate_batch(&args.entries, &self.inner.limits)?;
        super::check_key("request_id", args.request_id.as_deref())?;
        let inner = self.inner.clone();
        let resource = args.resource.clone();
        // Only with a request id: the lease may be unknown because the server restarted since
        // the original call, whose batch is then found in the log.
        let retry = args
            .request_id
            .clone()
            .map(|request_id| (args.lease_id.clone(), request_id));
        Detach::new(async move {
            let result = append_fenced(inner.clone(), args, once_key).await;
            // The gate is open again: a lease that ended meanwhile may have left the entry idle.
            inner.lock().forget_if_idle(&resource);
            match (result, retry) {
                (Err(e @ CoreError::LeaseNotFound { .. }), Some((lease_id, request_id))) => {
                    let found = match inner.log(&resource).await {
                        Ok(log) => log.recorded(&request_id, Some(&lease_id), ""),
                        Err(_) => None,
                    };
                    found.map(appended).ok_or(e)
                }
                (result, _) => result,
            }
        })
        .await
    }

    /// Waits for the lease, appends one batch and releases: a co-tenant writer's whole write in
    /// one call. Returns the result and the token it was appended under. A retry with the same
    /// client id and request id returns the original result.
    ///
    /// # Errors
    /// As [`Core::acquire`] and [`Core::append`]; the lease is released whatever happens.
    pub async fn append_once(&self, args: AppendOnceArgs) -> Result<(Appended, u64), CoreError> {
        validate_batch(&args.entries, &self.inner.limits)?;
        super::check_key("request_id", args.request_id.as_deref())?;
        let key = args
            .request_id
            .as_ref()
            .map(|r| (args.owner.client_id.clone(), r.clone()));
        let claim = key
            .as_ref()
            .map(|k| OnceClaim::take(&self.inner, k, &args.resource))
            .transpose()?;
        if let Some(done) = self.once_done(key.as_ref(), &args.resource).await {
            return done;
        }
        // Not remembered: the original may have come before a restart, so its batch is looked
        // for in the log.
        if let Some(key) = &key {
            let log = self.inner.log(&args.resource).await?;
            if let Some(found) = log.recorded(&key.1, None, &key.0) {
                let done = appended(found);
                // Remembered again, so the key stays bound to this resource.
                self.inner
                    .lock()
                    .remember_once(key.clone(), (done, found.token, args.resource.clone()));
                return Ok((done, found.token));
            }
        }
        let grant = self
            .acquire(AcquireArgs {
                resource: args.resource.clone(),
                owner: args.owner,
                ttl: None,
                wait: args.wait,
                idempotency_key: None,
            })
            .await?;
        // A retry that queued behind the original finds its result here, after the original
        // released the lease. The lease is passed on before waiting for that result to be
        // durable, so nobody waits on it and a caller that goes away leaves nothing held.
        let remembered = key
            .as_ref()
            .and_then(|k| self.inner.lock().once.get(k).cloned());
        if let Some((done, token, _)) = remembered {
            let _ = self.release(&args.resource, &grant.lease.lease_id);
            return when_durable(&self.inner, &args.resource, done)
                .await
                .map(|done| (done, token));
        }
        let core = self.clone();
        // Spawned so the lease is released even if the caller goes away mid-append; the key stays
        // claimed until the append is done.
        tokio::spawn(async move {
            let _claim = claim;
            let lease_id = grant.lease.lease_id.to_string();
            let result = core
                .append_inner(
                    AppendArgs {
                        resource: args.resource.clone(),
                        lease_id: lease_id.clone(),
                        token: grant.lease.token,
                        entries: args.entries,
                        expected_epoch: args.expected_epoch,
                        request_id: None,
                        release: true,
                    },
                    key,
                )
                .await;
            match result {
                Ok(done) => Ok((done, grant.lease.token)),
                Err(e) => {
                    let _ = core.release(&args.resource, &lease_id);
                    Err(e)
                }
            }
        })
        .await
        .map_err(|e| CoreError::StorageFailed {
            resource: "*".into(),
            detail: format!("append task failed: {e}"),
        })?
    }

    /// The remembered result of an AppendOnce with this key, once durable. The caller holds the
    /// key's [`OnceClaim`] for `resource`, so a remembered result is this resource's.
    async fn once_done(
        &self,
        key: Option<&(String, String)>,
        resource: &ResourceName,
    ) -> Option<Result<(Appended, u64), CoreError>> {
        let (done, token, _) = self.inner.lock().once.get(key?).cloned()?;
        Some(
            when_durable(&self.inner, resource, done)
                .await
                .map(|done| (done, token)),
        )
    }

    /// Up to `limit` entries from `from`.
    ///
    /// # Errors
    /// Storage errors opening or reading the resource.
    pub async fn read(
        &self,
        resource: &ResourceName,
        from: ReadFrom,
        limit: usize,
    ) -> Result<Vec<StoredEntry>, CoreError> {
        let log = self.inner.log(resource).await?;
        // A read sees every batch appended before it, once durable.
        log.settled().await;
        let from_seq = match from {
            ReadFrom::Seq(seq) => seq.max(1),
            ReadFrom::Epoch(epoch) => log.first_seq_at_epoch(epoch),
        };
        log.read(from_seq, limit).await
    }
}

/// The result of a batch found in the log by its request.
fn appended(found: Recorded) -> Appended {
    Appended {
        first_seq: found.first_seq,
        last_seq: found.last_seq,
        head: found.head,
    }
}

/// An AppendOnce key claimed for one resource while a call with it runs.
struct OnceClaim {
    inner: Arc<Inner>,
    key: (String, String),
}

impl OnceClaim {
    /// Claims `key` for `resource`.
    ///
    /// # Errors
    /// The key appended, or is appending, to another resource.
    fn take(
        inner: &Arc<Inner>,
        key: &(String, String),
        resource: &ResourceName,
    ) -> Result<Self, CoreError> {
        let mut st = inner.lock();
        let remembered = st.once.get(key).map(|done| &done.2);
        let running = st.once_running.get(key).map(|(running, _)| running);
        if let Some(other) = remembered
            .into_iter()
            .chain(running)
            .find(|r| *r != resource)
        {
            return Err(key_reused(key, other, resource));
        }
        st.once_running
            .entry(key.clone())
            .or_insert_with(|| (resource.clone(), 0))
            .1 += 1;
        Ok(Self {
            inner: inner.clone(),
            key: key.clone(),
        })
    }
}

impl Drop for OnceClaim {
    fn drop(&mut self) {
        let mut st = self.inner.lock();
        if let Some((_, calls)) = st.once_running.get_mut(&self.key) {
            *calls -= 1;
            if *calls == 0 {
                st.once_running.remove(&self.key);
            }
        }
    }
}

/// An AppendOnce key that appended, or is appending, to `used` named with `requested`.
fn key_reused(
    (client_id, request_id): &(String, String),
    used: &ResourceName,
    requested: &ResourceName,
) -> CoreError {
    CoreError::InvalidArgument {
        field: "request_id",
        reason: format!(
            "client {client_id:?} already used request id {request_id:?} to append to {used}; \
             nothing was appended to {requested}: a retry must name the same resource, a new \
             write needs a new request id"
        ),
    }
}

async fn append_fenced(
    inner: Arc<Inner>,
    args: AppendArgs,
    once_key: Option<(String, String)>,
) -> Result<Appended, CoreError> {
    let gate = inner
        .lock()
        .resources
        .get(&args.resource)
        .map(|res| res.gate.clone());
    let Some(gate) = gate else {
        // No live lease can cover a resource without state; say precisely why.
        return match check_lease(&inner, &args) {
            Ok(Checked::Duplicate(done)) => when_durable(&inner, &args.resource, done).await,
            Ok(Checked::Fresh(..)) => Err(inner.lock().ended_error(&args.lease_id)),
            Err(e) => Err(e),
        };
    };
    let gate = gate.lock_owned().await;
    let (log, owner) = match check_lease(&inner, &args)? {
        Checked::Fresh(log, owner) => (log, owner),
        Checked::Duplicate(done) => {
            drop(gate);
            return when_durable(&inner, &args.resource, done).await;
        }
    };
    let head = log.head();
    if let Some(expected) = args.expected_epoch
        && expected != head.epoch
    {
        return Err(CoreError::HeadMismatch {
            resource: args.resource.as_str().to_owned(),
            expected,
            actual: head.epoch,
        });
    }
    let count = args.entries.len() as u64;
    let new_head = log
        .append(NewBatch {
            epoch: head.epoch + 1,
            token: args.token,
            owner: owner.clone(),
            time_unix_micros: now_unix_micros(),
            entries: args.entries,
            request: args
                .request_id
                .clone()
                .map(|request_id| BatchRequest {
                    request_id,
                    lease_id: Some(args.lease_id.clone()),
                })
                .or_else(|| {
                    once_key.as_ref().map(|(_, request_id)| BatchRequest {
                        request_id: request_id.clone(),
                        lease_id: None,
                    })
                }),
        })
        .await?;
    let done = Appended {
        first_seq: head.next_seq,
        last_seq: head.next_seq + count - 1,
        head: new_head,
    };
    let mut fx = Effects::default();
    {
        let mut st = inner.lock();
        if let Some(request_id) = args.request_id.clone() {
            st.remember_append(&args.lease_id, request_id, done);
        }
        if let Some(key) = once_key.clone() {
            st.remember_once(key, (done, args.token, args.resource.clone()));
        }
        if args.release {
            st.end_lease(&args.lease_id, EndReason::Released, &mut fx);
        }
    }
    // The batch is ordered: whatever the next append or holder does comes after it, and a read
    // waits for it. So the gate opens, and a release passes the lease on, while it is written.
    // (Until the next grant, no live lease covers the resource, so no other append can slip in.)
    drop(gate);
    inner.apply(fx);
    if let Err(e) = log.durable(new_head).await {
        // A retry must try again, not be told of a batch that is not there.
        inner.lock().forget_failed(
            &args.lease_id,
            args.request_id.as_deref(),
            once_key.as_ref(),
        );
        return Err(e);
    }
    inner.publish(Event {
        kind: EventKind::Appended,
        resource: args.resource,
        lease_id: Arc::from(args.lease_id.as_str()),
        token: args.token,
        owner,
        seqs: Some((done.first_seq, done.last_seq)),
        head: Some(new_head),
        time_unix_micros: now_unix_micros(),
    });
    Ok(done)
}

/// A remembered result, once its batch is durable: a retry can arrive while the original is
/// still being written, and must not be answered before the original could be.
async fn when_durable(
    inner: &Arc<Inner>,
    resource: &ResourceName,
    done: Appended,
) -> Result<Appended, CoreError> {
    inner.log(resource).await?.durable(done.head).await?;
    Ok(done)
}

enum Checked {
    Fresh(Arc<dyn ResourceLog>, Arc<crate::model::Owner>),
    Duplicate(Appended),
}

/// The fence: the lease is live, covers this resource, and the token is the current one.
fn check_lease(inner: &Arc<Inner>, args: &AppendArgs) -> Result<Checked, CoreError> {
    let mut fx = Effects::default();
    let result = (|| {
        let mut st = inner.lock();
        // A retry of an append that succeeded (even one that released its lease) gets the
        // original result.
        if let Some((done, leased)) = args
            .request_id
            .as_deref()
            .and_then(|r| st.remembered(&args.lease_id, r))
        {
            if *leased != args.resource {
                return Err(super::wrong_resource(
                    &args.lease_id,
                    leased,
                    &args.resource,
                ));
            }
            return Ok(Checked::Duplicate(done));
        }
        let rec = st.live_lease(&args.lease_id, Instant::now(), &mut fx)?;
        if rec.resource != args.resource {
            return Err(super::wrong_resource(
                &args.lease_id,
                &rec.resource,
                &args.resource,
            ));
        }
        let (lease_token, owner) = (rec.token, rec.owner.clone());
        let res = st
            .resources
            .get(&args.resource)
            .expect("a live lease keeps its resource");
        if args.token != lease_token || args.token != res.token {
            return Err(CoreError::StaleToken {
                resource: args.resource.as_str().to_owned(),
                presented: args.token,
                current: res.token,
            });
        }
        let log = res.log.clone().expect("a granted resource has its log");
        Ok(Checked::Fresh(log, owner))
    })();
    inner.apply(fx);
    result
}
