//! Looking at the service: Describe, List and Watch.

mod common;

use common::rpc::*;
use common::*;
use fencepost as proto;
use proto::v1::{Lease, ListRequest, WatchEventKind};

#[tokio::test]
async fn watching_a_prefix_sees_granted_appended_and_released_events_in_order() {
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let mut events = watch(&mut c, "w/", true).await;

    let a = acquire(&mut c, "w/a.jsonl", 30_000).await;
    let appended = append(&mut c, &a, &[r#"{"n":1}"#, r#"{"n":2}"#])
        .await
        .expect("append");
    release(&mut c, &a).await;
    let outside = acquire(&mut c, "other/x.jsonl", 30_000).await;
    append(&mut c, &outside, &[r#"{"n":1}"#])
        .await
        .expect("append outside the prefix");
    let b = acquire(&mut c, "w/b.jsonl", 30_000).await;

    let granted = next_event(&mut events).await;
    assert_eq!(granted.kind(), WatchEventKind::Granted);
    assert_eq!(granted.resource, "w/a.jsonl");
    assert_eq!((&granted.lease_id, granted.token), (&a.lease_id, a.token));
    assert_eq!(granted.owner, a.owner);

    let batch = next_event(&mut events).await;
    assert_eq!(batch.kind(), WatchEventKind::Appended);
    assert_eq!(batch.resource, "w/a.jsonl");
    assert_eq!((batch.first_seq, batch.last_seq), (1, 2));
    assert_eq!(batch.token, a.token);
    assert_eq!(batch.head, appended.head);

    let released = next_event(&mut events).await;
    assert_eq!(released.kind(), WatchEventKind::Released);
    assert_eq!(
        (released.resource.as_str(), released.lease_id.as_str()),
        ("w/a.jsonl", a.lease_id.as_str())
    );

    let next = next_event(&mut events).await;
    assert_eq!(
        next.kind(),
        WatchEventKind::Granted,
        "other/ is not watched: {next:?}"
    );
    assert_eq!((next.resource.as_str(), next.token), ("w/b.jsonl", b.token));

    let times = [granted, batch, released, next].map(|e| e.time_unix_micros);
    assert!(times[0] > 0 && times.is_sorted(), "{times:?}");
}

#[tokio::test]
async fn watching_one_resource_ignores_its_neighbours() {
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let mut events = watch(&mut c, "n/a", false).await;
    acquire(&mut c, "n/ab", 30_000).await;
    acquire(&mut c, "n/b", 30_000).await;
    let mine = acquire(&mut c, "n/a", 30_000).await;

    let first = next_event(&mut events).await;
    assert_eq!(first.kind(), WatchEventKind::Granted);
    assert_eq!(
        (first.resource.as_str(), first.lease_id),
        ("n/a", mine.lease_id)
    );
}

#[tokio::test]
async fn describe_reports_holder_token_waiters_and_head() {
    const R: &str = "describe/state.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let describer = owner("describer");
    let granted = try_acquire(&mut c, R, describer.clone(), 30_000, 0)
        .await
        .expect("acquire");
    let lease = granted.lease.expect("lease");
    let head = granted.head.expect("head at grant");
    assert_eq!((head.epoch, head.next_seq, head.length), (0, 1, 0));
    append(&mut c, &lease, &[r#"{"n":1}"#, r#"{"n":2}"#])
        .await
        .expect("append");
    let waiter = spawn_acquire(&c, R, owner("queued"), 30_000, 60_000);
    wait_for_waiters(&c, R, 1).await;

    let state = describe(&mut c, R).await;
    assert_eq!(state.resource, R);
    let holder = state.holder.expect("holder");
    assert_eq!(
        (&holder.lease_id, holder.token),
        (&lease.lease_id, lease.token)
    );
    assert_eq!(holder.owner, Some(describer));
    assert_eq!(holder.ttl_ms, 30_000);
    assert!(holder.ttl_remaining_ms > 0 && holder.ttl_remaining_ms <= 30_000);
    assert_eq!(
        (state.token, state.waiters, state.exists),
        (lease.token, 1, true)
    );
    let head = state.head.expect("head");
    let length = server.file_bytes(R).len() as u64;
    assert_eq!((head.epoch, head.next_seq, head.length), (1, 3, length));

    release(&mut c, &lease).await;
    let next = tokio::time::timeout(WAIT, waiter)
        .await
        .expect("granted")
        .expect("task");
    let next = next.expect("acquire").lease.expect("lease");
    let state = describe(&mut c, R).await;
    assert_eq!(state.holder.expect("holder").lease_id, next.lease_id);
    assert_eq!((state.token, state.waiters), (next.token, 0));
}

async fn list(c: &mut Client, prefix: &str) -> Vec<(String, String)> {
    let request = ListRequest {
        prefix: prefix.to_owned(),
    };
    let leases = c.list(request).await.expect("list").into_inner().leases;
    leases
        .into_iter()
        .map(|l| (l.resource, l.lease_id))
        .collect()
}

#[tokio::test]
async fn listing_returns_live_leases_under_a_prefix_ordered_by_resource() {
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lb = acquire(&mut c, "l/b.jsonl", 30_000).await;
    let la = acquire(&mut c, "l/a.jsonl", 30_000).await;
    let mc = acquire(&mut c, "m/c.jsonl", 30_000).await;
    let pair = |l: &Lease| (l.resource.clone(), l.lease_id.clone());

    assert_eq!(list(&mut c, "l/").await, [pair(&la), pair(&lb)]);
    assert_eq!(list(&mut c, "").await, [pair(&la), pair(&lb), pair(&mc)]);
    assert!(list(&mut c, "zzz/").await.is_empty());

    release(&mut c, &la).await;
    assert_eq!(list(&mut c, "l/").await, [pair(&lb)]);
}

/// The value of the sample `name` (with its labels, if any) in a metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_count_grants_appends_refusals_and_outside_changes() {
    const R: &str = "metrics/a.jsonl";
    let server = Server::start(
        ServerOpts::default()
            .arg("--metrics-listen", "127.0.0.1:0")
            .arg("--scan-interval", "100ms"),
    );
    let before = server.metrics();
    for (name, value) in [
        ("fencepost_grants_total", 0.0),
        ("fencepost_leases", 0.0),
        ("fencepost_waiters", 0.0),
        ("fencepost_store_stopped", 0.0),
        ("fencepost_lease_ends_total{how=\"expired\"}", 0.0),
    ] {
        assert_eq!(sample(&before, name), Some(value), "{name} in {before}");
    }

    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#, r#"{"n":2}"#])
        .await
        .expect("append");
    let refused = append(&mut c, &lease, &["not json"]).await;
    assert_rejected(refused, tonic::Code::InvalidArgument, "INVALID_ENTRY");
    let now = server.metrics();
    for (name, value) in [
        ("fencepost_grants_total", 1.0),
        ("fencepost_leases", 1.0),
        ("fencepost_appended_batches_total", 1.0),
        ("fencepost_appended_entries_total", 2.0),
        (
            "fencepost_refused_calls_total{reason=\"INVALID_ENTRY\"}",
            1.0,
        ),
        ("fencepost_external_modifications_total", 0.0),
    ] {
        assert_eq!(sample(&now, name), Some(value), "{name} in {now}");
    }

    // A line written behind the server's back: the periodic scan finds it and publishes an
    // event, counted as it is published.
    let mut events = watch(&mut c, R, false).await;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(server.file(R))
        .expect("open the session file");
    std::io::Write::write_all(&mut file, b"{\"intruder\":1}\n").expect("write");
    let found = next_event(&mut events).await;
    assert_eq!(
        found.kind(),
        WatchEventKind::ExternalModification,
        "{found:?}"
    );
    let found = server.metrics();
    for (name, value) in [
        ("fencepost_external_modifications_total", 1.0),
        ("fencepost_blocked_files", 1.0),
    ] {
        assert_eq!(sample(&found, name), Some(value), "{name} in {found}");
    }

    release(&mut c, &lease).await;
    let after = server.metrics();
    assert_eq!(
        sample(&after, "fencepost_lease_ends_total{how=\"released\"}"),
        Some(1.0),
        "{after}"
    );
    assert_eq!(sample(&after, "fencepost_leases"), Some(0.0), "{after}");
}
