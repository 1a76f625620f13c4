//! Lease logic under controlled time, over an in-memory storage double (the embedded store has
//! its own tests against real files).

use std::collections::HashMap;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::model::{OwnerKind, StoredEntry, chain};
use crate::store::{NewBatch, ResourceLog};

#[derive(Default)]
struct MemStore {
    logs: Mutex<HashMap<ResourceName, Arc<MemLog>>>,
    tokens: AtomicU64,
    /// A test holding this for writing keeps logs from opening (grants wait).
    opening: tokio::sync::RwLock<()>,
    /// Set, the next log open fails (that grant fails; the next one would succeed).
    broken: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct MemLog {
    entries: StdMutex<Vec<StoredEntry>>,
    head: StdMutex<Option<Head>>,
    /// A test holding this for writing keeps appends from becoming durable.
    durability: tokio::sync::RwLock<()>,
    /// A test holding this for writing keeps appends from being ordered.
    ordering: tokio::sync::RwLock<()>,
}

#[async_trait]
impl Store for MemStore {
    async fn open(&self, name: &ResourceName) -> Result<Arc<dyn ResourceLog>, CoreError> {
        let _open = self.opening.read().await;
        if self.broken.swap(false, Ordering::SeqCst) {
            return Err(CoreError::StorageFailed {
                resource: name.as_str().to_owned(),
                detail: "the test broke the store".into(),
            });
        }
        Ok(self
            .logs
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default()
            .clone())
    }
    async fn issue_token(&self, _: &ResourceName, floor: u64) -> Result<u64, CoreError> {
        Ok((self.tokens.fetch_add(1, Ordering::SeqCst) + 1).max(floor + 1))
    }
    async fn resources(&self) -> Result<Vec<ResourceName>, CoreError> {
        Ok(self.logs.lock().unwrap().keys().cloned().collect())
    }
    async fn close(&self) {}
}

#[async_trait]
impl ResourceLog for MemLog {
    fn head(&self) -> Head {
        self.head.lock().unwrap().unwrap_or(Head::EMPTY)
    }
    fn exists(&self) -> bool {
        self.head.lock().unwrap().is_some()
    }
    fn last_token(&self) -> u64 {
        self.entries.lock().unwrap().last().map_or(0, |e| e.token)
    }
    fn blocked(&self) -> Option<CoreError> {
        None
    }
    async fn append(&self, batch: NewBatch) -> Result<Head, CoreError> {
        let _order = self.ordering.read().await;
        let mut head = self.head();
        let mut entries = self.entries.lock().unwrap();
        for line in batch.entries {
            head.chain_hash = chain(&head.chain_hash, &line);
            head.length += line.len() as u64 + 1;
            entries.push(StoredEntry {
                seq: head.next_seq,
                epoch: batch.epoch,
                token: batch.token,
                owner: batch.owner.clone(),
                time_unix_micros: batch.time_unix_micros,
                chain_hash: head.chain_hash,
                data: line,
            });
            head.next_seq += 1;
        }
        head.epoch = batch.epoch;
        *self.head.lock().unwrap() = Some(head);
        Ok(head)
    }
    async fn durable(&self, _head: Head) -> Result<(), CoreError> {
        let _durable = self.durability.read().await;
        Ok(())
    }
    async fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEntry>, CoreError> {
        let entries = self.entries.lock().unwrap();
        Ok(entries
            .iter()
            .filter(|e| e.seq >= from_seq)
            .take(limit)
            .cloned()
            .collect())
    }
    async fn adopt(&self) -> Result<String, CoreError> {
        Ok("memory logs never change behind the server's back".into())
    }
    fn first_seq_at_epoch(&self, epoch: u64) -> u64 {
        let entries = self.entries.lock().unwrap();
        entries
            .iter()
            .find(|e| e.epoch >= epoch)
            .map_or(self.head().next_seq, |e| e.seq)
    }
}

fn core() -> Core {
    Core::new(Arc::new(MemStore::default()), Limits::default())
}

fn name() -> ResourceName {
    ResourceName::parse("agents/main/sessions/s1.jsonl").unwrap()
}

fn args(who: &str, wait: Duration) -> AcquireArgs {
    AcquireArgs {
        resource: name(),
        owner: Owner {
            client_id: who.into(),
            name: who.into(),
            kind: OwnerKind::Runner,
        },
        ttl: Some(Duration::from_secs(1)),
        wait,
        idempotency_key: None,
    }
}

fn append(grant: &Grant, line: &str) -> AppendArgs {
    AppendArgs {
        resource: grant.lease.resource.clone(),
        lease_id: grant.lease.lease_id.to_string(),
        token: grant.lease.token,
        entries: vec![line.as_bytes().to_vec()],
        expected_epoch: None,
        request_id: None,
        release: false,
    }
}

const LONG: Duration = Duration::from_secs(60);

#[tokio::test(start_paused = true)]
async fn waiters_are_granted_in_fifo_order_with_increasing_tokens() {
    let core = core();
    let first = core.acquire(args("a", LONG)).await.unwrap();
    let mut waiting = Vec::new();
    for who in ["b", "c", "d"] {
        let c = core.clone();
        waiting.push(tokio::spawn(async move {
            c.acquire(args(who, LONG)).await.unwrap()
        }));
        tokio::task::yield_now().await;
    }
    assert_eq!(core.describe(&name()).await.unwrap().waiters, 3);
    let mut last = first.clone();
    core.release(&name(), &first.lease.lease_id).unwrap();
    for (task, who) in waiting.into_iter().zip(["b", "c", "d"]) {
        let g = task.await.unwrap();
        assert_eq!(g.lease.owner.client_id, who);
        assert!(g.lease.token > last.lease.token);
        core.release(&name(), &g.lease.lease_id).unwrap();
        last = g;
    }
}

#[tokio::test(start_paused = true)]
async fn an_unrenewed_lease_expires_and_the_waiter_gets_a_higher_token() {
    let core = core();
    let first = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    let started = tokio::time::Instant::now();
    let second = core.acquire(args("b", LONG)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(second.lease.token > first.lease.token);
    let err = core.append(append(&first, "{}")).await.unwrap_err();
    assert_eq!(err.reason(), "LEASE_EXPIRED");
    assert_eq!(
        core.lease_status(&first.lease.lease_id),
        LeaseStatus::Ended(EndReason::Expired)
    );
}

#[tokio::test(start_paused = true)]
async fn renewals_keep_a_lease_past_many_ttls() {
    let core = core();
    let g = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    for _ in 0..10 {
        tokio::time::advance(Duration::from_millis(600)).await;
        assert!(matches!(
            core.keepalive(&g.lease.lease_id),
            LeaseStatus::Alive(_)
        ));
    }
    core.append(append(&g, "{\"still\":true}")).await.unwrap();
    tokio::time::advance(Duration::from_millis(1001)).await;
    assert_eq!(
        core.renew(None, &g.lease.lease_id).unwrap_err().reason(),
        "LEASE_EXPIRED"
    );
}

/// More renewed leases than the expiry task puts right per lock hold: the one left unrenewed
/// expires at its renewed deadline, not at its first one, and the others live on.
#[tokio::test(start_paused = true)]
async fn among_many_renewed_leases_the_unrenewed_one_expires_at_its_renewed_deadline() {
    let core = core();
    let start = tokio::time::Instant::now();
    let on = |i: usize| {
        let mut a = args(&format!("c{i}"), Duration::ZERO);
        a.resource = ResourceName::parse(&format!("many/s{i}.jsonl")).unwrap();
        a
    };
    let mut ids = Vec::new();
    for i in 0..600 {
        ids.push(core.acquire(on(i)).await.unwrap().lease.lease_id);
    }
    let all_alive =
        |statuses: Vec<LeaseStatus>| statuses.iter().all(|s| matches!(s, LeaseStatus::Alive(_)));
    tokio::time::advance(Duration::from_millis(600)).await;
    assert!(all_alive(core.keepalive_many(&ids, None)));
    tokio::time::advance(Duration::from_millis(600)).await;
    // Past every first deadline: all renewed once, all but lease 0 renewed again.
    assert!(all_alive(core.keepalive_many(&ids[1..], None)));
    let mut waiter = on(0);
    waiter.wait = LONG;
    core.acquire(waiter).await.unwrap();
    let granted_at = start.elapsed();
    assert!(
        granted_at >= Duration::from_millis(1600) && granted_at < Duration::from_millis(1700),
        "granted at {granted_at:?}, lease 0's renewed deadline was 1.6 s"
    );
    assert_eq!(
        core.lease_status(&ids[0]),
        LeaseStatus::Ended(EndReason::Expired)
    );
    for id in &ids[1..] {
        assert!(
            matches!(core.lease_status(id), LeaseStatus::Alive(_)),
            "{id}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn stale_tokens_are_rejected_after_release_and_after_a_newer_grant() {
    let core = core();
    let old = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    core.append(append(&old, "{\"n\":1}")).await.unwrap();
    core.release(&name(), &old.lease.lease_id).unwrap();
    assert_eq!(
        core.append(append(&old, "{}")).await.unwrap_err().reason(),
        "LEASE_RELEASED"
    );
    let new = core.acquire(args("b", Duration::ZERO)).await.unwrap();
    let mut forged = append(&new, "{}");
    forged.token = old.lease.token;
    assert!(matches!(
        core.append(forged).await.unwrap_err(),
        CoreError::StaleToken { presented, current, .. } if presented == old.lease.token && current == new.lease.token
    ));
    assert_eq!(
        core.read(&name(), ReadFrom::Seq(1), 100)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        core.release(&name(), &old.lease.lease_id).unwrap(),
        ReleaseOutcome::AlreadyEnded(old.lease.lease_id.clone(), EndReason::Released)
    );
}

#[tokio::test(start_paused = true)]
async fn a_dropped_waiter_leaves_the_queue_at_once() {
    let core = core();
    let holder = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    let c = core.clone();
    let gone = tokio::spawn(async move { c.acquire(args("b", LONG)).await });
    tokio::task::yield_now().await;
    let c = core.clone();
    let next = tokio::spawn(async move { c.acquire(args("c", LONG)).await });
    tokio::task::yield_now().await;
    assert_eq!(core.describe(&name()).await.unwrap().waiters, 2);
    gone.abort();
    let _ = gone.await;
    assert_eq!(core.describe(&name()).await.unwrap().waiters, 1);
    core.release(&name(), &holder.lease.lease_id).unwrap();
    assert_eq!(next.await.unwrap().unwrap().lease.owner.client_id, "c");
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_runs_out_is_a_timeout_and_try_once_fails_fast() {
    let core = core();
    let _holder = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    let mut long = args("b", Duration::from_millis(300));
    long.ttl = Some(Duration::from_secs(10));
    assert_eq!(
        core.acquire(long).await.unwrap_err().reason(),
        "WAIT_TIMEOUT"
    );
    assert_eq!(
        core.acquire(args("c", Duration::ZERO))
            .await
            .unwrap_err()
            .reason(),
        "WAIT_TIMEOUT"
    );
    assert_eq!(core.describe(&name()).await.unwrap().waiters, 0);
}

#[tokio::test(start_paused = true)]
async fn a_retried_acquire_with_the_same_key_gets_the_same_lease() {
    let core = core();
    let mut a = args("a", Duration::ZERO);
    a.idempotency_key = Some("turn-7".into());
    let first = core.acquire(a.clone()).await.unwrap();
    let again = core.acquire(a).await.unwrap();
    assert_eq!(first.lease.lease_id, again.lease.lease_id);
    assert_eq!(first.lease.token, again.lease.token);
}

fn keyed(who: &str, key: &str) -> AcquireArgs {
    let mut a = args(who, LONG);
    a.idempotency_key = Some(key.into());
    a
}

#[tokio::test(start_paused = true)]
async fn a_retry_with_the_same_key_takes_the_place_of_its_queued_original() {
    let core = core();
    let holder = core.acquire(args("h", Duration::ZERO)).await.unwrap();
    let c = core.clone();
    // The original call: its caller's connection died without the server noticing yet.
    let original = tokio::spawn(async move { c.acquire(keyed("a", "turn-7")).await });
    tokio::task::yield_now().await;
    let c = core.clone();
    let other = tokio::spawn(async move { c.acquire(args("b", LONG)).await });
    tokio::task::yield_now().await;
    let c = core.clone();
    let retry = tokio::spawn(async move { c.acquire(keyed("a", "turn-7")).await });
    tokio::task::yield_now().await;
    let err = original.await.unwrap().unwrap_err();
    assert_eq!(err.reason(), "SUPERSEDED");
    assert!(
        err.to_string().contains("the retry gets the lease"),
        "{err}"
    );
    // The retry waits in the original's place, ahead of b, and counts once.
    assert_eq!(core.describe(&name()).await.unwrap().waiters, 2);
    core.release(&name(), &holder.lease.lease_id).unwrap();
    let granted = retry.await.unwrap().unwrap();
    assert_eq!(granted.lease.owner.client_id, "a");
    assert!(!other.is_finished(), "b still waits behind a");
    // Another key, or another client with the same key, is a different acquire and queues.
    let c = core.clone();
    let fresh = tokio::spawn(async move { c.acquire(keyed("a", "turn-8")).await });
    let c = core.clone();
    let stranger = tokio::spawn(async move { c.acquire(keyed("z", "turn-7")).await });
    tokio::task::yield_now().await;
    assert_eq!(core.describe(&name()).await.unwrap().waiters, 3);
    for call in [fresh, stranger] {
        call.abort();
        let _ = call.await;
    }
    core.release(&name(), &granted.lease.lease_id).unwrap();
    assert_eq!(other.await.unwrap().unwrap().lease.owner.client_id, "b");
}

#[tokio::test(start_paused = true)]
async fn a_retry_queued_while_its_original_was_being_granted_gets_the_same_lease() {
    let store = Arc::new(MemStore::default());
    let core = Core::new(store.clone(), Limits::default());
    for original_stays in [true, false] {
        let resource = ResourceName::parse(&format!("agents/k{original_stays}.jsonl")).unwrap();
        let on = |mut a: AcquireArgs| {
            a.resource = resource.clone();
            a
        };
        let queued = || core.inner.lock().resources[&resource].queue.len();
        let not_open = store.opening.write().await;
        let (c, a) = (core.clone(), on(keyed("a", "turn-7")));
        let mut original = Box::pin(async move { c.acquire(a).await });
        // The resource is free: one poll starts granting it to the original, which waits for the log.
        let first =
            std::future::poll_fn(|cx| std::task::Poll::Ready(original.as_mut().poll(cx))).await;
        assert!(first.is_pending());
        // Without the original's caller, the lease still goes to its retry, not to b, although b
        // queued first.
        let original = original_stays.then(|| tokio::spawn(original));
        let (c, b) = (core.clone(), on(args("b", LONG)));
        let other = tokio::spawn(async move { c.acquire(b).await });
        tokio::task::yield_now().await;
        let (c, again) = (core.clone(), on(keyed("a", "turn-7")));
        let retry = tokio::spawn(async move { c.acquire(again).await });
        tokio::task::yield_now().await;
        assert_eq!(queued(), 2);
        drop(not_open);
        let granted = retry.await.unwrap().unwrap();
        assert_eq!(granted.lease.owner.client_id, "a");
        if let Some(original) = original {
            let first = original.await.unwrap().unwrap();
            assert_eq!(first.lease.lease_id, granted.lease.lease_id);
            assert_eq!(first.lease.token, granted.lease.token);
        }
        assert_eq!(queued(), 1);
        assert!(!other.is_finished());
        core.release(&resource, &granted.lease.lease_id).unwrap();
        let next = other.await.unwrap().unwrap();
        assert_eq!(next.lease.owner.client_id, "b");
        assert_eq!(
            next.lease.token,
            granted.lease.token + 1,
            "one grant before b's"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_lease_granted_to_an_original_and_its_retry_outlives_either_going_away() {
    let store = Arc::new(MemStore::default());
    let core = Core::new(store.clone(), Limits::default());
    let not_open = store.opening.write().await;
    let mut original = Box::pin(core.acquire(keyed("a", "turn-7")));
    let mut retry = Box::pin(core.acquire(keyed("a", "turn-7")));
    // The original starts the grant (waiting for the log); the retry queues meanwhile.
    for call in [&mut original, &mut retry] {
        let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
        assert!(first.is_pending());
    }
    drop(not_open);
    let granted = original.await.unwrap();
    // The retry was answered with the same lease, and goes away without taking it: the lease
    // stays with the original.
    drop(retry);
    let state = core.describe(&name()).await.unwrap();
    assert_eq!(
        state.holder.map(|h| h.lease_id),
        Some(granted.lease.lease_id.clone())
    );
    core.append(append(&granted, r#"{"still":"held"}"#))
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_retry_of_an_acquire_being_granted_counts_against_no_limit_again() {
    let limits = Limits {
        max_leases_per_client: 1,
        ..Limits::default()
    };
    let store = Arc::new(MemStore::default());
    let core = Core::new(store.clone(), limits);
    for grant_fails in [false, true] {
        store.broken.store(grant_fails, Ordering::SeqCst);
        let not_open = store.opening.write().await;
        let mut original = Box::pin(core.acquire(keyed("a", "turn-7")));
        let mut retry = Box::pin(core.acquire(keyed("a", "turn-7")));
        // The original starts the grant (waiting for the log); the retry, at a's limit of one
        // lease, waits for that grant instead of being refused.
        for call in [&mut original, &mut retry] {
            let first =
                std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
            assert!(first.is_pending());
        }
        assert_eq!(core.inner.claims.count("a"), (1, 1));
        drop(not_open);
        let (original, retry) = (original.await, retry.await);
        if grant_fails {
            // The grant failed: so did its retry (never granted a lease of its own, although the
            // store would open now), and nothing is held.
            assert_eq!(original.unwrap_err().reason(), "STORAGE_FAILED");
            assert_eq!(retry.unwrap_err().reason(), "STORAGE_FAILED");
            assert_eq!(core.inner.claims.count("a"), (0, 0));
            assert!(
                core.inner
                    .lock()
                    .resources
                    .get(&name())
                    .is_none_or(|r| matches!(r.holder, Holder::Free) && r.queue.is_empty())
            );
        } else {
            let (original, retry) = (original.unwrap(), retry.unwrap());
            assert_eq!(original.lease.lease_id, retry.lease.lease_id);
            assert_eq!(core.inner.claims.count("a"), (1, 1));
            core.release(&name(), &original.lease.lease_id).unwrap();
            assert_eq!(core.inner.claims.count("a"), (0, 0));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_acquire_key_holding_a_lease_is_refused_for_another_resource() {
    let core = core();
    let mut a = args("a", Duration::ZERO);
    a.idempotency_key = Some("turn-7".into());
    let first = core.acquire(a.clone()).await.unwrap();
    let mut elsewhere = a.clone();
    elsewhere.resource = ResourceName::parse("agents/other.jsonl").unwrap();
    let err = core.acquire(elsewhere).await.unwrap_err();
    assert_eq!(err.reason(), "INVALID_ARGUMENT");
    assert!(
        err.to_string()
            .contains("a retry must name the same resource"),
        "{err}"
    );
    // The key still finds its lease, and once that ends the key is free again.
    assert_eq!(
        core.acquire(a).await.unwrap().lease.lease_id,
        first.lease.lease_id
    );
    core.release(&name(), &first.lease.lease_id).unwrap();
    let mut reused = args("a", Duration::ZERO);
    reused.idempotency_key = Some("turn-7".into());
    reused.resource = ResourceName::parse("agents/other.jsonl").unwrap();
    assert!(core.acquire(reused).await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_retried_append_with_the_same_request_id_appends_once() {
    let core = core();
    let g = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    let mut req = append(&g, "{\"once\":1}");
    req.request_id = Some("r1".into());
    let first = core.append(req.clone()).await.unwrap();
    let retry = core.append(req.clone()).await.unwrap();
    assert_eq!(first.first_seq, retry.first_seq);
    assert_eq!(
        core.read(&name(), ReadFrom::Seq(1), 100)
            .await
            .unwrap()
            .len(),
        1
    );
    // A "retry" naming another resource is not one: the lease does not cover it.
    let other = ResourceName::parse("agents/other.jsonl").unwrap();
    req.resource = other.clone();
    assert_eq!(
        core.append(req).await.unwrap_err().reason(),
        "WRONG_RESOURCE"
    );
    assert!(
        core.read(&other, ReadFrom::Seq(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(start_paused = true)]
async fn compare_and_append_checks_the_epoch_and_batches_advance_it_by_one() {
    let core = core();
    let g = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    let mut req = append(&g, "{}");
    req.entries.push(b"{\"two\":2}".to_vec());
    req.expected_epoch = Some(0);
    let done = core.append(req.clone()).await.unwrap();
    assert_eq!((done.first_seq, done.last_seq, done.head.epoch), (1, 2, 1));
    assert_eq!(
        core.append(req).await.unwrap_err().reason(),
        "HEAD_MISMATCH"
    );
    let mut wrong = append(&g, "{}");
    wrong.resource = ResourceName::parse("agents/other.jsonl").unwrap();
    assert_eq!(
        core.append(wrong).await.unwrap_err().reason(),
        "WRONG_RESOURCE"
    );
}

#[tokio::test(start_paused = true)]
async fn an_append_whose_caller_goes_away_once_it_is_ordered_still_finishes() {
    let store = Arc::new(MemStore::default());
    let core = Core::new(store.clone(), Limits::default());
    let g = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    let log = store.logs.lock().unwrap()[&name()].clone();
    let not_durable = log.durability.write().await;
    let mut events = core.subscribe();
    let mut call = Box::pin(core.append(AppendArgs {
        request_id: Some("r1".into()),
        ..append(&g, r#"{"n":1}"#)
    }));
    // One poll orders the batch; then the call waits for it to be durable, and its caller goes.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    drop(call);
    assert_eq!(log.head().next_seq, 2, "ordered");
    drop(not_durable);
    // The rest ran anyway: the event is sent, and a retry gets the original result.
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
    assert_eq!(event.expect("an event").unwrap().kind, EventKind::Appended);
    let retry = core
        .append(AppendArgs {
            request_id: Some("r1".into()),
            ..append(&g, r#"{"n":1}"#)
        })
        .await
        .unwrap();
    assert_eq!((retry.first_seq, retry.last_seq), (1, 1));
    assert_eq!(log.entries.lock().unwrap().len(), 1, "appended once");
}

#[tokio::test(start_paused = true)]
async fn a_retry_gets_the_original_result_when_the_lease_ended_while_the_batch_was_ordered() {
    let store = Arc::new(MemStore::default());
    let core = Core::new(store.clone(), Limits::default());
    let g = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    let log = store.logs.lock().unwrap()[&name()].clone();
    let not_ordered = log.ordering.write().await;
    let req = AppendArgs {
        request_id: Some("r1".into()),
        ..append(&g, r#"{"n":1}"#)
    };
    let mut call = Box::pin(core.append(req.clone()));
    // The lease is checked, then the call waits for the store to order the batch.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    // Meanwhile the lease ends (an operator, or its TTL). The checked batch still goes in.
    assert!(matches!(
        core.force_release(&name()),
        ReleaseOutcome::Released(_)
    ));
    drop(not_ordered);
    let done = call.await.unwrap();
    // Its reply is lost; the retry must get the original result, not an error that invites a
    // second append.
    assert_eq!(core.append(req).await.unwrap(), done);
    assert_eq!(log.entries.lock().unwrap().len(), 1, "appended once");
}

#[tokio::test(start_paused = true)]
async fn an_acquire_whose_caller_goes_away_while_it_is_granted_passes_the_lease_on() {
    let store = Arc::new(MemStore::default());
    let core = Core::new(store.clone(), Limits::default());
    let not_open = store.opening.write().await;
    let mut events = core.subscribe();
    let mut call = Box::pin(core.acquire(args("a", LONG)));
    // The resource is free: one poll starts granting it to this call, which waits for the log.
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(call.as_mut().poll(cx))).await;
    assert!(first.is_pending());
    drop(call);
    drop(not_open);
    // The grant finished without its caller and passed the lease on: the next one gets it.
    let next = tokio::time::timeout(LONG, core.acquire(args("b", LONG)))
        .await
        .expect("granted in time")
        .unwrap();
    assert_eq!(next.lease.owner.name, "b");
    assert_eq!(events.recv().await.unwrap().kind, EventKind::Granted);
    assert_eq!(
        events.recv().await.unwrap().kind,
        EventKind::Ended(EndReason::Released)
    );
}

#[tokio::test(start_paused = true)]
async fn a_forced_release_of_a_named_lease_leaves_a_later_holder_alone() {
    let core = core();
    let first = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    core.release(&name(), &first.lease.lease_id).unwrap();
    let second = core.acquire(args("b", Duration::ZERO)).await.unwrap();
    // The operator aimed at the first lease, which ended meanwhile.
    assert_eq!(
        core.force_release_lease(&name(), &first.lease.lease_id)
            .unwrap(),
        ReleaseOutcome::AlreadyEnded(first.lease.lease_id.clone(), EndReason::Released)
    );
    let holder = core.describe(&name()).await.unwrap().holder;
    assert_eq!(
        holder.map(|h| h.lease_id),
        Some(second.lease.lease_id.clone())
    );
    assert_eq!(
        core.force_release_lease(&name(), &second.lease.lease_id)
            .unwrap(),
        ReleaseOutcome::Released(second.lease.lease_id.clone())
    );
    assert!(matches!(
        core.append(append(&second, "{}")).await.unwrap_err(),
        CoreError::LeaseEnded {
            reason: EndReason::Forced,
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn a_forced_release_ends_the_lease_and_notifies_watchers() {
    let core = core();
    let mut events = core.subscribe();
    let g = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    assert!(matches!(
        core.force_release(&name()),
        ReleaseOutcome::Released(_)
    ));
    assert_eq!(core.force_release(&name()), ReleaseOutcome::NotHeld);
    assert_eq!(events.recv().await.unwrap().kind, EventKind::Granted);
    assert_eq!(
        events.recv().await.unwrap().kind,
        EventKind::Ended(EndReason::Forced)
    );
    assert_eq!(
        core.append(append(&g, "{}")).await.unwrap_err().reason(),
        "LEASE_RELEASED"
    );
}

#[tokio::test(start_paused = true)]
async fn append_once_queues_appends_and_releases_and_a_retry_appends_nothing() {
    let core = core();
    let holder = core.acquire(args("runner", Duration::ZERO)).await.unwrap();
    let once = |request_id: &str| cron_once(&name(), request_id);
    let c = core.clone();
    let first = once("tick-1");
    let queued = tokio::spawn(async move { c.append_once(first).await });
    tokio::task::yield_now().await;
    core.append(append(&holder, "{\"runner\":1}"))
        .await
        .unwrap();
    core.release(&name(), &holder.lease.lease_id).unwrap();
    let (done, token) = queued.await.unwrap().unwrap();
    assert_eq!((done.first_seq, done.head.epoch), (2, 2));
    assert!(token > holder.lease.token);
    assert!(core.describe(&name()).await.unwrap().holder.is_none());
    assert_eq!(
        core.append_once(once("tick-1")).await.unwrap(),
        (done, token)
    );
    assert_eq!(
        core.read(&name(), ReadFrom::Seq(1), 10)
            .await
            .unwrap()
            .len(),
        2
    );
    // The same request id naming another resource is neither a retry nor a new write.
    let other = ResourceName::parse("agents/other.jsonl").unwrap();
    let mut elsewhere = once("tick-1");
    elsewhere.resource = other.clone();
    let err = core.append_once(elsewhere).await.unwrap_err();
    assert_key_refused(&core, &err, &other).await;
}

/// A cron job's one-line AppendOnce to `resource` with `request_id`, waiting as long as needed.
fn cron_once(resource: &ResourceName, request_id: &str) -> AppendOnceArgs {
    AppendOnceArgs {
        resource: resource.clone(),
        owner: args("cron", LONG).owner,
        wait: LONG,
        entries: vec![b"{\"cron\":1}".to_vec()],
        expected_epoch: None,
        request_id: Some(request_id.into()),
    }
}

/// The key of [`cron_once`] with `request_id`.
fn cron_key(request_id: &str) -> (String, String) {
    (args("cron", LONG).owner.client_id, request_id.to_owned())
}

/// `err` refuses an AppendOnce key that is `name()`'s, and `other` was left untouched.
async fn assert_key_refused(core: &Core, err: &CoreError, other: &ResourceName) {
    assert!(
        matches!(err, CoreError::InvalidArgument { field: "request_id", reason }
            if reason.contains(name().as_str())),
        "{err}"
    );
    assert!(
        core.read(other, ReadFrom::Seq(1), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(core.describe(other).await.unwrap().holder.is_none());
}

#[tokio::test(start_paused = true)]
async fn append_and_release_frees_the_resource_for_the_next_waiter() {
    let core = core();
    let g = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    let c = core.clone();
    let next = tokio::spawn(async move { c.acquire(args("b", LONG)).await });
    tokio::task::yield_now().await;
    let mut req = append(&g, "{}");
    req.release = true;
    core.append(req).await.unwrap();
    let granted = next.await.unwrap().unwrap();
    assert_eq!(granted.head.epoch, 1);
    assert_eq!(
        core.lease_status(&g.lease.lease_id),
        LeaseStatus::Ended(EndReason::Released)
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_append_and_release_gets_the_original_result_after_the_lease_ended() {
    let core = core();
    let g = core.acquire(args("a", Duration::ZERO)).await.unwrap();
    let mut req = append(&g, "{\"n\":1}");
    req.request_id = Some("r-1".into());
    req.release = true;
    let first = core.append(req.clone()).await.unwrap();
    assert_eq!(core.append(req).await.unwrap(), first);
    assert_eq!(
        core.read(&name(), ReadFrom::Seq(1), 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn oversized_client_keys_are_refused() {
    let core = core();
    let mut a = args("a", Duration::ZERO);
    a.idempotency_key = Some("k".repeat(129));
    assert_eq!(
        core.acquire(a).await.unwrap_err().reason(),
        "INVALID_ARGUMENT"
    );
}

#[tokio::test(start_paused = true)]
async fn a_keepalive_stream_hears_once_of_each_of_its_leases_ending_and_of_no_other() {
    let core = core();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let on = |who: &str| AcquireArgs {
        resource: ResourceName::parse(&format!("streams/{who}.jsonl")).unwrap(),
        ..args(who, Duration::ZERO)
    };
    let kept = core.acquire(on("a")).await.unwrap();
    let released = core.acquire(on("b")).await.unwrap();
    let other = core.acquire(on("c")).await.unwrap();
    let ids = [&kept.lease.lease_id, &released.lease.lease_id];
    for _ in 0..3 {
        let statuses = core.keepalive_many(&ids, Some(&tx));
        assert!(statuses.iter().all(|s| matches!(s, LeaseStatus::Alive(_))));
        tokio::time::advance(Duration::from_millis(300)).await;
    }
    core.release(&released.lease.resource, &released.lease.lease_id)
        .unwrap();
    assert_eq!(&*rx.recv().await.unwrap(), released.lease.lease_id.as_ref());
    tokio::time::advance(Duration::from_millis(1000)).await;
    assert_eq!(&*rx.recv().await.unwrap(), kept.lease.lease_id.as_ref());
    // `other` expired too, but it was never renewed on this stream: it is not reported here.
    assert_eq!(
        core.lease_status(&other.lease.lease_id),
        LeaseStatus::Ended(EndReason::Expired)
    );
    assert!(rx.try_recv().is_err(), "each end is reported once");
}

#[test]
fn an_appendonce_key_remembered_twice_is_forgotten_only_when_it_is_the_oldest() {
    let mut st = state::State::default();
    let result = |first_seq| {
        let done = Appended {
            first_seq,
            last_seq: first_seq,
            head: Head::EMPTY,
        };
        (done, 1, name())
    };
    let key = |i: usize| ("cron".to_owned(), format!("tick-{i}"));
    st.remember_once(key(0), result(1));
    // The same key again: the newer result stays.
    st.remember_once(key(0), result(2));
    for i in 1..state::TOMBSTONES {
        st.remember_once(key(i), result(3));
    }
    assert_eq!(st.once.get(&key(0)).map(|r| r.0.first_seq), Some(2));
    st.remember_once(key(state::TOMBSTONES), result(3));
    assert!(!st.once.contains_key(&key(0)), "the oldest key goes first");
    assert_eq!(st.once.len(), state::TOMBSTONES);
}

#[tokio::test(start_paused = true)]
async fn an_appendonce_key_in_use_for_one_resource_is_refused_for_another_until_its_call_ends() {
    let core = core();
    let holder = core.acquire(args("runner", Duration::ZERO)).await.unwrap();
    let other = ResourceName::parse("agents/other.jsonl").unwrap();
    // A call with key tick-1 queues for the held resource; the same key elsewhere is refused.
    let c = core.clone();
    let first = cron_once(&name(), "tick-1");
    let queued = tokio::spawn(async move { c.append_once(first).await });
    tokio::task::yield_now().await;
    let err = core
        .append_once(cron_once(&other, "tick-1"))
        .await
        .unwrap_err();
    assert_key_refused(&core, &err, &other).await;
    // A call that goes away lets go of its key: tick-2 is then free for another resource.
    let c = core.clone();
    let second = cron_once(&name(), "tick-2");
    let abandoned = tokio::spawn(async move { c.append_once(second).await });
    tokio::task::yield_now().await;
    assert!(
        core.inner
            .lock()
            .once_running
            .contains_key(&cron_key("tick-2"))
    );
    abandoned.abort();
    assert!(abandoned.await.unwrap_err().is_cancelled());
    // Of two calls with one key on one resource, one going away leaves the key claimed.
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let (c, call) = (core.clone(), cron_once(&name(), "tick-3"));
            tokio::spawn(async move { c.append_once(call).await })
        })
        .collect();
    tokio::task::yield_now().await;
    calls[0].abort();
    tokio::task::yield_now().await;
    let running = core
        .inner
        .lock()
        .once_running
        .get(&cron_key("tick-3"))
        .cloned();
    assert_eq!(running, Some((name(), 1)));
    let err = core
        .append_once(cron_once(&other, "tick-3"))
        .await
        .unwrap_err();
    assert_key_refused(&core, &err, &other).await;
    let (done, _) = core.append_once(cron_once(&other, "tick-2")).await.unwrap();
    assert_eq!(done.first_seq, 1);
    core.release(&name(), &holder.lease.lease_id).unwrap();
    let (done, _) = queued.await.unwrap().unwrap();
    assert_eq!(done.first_seq, 1);
    let [cancelled, kept]: [_; 2] = calls.try_into().unwrap();
    assert!(cancelled.await.unwrap_err().is_cancelled());
    assert_eq!(kept.await.unwrap().unwrap().0.first_seq, 2);
    assert!(core.inner.lock().once_running.is_empty());
}

#[tokio::test(start_paused = true)]
async fn leases_held_and_waited_for_are_capped_per_client_and_in_all() {
    let limits = Limits {
        max_leases: 4,
        max_leases_per_client: 2,
        ..Limits::default()
    };
    let core = Core::new(Arc::new(MemStore::default()), limits);
    let on = |who: &str, resource: &str, wait: Duration| AcquireArgs {
        resource: ResourceName::parse(resource).unwrap(),
        ..args(who, wait)
    };
    let a1 = core.acquire(on("a", "r/1", LONG)).await.unwrap();
    // A waiting acquire counts too: `a` queues behind `b` on r/2.
    let b2 = core.acquire(on("b", "r/2", LONG)).await.unwrap();
    let c = core.clone();
    let queued = tokio::spawn(async move { c.acquire(on("a", "r/2", LONG)).await });
    tokio::task::yield_now().await;
    let err = core.acquire(on("a", "r/3", LONG)).await.unwrap_err();
    assert_eq!(err.reason(), "TOO_MANY_LEASES");
    assert!(err.to_string().contains("client \"a\""), "{err}");
    assert!(err.to_string().contains("--max-leases-per-client"), "{err}");
    // Trying a busy resource once is still told it is busy.
    let err = core
        .acquire(on("a", "r/2", Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(err.reason(), "WAIT_TIMEOUT");
    // A refused acquire leaves nothing behind: r/3 is unknown, not busy.
    assert_eq!(
        core.describe(&ResourceName::parse("r/3").unwrap())
            .await
            .unwrap()
            .waiters,
        0
    );

    // The server-wide cap: a, a (queued), b, then c; d is refused.
    let _c3 = core.acquire(on("c", "r/3", LONG)).await.unwrap();
    let err = core.acquire(on("d", "r/4", LONG)).await.unwrap_err();
    assert_eq!(err.reason(), "TOO_MANY_LEASES");
    assert!(err.to_string().contains("the server"), "{err}");

    // Waits that end without a lease, and leases that end, give their claims back.
    queued.abort();
    let _ = queued.await;
    let a3 = core.acquire(on("a", "r/5", LONG)).await.unwrap();
    let err = core.acquire(on("a", "r/6", LONG)).await.unwrap_err();
    assert_eq!(err.reason(), "TOO_MANY_LEASES");
    core.release(&a3.lease.resource, &a3.lease.lease_id)
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // a1 and b2 (TTL 1 s) expire
    assert!(core.renew(None, &a1.lease.lease_id).is_err());
    assert!(core.renew(None, &b2.lease.lease_id).is_err());
    let _a = core.acquire(on("a", "r/6", LONG)).await.unwrap();
    let _a = core.acquire(on("a", "r/7", LONG)).await.unwrap();
    let _d = core.acquire(on("d", "r/8", LONG)).await.unwrap();
}

#[test]
fn tombstones_remember_a_bounded_number_of_append_results_in_all() {
    let claims = claims::Claims::new(usize::MAX, usize::MAX);
    let mut st = state::State::default();
    let mut fx = state::Effects::default();
    let done = Appended {
        first_seq: 1,
        last_seq: 1,
        head: Head::EMPTY,
    };
    let now = tokio::time::Instant::now();
    // Each lease ends remembering 64 results: without the bound all of them would be kept.
    let leases = state::TOMBSTONE_APPENDS / 64 + 10;
    let mut ids = Vec::new();
    for i in 0..leases {
        let (key, id) = table::LeaseKey::mint();
        let appends = (0..64).map(|n| (format!("req-{i}-{n}"), done)).collect();
        st.leases.insert(
            key,
            state::LeaseRec {
                id: id.clone(),
                resource: name(),
                token: 1,
                owner: Arc::new(args("a", LONG).owner),
                ttl: LONG,
                deadline: now + LONG,
                idempotency_key: None,
                appends,
                loss: Vec::new(),
                _claim: Some(claims.take("a").unwrap()),
                shared: false,
            },
        );
        st.end_lease(&id, EndReason::Released, &mut fx);
        ids.push(id);
    }
    let kept: usize = st.ended.values().map(|e| e.appends.len()).sum();
    assert!(kept <= state::TOMBSTONE_APPENDS, "{kept} results kept");
    let newest = ids.last().unwrap();
    let last = leases - 1;
    assert!(st.remembered(newest, &format!("req-{last}-63")).is_some());
    assert!(
        st.remembered(&ids[0], "req-0-63").is_none(),
        "the oldest went first"
    );
    assert_eq!(st.ended_error(&ids[0]).reason(), "LEASE_NOT_FOUND");
    // A result remembered on a tombstone later (a batch ordered as its lease ended) counts too.
    st.remember_append(newest, "late".into(), done);
    assert!(st.remembered(newest, "late").is_some());
    let kept: usize = st.ended.values().map(|e| e.appends.len()).sum();
    assert!(kept <= state::TOMBSTONE_APPENDS, "{kept} results kept");
}
