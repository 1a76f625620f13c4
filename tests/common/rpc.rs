//! Raw gRPC helpers: owners, calls with the tests' defaults, and reading rejections.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fencepost as proto;
use proto::v1::{
    AcquireRequest, AcquireResponse, AppendRequest, AppendResponse, DescribeRequest,
    DescribeResponse, Entry, Lease, Owner, OwnerKind, ReadRequest, ReleaseOutcome, ReleaseRequest,
    WatchEvent, WatchRequest,
};
use tonic::{Code, Status, Streaming};
use tonic_types::StatusExt;

use super::{Client, WAIT};

/// An owner with a client id unique to this test process.
pub fn owner(name: &str) -> Owner {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Owner {
        client_id: format!("{name}-{}-{n}", std::process::id()),
        name: name.to_owned(),
        kind: OwnerKind::Other.into(),
    }
}

/// The machine-readable reason in a status's `google.rpc.ErrorInfo`.
pub fn error_reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// One metadata value of a status's `google.rpc.ErrorInfo`.
pub fn error_metadata(status: &Status, key: &str) -> Option<String> {
    status
        .get_details_error_info()
        .and_then(|info| info.metadata.get(key).cloned())
}

/// Asserts a rejection with this code and reason in the fencepost domain; returns the status.
#[track_caller]
pub fn assert_rejected<T: std::fmt::Debug>(
    result: Result<T, Status>,
    code: Code,
    reason: &str,
) -> Status {
    let status = match result {
        Ok(value) => panic!("expected {code:?} / {reason}, got Ok({value:?})"),
        Err(status) => status,
    };
    let info = status.get_details_error_info();
    assert_eq!(
        (status.code(), info.as_ref().map(|i| i.reason.as_str())),
        (code, Some(reason)),
        "unexpected rejection: {status:?}"
    );
    assert_eq!(info.map(|i| i.domain).as_deref(), Some(proto::ERROR_DOMAIN));
    status
}

pub async fn try_acquire(
    c: &mut Client,
    resource: &str,
    owner: Owner,
    ttl_ms: u64,
    wait_ms: u64,
) -> Result<AcquireResponse, Status> {
    let request = AcquireRequest {
        resource: resource.to_owned(),
        owner: Some(owner),
        ttl_ms,
        wait_ms,
        idempotency_key: String::new(),
    };
    c.acquire(request).await.map(tonic::Response::into_inner)
}

/// Acquires a free resource for a fresh owner, without waiting.
pub async fn acquire(c: &mut Client, resource: &str, ttl_ms: u64) -> Lease {
    try_acquire(c, resource, owner("test"), ttl_ms, 0)
        .await
        .unwrap_or_else(|s| panic!("acquire {resource}: {s:?}"))
        .lease
        .expect("granted lease")
}

/// Acquire in a background task (a waiter); resolves when granted or refused.
pub fn spawn_acquire(
    c: &Client,
    resource: &'static str,
    owner: Owner,
    ttl_ms: u64,
    wait_ms: u64,
) -> tokio::task::JoinHandle<Result<AcquireResponse, Status>> {
    let mut c = c.clone();
    tokio::spawn(async move { try_acquire(&mut c, resource, owner, ttl_ms, wait_ms).await })
}

pub async fn append_raw(
    c: &mut Client,
    resource: &str,
    lease_id: &str,
    token: u64,
    entries: Vec<Vec<u8>>,
) -> Result<AppendResponse, Status> {
    let request = AppendRequest {
        resource: resource.to_owned(),
        lease_id: lease_id.to_owned(),
        token,
        entries,
        expected_epoch: None,
        request_id: String::new(),
        ..Default::default()
    };
    c.append(request).await.map(tonic::Response::into_inner)
}

/// Appends one batch under a lease (its own resource, id and token).
pub async fn append(
    c: &mut Client,
    lease: &Lease,
    lines: &[&str],
) -> Result<AppendResponse, Status> {
    let entries = lines.iter().map(|l| l.as_bytes().to_vec()).collect();
    append_raw(c, &lease.resource, &lease.lease_id, lease.token, entries).await
}

pub async fn release(c: &mut Client, lease: &Lease) -> ReleaseOutcome {
    let request = ReleaseRequest {
        resource: lease.resource.clone(),
        lease_id: lease.lease_id.clone(),
        force: false,
    };
    let response = c.release(request).await.expect("release").into_inner();
    response.outcome()
}

/// All entries of a read; an error may come at the call or mid-stream.
pub async fn read(c: &mut Client, request: ReadRequest) -> Result<Vec<Entry>, Status> {
    let collect = async {
        let mut stream = c.read(request).await?.into_inner();
        let mut entries = Vec::new();
        while let Some(entry) = stream.message().await? {
            entries.push(entry);
        }
        Ok(entries)
    };
    tokio::time::timeout(WAIT, collect)
        .await
        .expect("read did not finish in time")
}

pub async fn read_all(c: &mut Client, resource: &str) -> Vec<Entry> {
    let request = ReadRequest {
        resource: resource.to_owned(),
        ..Default::default()
    };
    read(c, request)
        .await
        .unwrap_or_else(|s| panic!("read {resource}: {s:?}"))
}

pub async fn try_describe(c: &mut Client, resource: &str) -> Result<DescribeResponse, Status> {
    let request = DescribeRequest {
        resource: resource.to_owned(),
    };
    c.describe(request).await.map(tonic::Response::into_inner)
}

pub async fn describe(c: &mut Client, resource: &str) -> DescribeResponse {
    try_describe(c, resource)
        .await
        .unwrap_or_else(|s| panic!("describe {resource}: {s:?}"))
}

/// Waits (polling Describe, bounded by [`WAIT`]) until the queue of `resource` has `n` waiters.
pub async fn wait_for_waiters(c: &Client, resource: &str, n: u32) {
    let mut c = c.clone();
    let deadline = Instant::now() + WAIT;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        let seen = describe(&mut c, resource).await.waiters;
        if seen == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{resource} still has {seen} waiters, expected {n}"
        );
    }
}

/// Watches one resource (`prefix == false`) or a prefix. Subscribed once this returns.
pub async fn watch(c: &mut Client, name: &str, prefix: bool) -> Streaming<WatchEvent> {
    let request = if prefix {
        WatchRequest {
            prefix: name.to_owned(),
            ..Default::default()
        }
    } else {
        WatchRequest {
            resource: name.to_owned(),
            ..Default::default()
        }
    };
    c.watch(request).await.expect("watch").into_inner()
}

pub async fn next_event(events: &mut Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(WAIT, events.message())
        .await
        .expect("no watch event in time")
        .expect("watch stream failed")
        .expect("watch stream ended")
}
