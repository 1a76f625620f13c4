//! The lease table, per-resource queues and deadlines: synchronous state under one mutex.
//!
//! Nothing here awaits. Grants need the store (token issuance, opening a log), so a free resource
//! with waiters is handed to a spawned grant task; see [`super::grant`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex as AsyncMutex, oneshot};
use tokio::time::Instant;

use super::claims::Claim;
use super::deadlines::Deadlines;
use super::table::{LeaseKey, Leases};
use super::types::{Appended, EndReason, Event, EventKind, Grant, LeaseView, LossSender};
use crate::error::CoreError;
use crate::model::{Owner, now_unix_micros};
use crate::resource::ResourceName;
use crate::store::ResourceLog;

/// Tombstones kept so that late calls on ended leases get a precise answer.
pub(super) const TOMBSTONES: usize = 65_536;
/// Append results remembered per lease for request-id de-duplication.
const REMEMBERED_APPENDS: usize = 64;
/// Append results remembered on tombstones in all (about 150 bytes each); past it the oldest
/// tombstones go first. Without it a busy server whose leases each append many batches would keep
/// 64 results on each of [`TOMBSTONES`] tombstones, over half a gigabyte.
pub(super) const TOMBSTONE_APPENDS: usize = 131_072;

pub(super) enum Holder {
    Free,
    /// Being granted (or adopted); `key` is the owner and idempotency key of the acquire it is
    /// granted to, if keyed: a retry of that acquire waits for this grant and takes no claim.
    Granting {
        key: Option<(Arc<Owner>, String)>,
    },
    Held(Arc<str>),
}

pub(super) struct Waiter {
    pub id: u64,
    /// Counts the waiter, then its lease, against the lease limits. `None` for a retry queued
    /// while its original is being granted: it is answered with the original's lease (see
    /// [`State::take_retries`]) and never granted one of its own.
    pub claim: Option<Claim>,
    pub owner: Arc<Owner>,
    pub ttl: Duration,
    pub idempotency_key: Option<String>,
    pub tx: oneshot::Sender<Result<Grant, CoreError>>,
}

pub(super) struct Res {
    pub log: Option<Arc<dyn ResourceLog>>,
    /// Serializes appends and grants on this resource: a grant waits for in-flight appends, so
    /// no append is ever accepted under a token older than one already issued.
    pub gate: Arc<AsyncMutex<()>>,
    pub holder: Holder,
    pub queue: VecDeque<Waiter>,
    pub token: u64,
}

impl Default for Res {
    fn default() -> Self {
        Self {
            log: None,
            gate: Arc::new(AsyncMutex::new(())),
            holder: Holder::Free,
            queue: VecDeque::new(),
            token: 0,
        }
    }
}

pub(super) struct LeaseRec {
    /// The id's text, as clients see it (the table keys the lease by its value).
    pub id: Arc<str>,
    pub resource: ResourceName,
    pub token: u64,
    pub owner: Arc<Owner>,
    pub ttl: Duration,
    pub deadline: Instant,
    pub idempotency_key: Option<String>,
    pub appends: VecDeque<(String, Appended)>,
    /// Keepalive streams to tell when the lease ends.
    pub loss: Vec<LossSender>,
    /// Counts the lease against the lease limits until it ends (held for its drop).
    pub _claim: Option<Claim>,
    /// Granted to several calls of one keyed acquire (an original and its retries): a call that
    /// goes away before taking it does not release it, since another may hold it.
    pub shared: bool,
}

impl LeaseRec {
    /// Tells `tx` when the lease ends (once per stream, however often it renews).
    pub fn watch_loss(&mut self, tx: &LossSender) {
        if !self.loss.iter().any(|w| w.same_channel(tx)) {
            self.loss.retain(|w| !w.is_closed());
            self.loss.push(tx.clone());
        }
    }

    /// Renews the lease at `now` for its TTL, which it returns. The deadline only ever moves later
    /// (a renewal never shortens a lease), so its expiry entry stays valid (see [`Deadlines`]).
    pub fn extend(&mut self, now: Instant) -> Duration {
        self.deadline = self.deadline.max(now + self.ttl);
        self.ttl
    }

    pub fn view(&self, now: Instant) -> LeaseView {
        LeaseView {
            lease_id: self.id.clone(),
            resource: self.resource.clone(),
            token: self.token,
            ttl: self.ttl,
            remaining: self.deadline.saturating_duration_since(now),
            owner: self.owner.clone(),
        }
    }
}

/// Whether `waiter` is an acquire by `client_id` under idempotency key `key`.
fn same_key(waiter: &Waiter, client_id: &str, key: &str) -> bool {
    waiter.idempotency_key.as_deref() == Some(key) && waiter.owner.client_id == client_id
}

/// Adds an append result to a lease's remembered ones (bounded, oldest forgotten first); true if
/// they grew.
fn remember(
    appends: &mut VecDeque<(String, Appended)>,
    request_id: String,
    result: Appended,
) -> bool {
    let full = appends.len() == REMEMBERED_APPENDS;
    if full {
        appends.pop_front();
    }
    appends.push_back((request_id, result));
    !full
}

/// What is remembered of an ended lease.
pub(super) struct Ended {
    pub reason: EndReason,
    pub resource: ResourceName,
    /// Its append results, so a retry after a lost reply still gets the original answer.
    pub appends: VecDeque<(String, Appended)>,
}

#[derive(Default)]
pub(super) struct State {
    pub resources: HashMap<ResourceName, Res>,
    pub leases: Leases,
    pub ended: HashMap<Arc<str>, Ended>,
    ended_order: VecDeque<Arc<str>>,
    /// Append results remembered on tombstones, in all: at most [`TOMBSTONE_APPENDS`] once a
    /// lease has ended; results remembered on a tombstone later (a batch ordered as its lease
    /// ended) may pass it until the next lease ends.
    ended_appends: usize,
    pub deadlines: Deadlines,
    pub idempotency: HashMap<(String, String), Arc<str>>,
    /// AppendOnce results by (client id, request id), for retries after a lost reply: the
    /// result, the token and the resource it was appended to.
    pub once: HashMap<(String, String), OnceDone>,
    once_order: VecDeque<(String, String)>,
    /// AppendOnce keys of calls still running, with their resource and how many calls carry
    /// them: meanwhile the same key naming another resource is refused.
    pub once_running: HashMap<(String, String), (ResourceName, usize)>,
    pub next_waiter: u64,
    pub closed: bool,
}

/// A remembered AppendOnce: its result, the token it was appended under, and its resource.
pub(super) type OnceDone = (Appended, u64, ResourceName);

/// What the caller must do after a state change, outside the lock.
#[derive(Default)]
pub(super) struct Effects {
    pub events: Vec<Event>,
    pub grants: Vec<(ResourceName, Waiter)>,
}

impl State {
    /// The live lease `id`, ending it first if its deadline has passed.
    pub fn live_lease(
        &mut self,
        id: &str,
        now: Instant,
        fx: &mut Effects,
    ) -> Result<&mut LeaseRec, CoreError> {
        match self.leases.get(id).map(|rec| rec.deadline) {
            None => Err(self.ended_error(id)),
            Some(deadline) if deadline <= now => {
                self.end_lease(id, EndReason::Expired, fx);
                Err(self.ended_error(id))
            }
            Some(_) => Ok(self.leases.get_mut(id).expect("present")),
        }
    }

    pub fn ended_error(&self, id: &str) -> CoreError {
        match self.ended.get(id) {
            Some(ended) => CoreError::LeaseEnded {
                lease_id: id.to_owned(),
                resource: ended.resource.as_str().to_owned(),
                reason: ended.reason,
            },
            None => CoreError::LeaseNotFound {
                lease_id: id.to_owned(),
            },
        }
    }

    /// Ends a live lease, frees its resource and hands it to the next waiter.
    pub fn end_lease(&mut self, id: &str, reason: EndReason, fx: &mut Effects) {
        let Some(rec) = self.leases.remove(id) else {
            return;
        };
        let id = &rec.id;
        if let Some(key) = &rec.idempotency_key {
            let k = (rec.owner.client_id.clone(), key.clone());
            // The same key may have been reused for a newer lease: only drop our own mapping.
            if self.idempotency.get(&k) == Some(id) {
                self.idempotency.remove(&k);
            }
        }
        self.ended_appends += rec.appends.len();
        let earlier = self.ended.insert(
            id.clone(),
            Ended {
                reason,
                resource: rec.resource.clone(),
                appends: rec.appends,
            },
        );
        debug_assert!(earlier.is_none(), "a lease ends once");
        self.ended_order.push_back(id.clone());
        self.trim_tombstones();
        for tx in &rec.loss {
            let _ = tx.send(id.clone());
        }
        fx.events.push(Event {
            kind: EventKind::Ended(reason),
            resource: rec.resource.clone(),
            lease_id: id.clone(),
            token: rec.token,
            owner: rec.owner.clone(),
            seqs: None,
            head: None,
            time_unix_micros: now_unix_micros(),
        });
        if let Some(res) = self.resources.get_mut(&rec.resource) {
            res.holder = Holder::Free;
        }
        self.pump(&rec.resource, fx);
    }

    /// Forgets the oldest tombstones while there are more than [`TOMBSTONES`], or while they
    /// remember more than [`TOMBSTONE_APPENDS`] append results (the newest is always kept).
    fn trim_tombstones(&mut self) {
        while self.ended_order.len() > TOMBSTONES
            || (self.ended_appends > TOMBSTONE_APPENDS && self.ended_order.len() > 1)
        {
            let Some(old) = self.ended_order.pop_front() else {
                break;
            };
            if let Some(gone) = self.ended.remove(&old) {
                self.ended_appends -= gone.appends.len();
            }
        }
    }

    /// If `resource` is free, hands it to the first waiter still waiting (the grant itself runs
    /// outside the lock); if nobody waits, forgets the resource's in-memory state.
    pub fn pump(&mut self, resource: &ResourceName, fx: &mut Effects) {
        let Some(res) = self.resources.get_mut(resource) else {
            return;
        };
        if !matches!(res.holder, Holder::Free) {
            return;
        }
        while let Some(waiter) = res.queue.pop_front() {
            if waiter.tx.is_closed() {
                continue;
            }
            let key = waiter
                .idempotency_key
                .as_ref()
                .map(|k| (waiter.owner.clone(), k.clone()));
            res.holder = Holder::Granting { key };
            fx.grants.push((resource.clone(), waiter));
            return;
        }
        self.forget_if_idle(resource);
    }

    /// Forgets a resource's in-memory state if it is free, unwaited for and its gate is open. The
    /// entry stays while an append or grant holds the gate (so a new grant waits for it); whoever
    /// releases the gate calls this again.
    pub fn forget_if_idle(&mut self, resource: &ResourceName) {
        if let Some(res) = self.resources.get(resource)
            && matches!(res.holder, Holder::Free)
            && res.queue.is_empty()
            && res.gate.try_lock().is_ok()
        {
            self.resources.remove(resource);
        }
    }

    /// Removes a queued waiter; false if it is no longer queued (being granted, or gone).
    pub fn remove_waiter(&mut self, resource: &ResourceName, id: u64) -> bool {
        let Some(res) = self.resources.get_mut(resource) else {
            return false;
        };
        let before = res.queue.len();
        res.queue.retain(|w| w.id != id);
        res.queue.len() != before
    }

    /// A retried Acquire (same client id and idempotency key) whose original still waits in the
    /// queue of `resource` takes the original's place: the waiter answers the retry from now on,
    /// under a new id, and the original call is told it was superseded. Its caller may be gone
    /// without the server knowing yet (a connection that died silently is found by pings only),
    /// and the retry must not queue behind its own original. `None` if no such waiter waits.
    pub fn take_over_waiter(
        &mut self,
        resource: &ResourceName,
        owner: &Arc<Owner>,
        key: &str,
        ttl: Duration,
    ) -> Option<(u64, oneshot::Receiver<Result<Grant, CoreError>>)> {
        let id = self.next_waiter + 1;
        let waiter = self
            .resources
            .get_mut(resource)?
            .queue
            .iter_mut()
            .find(|w| same_key(w, &owner.client_id, key))?;
        self.next_waiter = id;
        let (tx, rx) = oneshot::channel();
        let original = std::mem::replace(&mut waiter.tx, tx);
        waiter.id = id;
        waiter.owner = owner.clone();
        waiter.ttl = ttl;
        let _ = original.send(Err(CoreError::Superseded {
            resource: resource.as_str().to_owned(),
            client_id: owner.client_id.clone(),
            key: key.to_owned(),
        }));
        Some((id, rx))
    }

    /// Takes out of the queue of `resource` the retries of an acquire by `client_id` under `key`
    /// (each queued while the original was being granted): they get the same lease.
    pub fn take_retries(
        &mut self,
        resource: &ResourceName,
        client_id: &str,
        key: &str,
    ) -> VecDeque<Waiter> {
        let Some(res) = self.resources.get_mut(resource) else {
            return VecDeque::new();
        };
        if !res.queue.iter().any(|w| same_key(w, client_id, key)) {
            return VecDeque::new();
        }
        let (retries, others) = std::mem::take(&mut res.queue)
            .into_iter()
            .partition(|w| same_key(w, client_id, key));
        res.queue = others;
        retries
    }

    /// Remembers an AppendOnce result (bounded, oldest forgotten first).
    ///
    /// A key is in the eviction order once: a key remembered again replaces its result in place,
    /// so evicting an older use of it can never take the newer one with it.
    pub fn remember_once(&mut self, key: (String, String), result: OnceDone) {
        if self.once.insert(key.clone(), result).is_some() {
            return;
        }
        if self.once_order.len() == TOMBSTONES
            && let Some(old) = self.once_order.pop_front()
        {
            self.once.remove(&old);
        }
        self.once_order.push_back(key);
    }

    /// Remembers the result of `request_id` under lease `id`, live or ended: a lease can end
    /// (expire, be force-released) while a batch checked under it is being ordered, and a retry
    /// after a lost reply must still get the original result, not append again.
    pub fn remember_append(&mut self, id: &str, request_id: String, result: Appended) {
        if let Some(rec) = self.leases.get_mut(id) {
            remember(&mut rec.appends, request_id, result);
        } else if let Some(ended) = self.ended.get_mut(id)
            && remember(&mut ended.appends, request_id, result)
        {
            // Not trimmed here: that could forget this very tombstone, and the result with it.
            self.ended_appends += 1;
        }
    }

    /// Forgets the results remembered for a batch that then failed.
    pub fn forget_failed(
        &mut self,
        id: &str,
        request_id: Option<&str>,
        once_key: Option<&(String, String)>,
    ) {
        if let Some(request_id) = request_id {
            if let Some(rec) = self.leases.get_mut(id) {
                rec.appends.retain(|(r, _)| r != request_id);
            } else if let Some(ended) = self.ended.get_mut(id) {
                let before = ended.appends.len();
                ended.appends.retain(|(r, _)| r != request_id);
                self.ended_appends -= before - ended.appends.len();
            }
        }
        if let Some(key) = once_key {
            self.once.remove(key);
            self.once_order.retain(|k| k != key);
        }
    }

    /// The remembered result of `request_id` under lease `id`, live or ended, with the lease's
    /// resource.
    pub fn remembered(&self, id: &str, request_id: &str) -> Option<(Appended, &ResourceName)> {
        let (appends, resource) = match self.leases.get(id) {
            Some(rec) => (&rec.appends, &rec.resource),
            None => {
                let ended = self.ended.get(id)?;
                (&ended.appends, &ended.resource)
            }
        };
        appends
            .iter()
            .find(|(r, _)| r == request_id)
            .map(|(_, done)| (*done, resource))
    }

    /// Schedules a new lease's expiry; true if it is the earliest (the expiry task must be told).
    pub fn schedule_expiry(&mut self, key: LeaseKey, deadline: Instant) -> bool {
        let earliest = self.deadlines.schedule(deadline, key);
        self.deadlines
            .compact(self.leases.iter().map(|(key, rec)| (rec.deadline, key)));
        earliest
    }
}
