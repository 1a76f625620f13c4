//! The waiter queue and mutual exclusion: FIFO grants, waiters that give up, and several client
//! processes contending for one resource.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::collections::BTreeSet;

use common::ctl::*;
use common::rpc::*;
use common::*;
use fencepost as proto;
use proto::v1::ReleaseOutcome;
use proxy::Proxy;
use tonic::Code;

#[tokio::test]
async fn waiters_are_granted_in_fifo_order_with_increasing_tokens() {
    const R: &str = "queue/fifo.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let holder = acquire(&mut c, R, 30_000).await;

    let (tx, mut granted) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..3u32 {
        let waiter = spawn_acquire(&c, R, owner(&format!("waiter{i}")), 30_000, 60_000);
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send((i, waiter.await.expect("waiter task")));
        });
        // Queue them in a known order: the next starts only once this one is queued.
        wait_for_waiters(&c, R, i + 1).await;
    }

    let mut current = holder;
    for expected in 0..3u32 {
        assert_eq!(release(&mut c, &current).await, ReleaseOutcome::Released);
        let (i, result) = tokio::time::timeout(WAIT, granted.recv())
            .await
            .expect("a waiter is granted after the release")
            .expect("grant channel open");
        assert_eq!(i, expected, "waiters are served in arrival order");
        let lease = result.expect("waiter granted").lease.expect("lease");
        assert!(
            lease.token > current.token,
            "token {} after {}",
            lease.token,
            current.token
        );
        let state = describe(&mut c, R).await;
        assert_eq!(state.waiters, 2 - expected);
        assert_eq!(state.holder.expect("holder").lease_id, lease.lease_id);
        current = lease;
    }
    assert_eq!(release(&mut c, &current).await, ReleaseOutcome::Released);
}

#[tokio::test]
async fn a_cancelled_waiter_leaves_the_queue_at_once() {
    const R: &str = "queue/cancelled.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let holder = acquire(&mut c, R, 30_000).await;

    let cancelled = spawn_acquire(&c, R, owner("cancelled"), 30_000, 60_000);
    wait_for_waiters(&c, R, 1).await;
    let live_owner = owner("live");
    let live = spawn_acquire(&c, R, live_owner.clone(), 30_000, 60_000);
    wait_for_waiters(&c, R, 2).await;

    // Dropping the Acquire future cancels the call (an HTTP/2 reset).
    cancelled.abort();
    wait_for_waiters(&c, R, 1).await;

    assert_eq!(release(&mut c, &holder).await, ReleaseOutcome::Released);
    let lease = tokio::time::timeout(WAIT, live)
        .await
        .expect("the live waiter is granted")
        .expect("task")
        .expect("acquire")
        .lease
        .expect("lease");
    assert_eq!(lease.owner.expect("owner").client_id, live_owner.client_id);
    assert!(lease.token > holder.token);
    let state = describe(&mut c, R).await;
    assert_eq!(state.holder.expect("holder").lease_id, lease.lease_id);
    assert_eq!(state.waiters, 0);
}

#[tokio::test]
async fn a_waiter_whose_client_vanished_without_closing_its_connection_leaves_the_queue() {
    const R: &str = "queue/vanished.jsonl";
    let server = Server::start(
        ServerOpts::default()
            .arg("--ping-interval", "200ms")
            .arg("--ping-timeout", "300ms"),
    );
    let mut c = server.grpc().await;
    let _holder = acquire(&mut c, R, 30_000).await;
    let proxy = Proxy::start(server.endpoint()).await;
    let vanishing = connect(&proxy.endpoint()).await;
    let _waiting = spawn_acquire(&vanishing, R, owner("vanishing"), 30_000, 60_000);
    wait_for_waiters(&c, R, 1).await;

    // Its host goes silent: nothing reaches it any more, and nobody closes the connection.
    proxy.drop_replies();
    // The server's pings go unanswered, so it closes the connection and the call ends.
    wait_for_waiters(&c, R, 0).await;
}

#[tokio::test]
async fn a_killed_waiter_process_leaves_the_queue_and_the_next_live_waiter_is_granted() {
    const R: &str = "queue/killed.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let holder = acquire(&mut c, R, 30_000).await;

    let mut process = spawn_ctl(server.endpoint(), ["acquire", R, "--wait", "60s"]);
    wait_for_waiters(&c, R, 1).await;
    let live_owner = owner("live");
    let live = spawn_acquire(&c, R, live_owner.clone(), 30_000, 60_000);
    wait_for_waiters(&c, R, 2).await;

    process.kill();
    wait_for_waiters(&c, R, 1).await;

    assert_eq!(release(&mut c, &holder).await, ReleaseOutcome::Released);
    let lease = tokio::time::timeout(WAIT, live)
        .await
        .expect("the live waiter is granted")
        .expect("task")
        .expect("acquire")
        .lease
        .expect("lease");
    assert_eq!(lease.owner.expect("owner").client_id, live_owner.client_id);
    let state = describe(&mut c, R).await;
    assert_eq!(state.holder.expect("holder").lease_id, lease.lease_id);
    assert_eq!(state.waiters, 0);
}

#[tokio::test]
async fn a_waiter_that_times_out_gets_wait_timeout_and_leaves_the_queue() {
    const R: &str = "queue/timeout.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let holder = acquire(&mut c, R, 30_000).await;

    let once = try_acquire(&mut c, R, owner("once"), 30_000, 0).await;
    assert_rejected(once, tonic::Code::DeadlineExceeded, "WAIT_TIMEOUT");
    let waited = try_acquire(&mut c, R, owner("waited"), 30_000, 300).await;
    assert_rejected(waited, tonic::Code::DeadlineExceeded, "WAIT_TIMEOUT");

    let state = describe(&mut c, R).await;
    assert_eq!(state.waiters, 0);
    assert_eq!(state.holder.expect("holder").lease_id, holder.lease_id);
}

/// Four worker threads, each running `fencepostctl` processes: acquire (waiting), three single-line
/// appends, release; five rounds each. Exclusion means every lease's lines are contiguous.
#[tokio::test]
async fn concurrent_client_processes_hold_the_lease_one_at_a_time() {
    const R: &str = "mutex/shared.jsonl";
    const WORKERS: u64 = 4;
    const ROUNDS: u64 = 5;
    const LINES: u64 = 3;
    let server = Server::start(ServerOpts::default());

    let workers: Vec<_> = (0..WORKERS)
        .map(|worker| {
            let endpoint = server.endpoint().to_owned();
            tokio::task::spawn_blocking(move || {
                let mut tokens = Vec::new();
                for round in 0..ROUNDS {
                    let lease = ctl_acquire(&endpoint, R, &["--wait", "60s"]);
                    for line in 0..LINES {
                        let entry =
                            format!(r#"{{"worker":{worker},"round":{round},"line":{line}}}"#);
                        let out = ctl_append(&endpoint, &lease, lease.token, entry.as_bytes());
                        ctl_object(&out);
                    }
                    assert!(ctl_release(&endpoint, &lease).status.success());
                    tokens.push((lease.token, worker, round));
                }
                tokens
            })
        })
        .collect();
    let mut granted = BTreeSet::new();
    for worker in workers {
        granted.extend(worker.await.expect("worker thread"));
    }

    let mut c = server.grpc().await;
    let entries = read_all(&mut c, R).await;
    assert_eq!(
        entries.len() as u64,
        WORKERS * ROUNDS * LINES,
        "no line lost"
    );
    let mut seen = BTreeSet::new();
    let mut previous = 0;
    for (run, chunk) in entries.chunks(LINES as usize).enumerate() {
        let token = chunk[0].token;
        assert!(
            token > previous,
            "lease {run}: token {token} after {previous}"
        );
        previous = token;
        let first: serde_json::Value = serde_json::from_slice(&chunk[0].data).expect("json");
        let (worker, round) = (first["worker"].as_u64(), first["round"].as_u64());
        for (line, entry) in chunk.iter().enumerate() {
            let value: serde_json::Value = serde_json::from_slice(&entry.data).expect("json");
            assert_eq!(entry.token, token, "lease {run}: lines are contiguous");
            assert_eq!(
                (value["worker"].as_u64(), value["round"].as_u64()),
                (worker, round)
            );
            assert_eq!(value["line"].as_u64(), Some(line as u64));
        }
        let key = (token, worker.expect("worker"), round.expect("round"));
        assert!(
            granted.contains(&key),
            "{key:?} is the token that worker got"
        );
        seen.insert(key);
    }
    assert_eq!(seen, granted, "every lease wrote exactly its lines");
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.seq, i as u64 + 1);
    }
    let file = jsonl(entries.iter().map(|e| &e.data));
    assert_eq!(server.file_bytes(R), file);
}

#[tokio::test]
async fn append_and_release_hands_the_lease_on_while_its_batch_is_made_durable() {
    const R: &str = "queue/handover.jsonl";
    // Every WAL fsync takes 2.5 s, so the order of what follows is plain to see.
    let server = Server::start(ServerOpts::default().failpoints("wal-sync=sleep(2500)"));
    let mut c = server.grpc().await;
    let holder = acquire(&mut c, R, 30_000).await;
    let waiter = spawn_acquire(&c, R, owner("next"), 30_000, 60_000);
    wait_for_waiters(&c, R, 1).await;

    let mut a = c.clone();
    let released = tokio::spawn({
        let holder = holder.clone();
        async move {
            a.append(proto::v1::AppendRequest {
                resource: holder.resource.clone(),
                lease_id: holder.lease_id.clone(),
                token: holder.token,
                entries: vec![br#"{"n":1}"#.to_vec(), br#"{"n":2}"#.to_vec()],
                release: true,
                ..Default::default()
            })
            .await
            .map(tonic::Response::into_inner)
        }
    });
    let granted = waiter.await.expect("waiter task").expect("granted");
    // The waiter got the lease while the holder's batch was still being made durable...
    assert!(
        !released.is_finished(),
        "the append was answered before the next waiter was granted"
    );
    let next = granted.lease.expect("lease");
    assert!(next.token > holder.token);
    // ...and its grant's head already counts that batch.
    let head = granted.head.expect("head");
    assert_eq!((head.next_seq, head.epoch), (3, 1));

    // A read waits for the batch, and the holder is answered once it is durable.
    let seen = read_all(&mut c, R).await;
    assert_eq!(seen.len(), 2);
    let appended = released.await.expect("append task").expect("appended");
    assert_eq!((appended.first_seq, appended.last_seq), (1, 2));
    // The old token is fenced off; the new holder appends after the batch.
    let stale = append(&mut c, &holder, &[r#"{"late":true}"#]).await;
    assert_rejected(stale, Code::FailedPrecondition, "LEASE_RELEASED");
    let after = append(&mut c, &next, &[r#"{"n":3}"#])
        .await
        .expect("append");
    assert_eq!(after.first_seq, 3);
    assert_eq!(
        server.file_bytes(R),
        jsonl([r#"{"n":1}"#, r#"{"n":2}"#, r#"{"n":3}"#])
    );
}
