//! Leases: FIFO waiting, grants with fencing tokens, renewal, release and expiry.
//!
//! One `std::sync::Mutex` guards the lease table ([`state::State`]); it is never held across an
//! await. Side effects decided under the lock (events to publish, grants to run) are carried out
//! after it is released, see [`Inner::apply`].

mod append;
mod claims;
mod deadlines;
mod expiry;
mod grant;
mod metrics;
mod scan;
mod state;
mod table;
mod types;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, broadcast, oneshot};
use tokio::time::Instant;

pub use self::append::ReadFrom;
use self::claims::Claims;
use self::state::{Effects, Holder, State, Waiter};
pub use self::types::{
    AcquireArgs, AppendArgs, AppendOnceArgs, Appended, Description, EndReason, Event, EventKind,
    Grant, LeaseStatus, LeaseView, LossSender, ReleaseOutcome,
};
use crate::config::Limits;
use crate::detach::Detach;
use crate::error::CoreError;
use crate::model::{Head, MAX_CLIENT_ID_LEN, MAX_OWNER_NAME_LEN, Owner};
use crate::resource::ResourceName;
use crate::store::{ResourceLog, Store};

/// Events buffered per watcher before it is told it lagged.
const EVENT_BUFFER: usize = 16_384;

/// The lease-and-fence core. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Core {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    limits: Limits,
    state: Mutex<State>,
    /// Leases held and waited for, against the limits (own lock, taken after `state`).
    claims: Claims,
    expiry: Notify,
    events: broadcast::Sender<Event>,
    /// Counts what [`Inner::publish`] publishes.
    counters: metrics::Counters,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log of `resource`: the one its state holds, or the store's.
    async fn log(&self, resource: &ResourceName) -> Result<Arc<dyn ResourceLog>, CoreError> {
        let cached = self
            .lock()
            .resources
            .get(resource)
            .and_then(|r| r.log.clone());
        match cached {
            Some(log) => Ok(log),
            None => self.store.open(resource).await,
        }
    }

    /// Counts an event and publishes it to watchers (none watching is fine).
    fn publish(&self, event: Event) {
        self.counters.count(&event);
        let _ = self.events.send(event);
    }

    /// Carries out what a state change decided: publish events, start grants.
    fn apply(self: &Arc<Self>, fx: Effects) {
        for event in fx.events {
            self.publish(event);
        }
        for (resource, waiter) in fx.grants {
            tokio::spawn(self.clone().grant(resource, waiter));
        }
    }

    /// Grants `resource` to `waiter`, then lets the entry go if nothing else needs it.
    async fn grant(self: Arc<Self>, resource: ResourceName, waiter: Waiter) {
        grant::run(self.clone(), resource.clone(), waiter).await;
        self.lock().forget_if_idle(&resource);
    }
}

impl Core {
    /// Starts the core on `store`. Must be called inside a Tokio runtime (it spawns the expiry task).
    pub fn new(store: Arc<dyn Store>, limits: Limits) -> Self {
        let inner = Arc::new(Inner {
            store,
            claims: Claims::new(limits.max_leases, limits.max_leases_per_client),
            limits,
            state: Mutex::new(State::default()),
            expiry: Notify::new(),
            events: broadcast::channel(EVENT_BUFFER).0,
            counters: metrics::Counters::default(),
        });
        tokio::spawn(expiry::run(inner.clone()));
        tokio::spawn(scan::run(inner.clone()));
        Self { inner }
    }

    /// Why the store stopped accepting writes, once it has (see [`Store::failure`]).
    #[must_use]
    pub fn store_failure(&self) -> Option<String> {
        self.inner.store.failure()
    }

    /// Registers the core's metrics: counters of grants, lease ends, appends and outside changes
    /// found, and gauges of leases, waiters and the store's state, read on each scrape.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        metrics::register(&self.inner, registry);
    }

    /// The limits in force.
    #[must_use]
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Acquires an exclusive lease, waiting in FIFO order up to `args.wait`. Dropping the future
    /// leaves the queue at once.
    ///
    /// # Errors
    /// [`CoreError::WaitTimeout`] when the wait runs out; invalid TTL or owner; storage errors
    /// (token issuance, an unsafe path on disk).
    pub async fn acquire(&self, args: AcquireArgs) -> Result<Grant, CoreError> {
        let ttl = self.check_ttl(args.ttl)?;
        check_owner(&args.owner)?;
        if args.wait > self.inner.limits.max_wait {
            return Err(CoreError::InvalidArgument {
                field: "wait",
                reason: format!(
                    "{:?} exceeds the maximum wait {:?}",
                    args.wait, self.inner.limits.max_wait
                ),
            });
        }
        check_key("idempotency_key", args.idempotency_key.as_deref())?;
        let resource = args.resource.clone();
        let mut fx = Effects::default();
        let (id, rx) = {
            let mut st = self.inner.lock();
            if st.closed {
                return Err(CoreError::ShuttingDown);
            }
            if let Some(grant) = existing_grant(&mut st, &args)? {
                return Ok(grant);
            }
            let owner = Arc::new(args.owner);
            let taken_over = match &args.idempotency_key {
                Some(key) if !args.wait.is_zero() => {
                    st.take_over_waiter(&resource, &owner, key, ttl)
                }
                _ => None,
            };
            if let Some(taken_over) = taken_over {
                taken_over
            } else {
                let res = st.resources.entry(resource.clone()).or_default();
                if args.wait.is_zero()
                    && (!matches!(res.holder, Holder::Free) || !res.queue.is_empty())
                {
                    return Err(busy(&st, &resource, Duration::ZERO));
                }
                // A retry of the acquire being granted this resource gets that grant (in
                // `take_retries`): it counts against no limit a second time.
                let retry_of_grant = match (&res.holder, &args.idempotency_key) {
                    (
                        Holder::Granting {
                            key: Some((granted, k)),
                        },
                        Some(key),
                    ) => !args.wait.is_zero() && granted.client_id == owner.client_id && k == key,
                    _ => false,
                };
                let claim = if retry_of_grant {
                    None
                } else {
                    match self.inner.claims.take(&owner.client_id) {
                        Ok(claim) => Some(claim),
                        Err(e) => {
                            st.forget_if_idle(&resource);
                            return Err(e);
                        }
                    }
                };
                let (tx, rx) = oneshot::channel();
                st.next_waiter += 1;
                let id = st.next_waiter;
                let res = st.resources.get_mut(&resource).expect("just inserted");
                res.queue.push_back(Waiter {
                    id,
                    claim,
                    owner,
                    ttl,
                    idempotency_key: args.idempotency_key,
                    tx,
                });
                st.pump(&resource, &mut fx);
                (id, rx)
            }
        };
        // A resource that is free is granted to this call at once: in its own task, which saves a
        // task and a wake-up per uncontended acquire (the grant moves to a task of its own if the
        // caller goes away, and passes the lease on).
        let own = fx
            .grants
            .iter()
            .position(|(_, waiter)| waiter.id == id)
            .map(|i| fx.grants.remove(i));
        self.inner.apply(fx);
        if let Some((resource, waiter)) = own {
            Detach::new(self.inner.clone().grant(resource, waiter)).await;
        }
        let mut guard = QueueGuard {
            core: self,
            resource: &resource,
            id: Some(id),
            rx,
        };
        let received = match tokio::time::timeout(args.wait, &mut guard.rx).await {
            Ok(received) => received,
            Err(_) => {
                let removed = self.inner.lock().remove_waiter(&resource, id);
                if removed {
                    guard.id = None;
                    return Err(busy(&self.inner.lock(), &resource, args.wait));
                }
                // Already popped: a grant for us is under way; it is ours regardless of the wait.
                (&mut guard.rx).await
            }
        };
        guard.id = None;
        received.map_err(|_| CoreError::ShuttingDown)?
    }

    fn check_ttl(&self, ttl: Option<Duration>) -> Result<Duration, CoreError> {
        let limits = &self.inner.limits;
        let ttl = ttl.unwrap_or(limits.default_ttl);
        if ttl > limits.max_ttl || ttl < limits.min_ttl {
            return Err(CoreError::InvalidArgument {
                field: "ttl",
                reason: format!(
                    "{} ms is outside the allowed {}..={} ms",
                    ttl.as_millis(),
                    limits.min_ttl.as_millis(),
                    limits.max_ttl.as_millis()
                ),
            });
        }
        Ok(ttl)
    }

    /// Renews a lease to its full TTL. `resource`, when given, must be the lease's.
    ///
    /// # Errors
    /// [`CoreError::LeaseEnded`], [`CoreError::LeaseNotFound`], [`CoreError::WrongResource`].
    pub fn renew(
        &self,
        resource: Option<&ResourceName>,
        lease_id: &str,
    ) -> Result<Duration, CoreError> {
        let now = Instant::now();
        let mut fx = Effects::default();
        let result = {
            let mut st = self.inner.lock();
            match st.live_lease(lease_id, now, &mut fx) {
                Ok(rec) => {
                    if let Some(r) = resource.filter(|r| **r != rec.resource) {
                        Err(wrong_resource(lease_id, &rec.resource, r))
                    } else {
                        Ok(rec.extend(now))
                    }
                }
                Err(e) => Err(e),
            }
        };
        self.inner.apply(fx);
        result
    }

    /// The status of a lease, renewing it if live (for keepalive streams).
    #[must_use]
    pub fn keepalive(&self, lease_id: &str) -> LeaseStatus {
        self.keepalive_many(&[lease_id], None)[0]
    }

    /// [`Core::keepalive`] for many leases under one lock (one keepalive message carries them all).
    /// With `loss`, each live lease also reports its end there, once, to that sender (a keepalive
    /// stream hears of exactly its own leases, with no scan of other leases' events).
    #[must_use]
    pub fn keepalive_many<S: AsRef<str>>(
        &self,
        lease_ids: &[S],
        loss: Option<&LossSender>,
    ) -> Vec<LeaseStatus> {
        let now = Instant::now();
        let mut fx = Effects::default();
        let mut statuses = Vec::with_capacity(lease_ids.len());
        // The lock is taken per chunk, so one large request never holds up other clients' calls.
        for chunk in lease_ids.chunks(RENEWALS_PER_LOCK) {
            let mut st = self.inner.lock();
            statuses.extend(chunk.iter().map(|id| {
                match st.live_lease(id.as_ref(), now, &mut fx) {
                    Ok(rec) => {
                        if let Some(tx) = loss {
                            rec.watch_loss(tx);
                        }
                        LeaseStatus::Alive(rec.extend(now))
                    }
                    Err(CoreError::LeaseEnded { reason, .. }) => LeaseStatus::Ended(reason),
                    Err(_) => LeaseStatus::Unknown,
                }
            }));
        }
        self.inner.apply(fx);
        statuses
    }

    /// The status of a lease, without renewing it.
    #[must_use]
    pub fn lease_status(&self, lease_id: &str) -> LeaseStatus {
        let st = self.inner.lock();
        match st.leases.get(lease_id) {
            Some(rec) => LeaseStatus::Alive(rec.deadline.saturating_duration_since(Instant::now())),
            None => match st.ended.get(lease_id) {
                Some(ended) => LeaseStatus::Ended(ended.reason),
                None => LeaseStatus::Unknown,
            },
        }
    }

    /// Releases a lease and wakes the next waiter. Releasing an ended lease answers how it ended.
    ///
    /// # Errors
    /// [`CoreError::LeaseNotFound`] for an unknown lease; [`CoreError::WrongResource`].
    pub fn release(
        &self,
        resource: &ResourceName,
        lease_id: &str,
    ) -> Result<ReleaseOutcome, CoreError> {
        self.end(resource, lease_id, EndReason::Released)
    }

    /// Operator action: ends lease `lease_id` on `resource` if it is still live; its holder is told
    /// it was lost. Unlike [`Core::force_release`], a lease that holds the resource by now (the
    /// named one expired meanwhile) is left alone.
    ///
    /// # Errors
    /// As [`Core::release`].
    pub fn force_release_lease(
        &self,
        resource: &ResourceName,
        lease_id: &str,
    ) -> Result<ReleaseOutcome, CoreError> {
        self.end(resource, lease_id, EndReason::Forced)
    }

    fn end(
        &self,
        resource: &ResourceName,
        lease_id: &str,
        reason: EndReason,
    ) -> Result<ReleaseOutcome, CoreError> {
        let now = Instant::now();
        let mut fx = Effects::default();
        let result = {
            let mut st = self.inner.lock();
            match st.live_lease(lease_id, now, &mut fx) {
                Ok(rec) if rec.resource != *resource => {
                    Err(wrong_resource(lease_id, &rec.resource, resource))
                }
                Ok(rec) => {
                    let id = rec.id.clone();
                    st.end_lease(&id, reason, &mut fx);
                    Ok(ReleaseOutcome::Released(id))
                }
                Err(CoreError::LeaseEnded { reason, .. }) => {
                    Ok(ReleaseOutcome::AlreadyEnded(Arc::from(lease_id), reason))
                }
                Err(e) => Err(e),
            }
        };
        self.inner.apply(fx);
        result
    }

    /// Operator action: ends whatever lease holds `resource`; its holder is told it was lost.
    #[must_use]
    pub fn force_release(&self, resource: &ResourceName) -> ReleaseOutcome {
        let mut fx = Effects::default();
        let outcome = {
            let mut st = self.inner.lock();
            let held = st.resources.get(resource).and_then(|r| match &r.holder {
                Holder::Held(id) => Some(id.clone()),
                _ => None,
            });
            match held {
                Some(id) => {
                    st.end_lease(&id, EndReason::Forced, &mut fx);
                    ReleaseOutcome::Released(id)
                }
                None => ReleaseOutcome::NotHeld,
            }
        };
        self.inner.apply(fx);
        outcome
    }

    /// Operator action: accepts a session file changed behind the server's back as a new head with
    /// a new epoch (see [`crate::store::ResourceLog::adopt`]). The resource must be free; it stays
    /// closed to grants while adoption runs. Returns what was adopted and the new head.
    ///
    /// # Errors
    /// [`CoreError::ResourceBusy`] if held or waited for; errors from the store.
    pub async fn adopt(&self, resource: &ResourceName) -> Result<(String, Head), CoreError> {
        {
            let mut st = self.inner.lock();
            if st.closed {
                return Err(CoreError::ShuttingDown);
            }
            let res = st.resources.entry(resource.clone()).or_default();
            if !matches!(res.holder, Holder::Free) || !res.queue.is_empty() {
                let detail = format!("{} waiting", res.queue.len());
                return Err(CoreError::ResourceBusy {
                    resource: resource.as_str().to_owned(),
                    detail,
                });
            }
            // Grants queue behind the adoption, as behind a grant.
            res.holder = Holder::Granting { key: None };
        }
        let inner = self.inner.clone();
        let r = resource.clone();
        tokio::spawn(async move {
            let gate = inner.lock().resources.get(&r).map(|x| x.gate.clone());
            let gate = gate.expect("a resource being adopted keeps its entry");
            let _gate = gate.lock_owned().await;
            let result = async {
                let log = inner.log(&r).await?;
                let detail = log.adopt().await?;
                Ok::<_, CoreError>((detail, log))
            }
            .await;
            let mut fx = Effects::default();
            {
                let mut st = inner.lock();
                if let Some(res) = st.resources.get_mut(&r) {
                    res.holder = Holder::Free;
                    if let Ok((_, log)) = &result {
                        res.log = Some(log.clone());
                    }
                }
                st.pump(&r, &mut fx);
            }
            inner.apply(fx);
            drop(_gate);
            inner.lock().forget_if_idle(&r);
            result.map(|(detail, log)| {
                tracing::warn!(resource = %r, %detail, "operator adopted an externally modified session file");
                scan::publish(&inner, &r, EventKind::Adopted(Arc::from(detail.as_str())));
                (detail, log.head())
            })
        })
        .await
        .map_err(|e| CoreError::StorageFailed {
            resource: resource.as_str().to_owned(),
            detail: format!("adopt task failed: {e}"),
        })?
    }

    /// Holder, token, queue and head of a resource.
    ///
    /// # Errors
    /// Storage errors opening the resource (an unsafe path on disk, corrupt metadata).
    pub async fn describe(&self, resource: &ResourceName) -> Result<Description, CoreError> {
        let now = Instant::now();
        let (holder, token, waiters, log) = {
            let st = self.inner.lock();
            match st.resources.get(resource) {
                Some(res) => {
                    let holder = match &res.holder {
                        Holder::Held(id) => st.leases.get(id).map(|l| l.view(now)),
                        _ => None,
                    };
                    (holder, res.token, res.queue.len(), res.log.clone())
                }
                None => (None, 0, 0, None),
            }
        };
        let log = match log {
            Some(log) => log,
            None => self.inner.store.open(resource).await?,
        };
        Ok(Description {
            resource: resource.clone(),
            holder,
            token: token.max(log.last_token()),
            waiters,
            head: log.head(),
            exists: log.exists(),
            blocked: log.blocked().map(|e| format!("{}: {e}", e.reason())),
        })
    }

    /// Live leases on resources starting with `prefix`, ordered by resource.
    #[must_use]
    pub fn list(&self, prefix: &str) -> Vec<LeaseView> {
        let now = Instant::now();
        let st = self.inner.lock();
        let mut out: Vec<LeaseView> = st
            .leases
            .iter()
            .filter(|(_, l)| l.resource.has_prefix(prefix) && l.deadline > now)
            .map(|(_, l)| l.view(now))
            .collect();
        out.sort_by(|a, b| a.resource.cmp(&b.resource));
        out
    }

    /// Lease and append events from now on.
    #[must_use]
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }

    /// Stops granting: queued and new Acquires fail with [`CoreError::ShuttingDown`]. Appends
    /// under live leases still work while the server drains.
    pub fn stop(&self) {
        let mut st = self.inner.lock();
        st.closed = true;
        for res in st.resources.values_mut() {
            res.queue.clear();
        }
    }

    /// [`Core::stop`], then stops the expiry task and makes the store durable.
    pub async fn shutdown(&self) {
        self.stop();
        self.inner.expiry.notify_one();
        self.inner.store.close().await;
    }
}

/// A retried Acquire with the same idempotency key gets its live lease back.
///
/// # Errors
/// The key holds a live lease on another resource: a retry must name the same resource.
fn existing_grant(st: &mut State, args: &AcquireArgs) -> Result<Option<Grant>, CoreError> {
    let Some(key) = args.idempotency_key.as_ref() else {
        return Ok(None);
    };
    let Some(id) = st
        .idempotency
        .get(&(args.owner.client_id.clone(), key.clone()))
        .cloned()
    else {
        return Ok(None);
    };
    let now = Instant::now();
    let Some(rec) = st.leases.get(&id).filter(|l| l.deadline > now) else {
        return Ok(None);
    };
    if rec.resource != args.resource {
        return Err(CoreError::InvalidArgument {
            field: "idempotency_key",
            reason: format!(
                "client {:?} already holds lease {id} on {} under key {key:?}; a retry must name \
                 the same resource, a new acquire needs a new key",
                args.owner.client_id, rec.resource
            ),
        });
    }
    let view = rec.view(now);
    let head = st
        .resources
        .get(&args.resource)
        .and_then(|r| r.log.as_ref())
        .map_or(Head::EMPTY, |l| l.head());
    Ok(Some(Grant { lease: view, head }))
}

fn busy(st: &State, resource: &ResourceName, waited: Duration) -> CoreError {
    let (waiters, holder_token) = st.resources.get(resource).map_or((0, 0), |r| {
        let token = match &r.holder {
            Holder::Held(id) => st.leases.get(id).map_or(0, |l| l.token),
            _ => 0,
        };
        (r.queue.len(), token)
    });
    CoreError::WaitTimeout {
        resource: resource.as_str().to_owned(),
        waited_ms: u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
        waiters,
        holder_token,
    }
}

fn wrong_resource(
    lease_id: &str,
    lease_resource: &ResourceName,
    requested: &ResourceName,
) -> CoreError {
    CoreError::WrongResource {
        lease_id: lease_id.to_owned(),
        lease_resource: lease_resource.as_str().to_owned(),
        requested: requested.as_str().to_owned(),
    }
}

/// Leases renewed per hold of the state lock by [`Core::keepalive_many`].
const RENEWALS_PER_LOCK: usize = 256;

/// Longest idempotency key or request id, in bytes.
pub const MAX_KEY_LEN: usize = 128;

/// Client-chosen keys are remembered by the server, so their size is bounded.
pub(crate) fn check_key(field: &'static str, key: Option<&str>) -> Result<(), CoreError> {
    match key {
        Some(k) if k.len() > MAX_KEY_LEN => Err(CoreError::InvalidArgument {
            field,
            reason: format!("is {} bytes; the limit is {MAX_KEY_LEN}", k.len()),
        }),
        _ => Ok(()),
    }
}

fn check_owner(owner: &Owner) -> Result<(), CoreError> {
    let bad = |field, reason: String| Err(CoreError::InvalidArgument { field, reason });
    if owner.client_id.is_empty() {
        return bad(
            "owner.client_id",
            "is required (one id per client process instance)".into(),
        );
    }
    if owner.client_id.len() > MAX_CLIENT_ID_LEN {
        return bad(
            "owner.client_id",
            format!("is longer than {MAX_CLIENT_ID_LEN} bytes"),
        );
    }
    if owner.name.len() > MAX_OWNER_NAME_LEN {
        return bad(
            "owner.name",
            format!("is longer than {MAX_OWNER_NAME_LEN} bytes"),
        );
    }
    Ok(())
}

/// Leaves the queue when an Acquire future is dropped while waiting, and releases a grant that
/// arrived but was never taken (a grant still under way finds the receiver gone and releases).
impl Core {
    /// Releases a grant whose caller went away before taking it, unless the lease went to several
    /// calls of one keyed acquire: then another of them may hold it (and if none does, it expires).
    fn abandon(&self, grant: &Grant) {
        let shared = self
            .inner
            .lock()
            .leases
            .get(&grant.lease.lease_id)
            .is_some_and(|rec| rec.shared);
        if !shared {
            let _ = self.release(&grant.lease.resource, &grant.lease.lease_id);
        }
    }
}

struct QueueGuard<'a> {
    core: &'a Core,
    resource: &'a ResourceName,
    id: Option<u64>,
    rx: oneshot::Receiver<Result<Grant, CoreError>>,
}

impl Drop for QueueGuard<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.core.inner.lock().remove_waiter(self.resource, id);
            // Closed first, so a grant under way either landed already (and is released here) or
            // finds the receiver gone (and passes the lease on itself); none is left in between.
            self.rx.close();
            if let Ok(Ok(grant)) = self.rx.try_recv() {
                self.core.abandon(&grant);
            }
        }
    }
}

#[cfg(test)]
mod tests;
