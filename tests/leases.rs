//! Lease life: grants, keepalives, expiry, release outcomes, forced release and request checks.

mod common;

use std::time::{Duration, Instant};

use common::rpc::*;
use common::*;
use fencepost as proto;
use proto::v1::{
    AcquireRequest, KeepAliveRequest, KeepAliveResponse, LeaseEnd, ReleaseOutcome, ReleaseRequest,
    RenewRequest, WatchEventKind,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

async fn next_reply(replies: &mut Streaming<KeepAliveResponse>) -> KeepAliveResponse {
    tokio::time::timeout(WAIT, replies.message())
        .await
        .expect("keepalive reply in time")
        .expect("keepalive stream failed")
        .expect("keepalive stream ended")
}

/// Opens a KeepAlive stream whose first message is `first` (sent before the call, so a server
/// that waits for a message before answering headers cannot deadlock us).
async fn keepalive(
    c: &mut Client,
    first: Vec<String>,
) -> (mpsc::Sender<KeepAliveRequest>, Streaming<KeepAliveResponse>) {
    let (tx, rx) = mpsc::channel(8);
    tx.send(KeepAliveRequest { lease_ids: first })
        .await
        .expect("queue");
    let replies = c
        .keep_alive(ReceiverStream::new(rx))
        .await
        .expect("keepalive")
        .into_inner();
    (tx, replies)
}

fn renew_request(resource: &str, lease_id: &str) -> RenewRequest {
    RenewRequest {
        resource: resource.to_owned(),
        lease_id: lease_id.to_owned(),
    }
}

#[tokio::test]
async fn a_keepalive_stream_holds_a_lease_past_several_ttls() {
    const R: &str = "leases/kept.jsonl";
    const TTL_MS: u64 = 1_000;
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, TTL_MS).await;
    assert_eq!(lease.ttl_ms, TTL_MS);

    let (tx, mut replies) = keepalive(&mut c, Vec::new()).await;
    assert!(
        next_reply(&mut replies).await.leases.is_empty(),
        "a ping gets an empty status list"
    );

    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    while started.elapsed() < Duration::from_millis(4 * TTL_MS) {
        tick.tick().await;
        let ids = vec![lease.lease_id.clone()];
        tx.send(KeepAliveRequest { lease_ids: ids })
            .await
            .expect("send");
        let reply = next_reply(&mut replies).await;
        assert_eq!(reply.leases.len(), 1, "{reply:?}");
        let status = &reply.leases[0];
        assert_eq!(status.lease_id, lease.lease_id);
        assert!(status.alive, "lease lost while kept alive: {status:?}");
        assert!(status.ttl_remaining_ms > 0 && status.ttl_remaining_ms <= TTL_MS);
    }

    append(&mut c, &lease, &[r#"{"still":"mine"}"#])
        .await
        .expect("append after four TTLs of keepalives");
    let state = describe(&mut c, R).await;
    let holder = state.holder.expect("still held");
    assert_eq!(
        (holder.lease_id, holder.token),
        (lease.lease_id.clone(), lease.token)
    );
    let renewed = c
        .renew(renew_request(R, &lease.lease_id))
        .await
        .expect("renew");
    assert!(renewed.into_inner().ttl_remaining_ms > 0);
}

#[tokio::test]
async fn a_keepalive_message_naming_too_many_leases_ends_its_stream_only() {
    const R: &str = "leases/bounded-keepalive.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    let (ok_tx, mut ok_replies) = keepalive(&mut c, vec![lease.lease_id.clone()]).await;
    assert!(next_reply(&mut ok_replies).await.leases[0].alive);

    let too_many = vec![lease.lease_id.clone(); fencepost::MAX_KEEPALIVE_IDS + 1];
    let (_tx, mut replies) = keepalive(&mut c, too_many).await;
    let status = tokio::time::timeout(WAIT, replies.message())
        .await
        .expect("answered in time")
        .expect_err("the stream ends with an error");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("10001 leases in one message; the limit is 10000"),
        "{status:?}"
    );

    // The limit itself is fine, and the other stream and the lease are untouched.
    let (_at_limit_tx, mut at_limit) = keepalive(
        &mut c,
        vec![lease.lease_id.clone(); fencepost::MAX_KEEPALIVE_IDS],
    )
    .await;
    assert_eq!(
        next_reply(&mut at_limit).await.leases.len(),
        fencepost::MAX_KEEPALIVE_IDS
    );
    ok_tx
        .send(KeepAliveRequest {
            lease_ids: vec![lease.lease_id.clone()],
        })
        .await
        .expect("queue");
    assert!(next_reply(&mut ok_replies).await.leases[0].alive);
}

#[tokio::test]
async fn a_keepalive_stream_is_told_at_once_when_its_lease_is_force_released() {
    const R: &str = "leases/forced.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    let (_tx, mut replies) = keepalive(&mut c, vec![lease.lease_id.clone()]).await;
    assert!(next_reply(&mut replies).await.leases[0].alive);

    let forced = c
        .release(ReleaseRequest {
            resource: R.to_owned(),
            lease_id: String::new(),
            force: true,
        })
        .await
        .expect("forced release")
        .into_inner();
    assert_eq!(forced.outcome(), ReleaseOutcome::Released);
    assert_eq!(forced.lease_id, lease.lease_id);

    let pushed = next_reply(&mut replies).await;
    assert_eq!(pushed.leases.len(), 1, "{pushed:?}");
    assert_eq!(pushed.leases[0].lease_id, lease.lease_id);
    assert!(!pushed.leases[0].alive);
    assert_eq!(pushed.leases[0].ended(), LeaseEnd::Forced);

    assert_eq!(release(&mut c, &lease).await, ReleaseOutcome::AlreadyForced);
    assert!(describe(&mut c, R).await.holder.is_none());
}

#[tokio::test]
async fn a_lease_without_keepalive_expires_and_the_next_waiter_gets_a_higher_token() {
    const R: &str = "leases/expiring.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let mut events = watch(&mut c, R, false).await;
    let first = acquire(&mut c, R, 500).await;
    let next_owner = owner("next");
    let next = spawn_acquire(&c, R, next_owner.clone(), 30_000, 60_000);

    let granted = next_event(&mut events).await;
    assert_eq!(granted.kind(), WatchEventKind::Granted);
    assert_eq!(
        (granted.lease_id.as_str(), granted.token),
        (first.lease_id.as_str(), first.token)
    );
    let expired = next_event(&mut events).await;
    assert_eq!(expired.kind(), WatchEventKind::Expired);
    assert_eq!(expired.lease_id, first.lease_id);
    let regranted = next_event(&mut events).await;
    assert_eq!(regranted.kind(), WatchEventKind::Granted);

    let lease = tokio::time::timeout(WAIT, next)
        .await
        .expect("the waiter is granted once the first lease expires")
        .expect("task")
        .expect("acquire")
        .lease
        .expect("lease");
    assert!(
        lease.token > first.token,
        "{} > {}",
        lease.token,
        first.token
    );
    assert_eq!(lease.owner.expect("owner").client_id, next_owner.client_id);
    assert_eq!(
        (regranted.lease_id, regranted.token),
        (lease.lease_id, lease.token)
    );

    let renewed = c.renew(renew_request(R, &first.lease_id)).await;
    assert_rejected(renewed, Code::FailedPrecondition, "LEASE_EXPIRED");
    assert_eq!(
        release(&mut c, &first).await,
        ReleaseOutcome::AlreadyExpired
    );
}

#[tokio::test]
async fn releasing_an_ended_lease_reports_what_happened_to_it() {
    const R: &str = "leases/released.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    assert_eq!(release(&mut c, &lease).await, ReleaseOutcome::Released);
    assert_eq!(
        release(&mut c, &lease).await,
        ReleaseOutcome::AlreadyReleased
    );

    let renewed = c.renew(renew_request(R, &lease.lease_id)).await;
    assert_rejected(renewed, Code::FailedPrecondition, "LEASE_RELEASED");
    let forced = c
        .release(ReleaseRequest {
            resource: R.to_owned(),
            lease_id: String::new(),
            force: true,
        })
        .await
        .expect("forced release of a free resource")
        .into_inner();
    assert_eq!(forced.outcome(), ReleaseOutcome::NotHeld);

    let again = acquire(&mut c, R, 30_000).await;
    assert!(again.token > lease.token);
    assert_eq!(describe(&mut c, R).await.token, again.token);
}

#[tokio::test]
async fn a_retried_acquire_with_the_same_idempotency_key_gets_the_same_lease() {
    const R: &str = "leases/retried.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let request = AcquireRequest {
        resource: R.to_owned(),
        owner: Some(owner("retrying")),
        ttl_ms: 30_000,
        wait_ms: 1_000,
        idempotency_key: "attempt-1".to_owned(),
    };
    let first = c
        .acquire(request.clone())
        .await
        .expect("acquire")
        .into_inner();
    let retry = c
        .acquire(request)
        .await
        .expect("retried acquire")
        .into_inner();
    let (first, retry) = (first.lease.expect("lease"), retry.lease.expect("lease"));
    assert_eq!(
        (&retry.lease_id, retry.token),
        (&first.lease_id, first.token)
    );
    let state = describe(&mut c, R).await;
    assert_eq!((state.token, state.waiters), (first.token, 0));
}

#[tokio::test]
async fn a_retried_acquire_takes_the_place_of_its_original_still_waiting() {
    const R: &str = "leases/retried-waiting.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let holder = acquire(&mut c, R, 30_000).await;
    let request = AcquireRequest {
        resource: R.to_owned(),
        owner: Some(owner("retrying")),
        ttl_ms: 30_000,
        wait_ms: 60_000,
        idempotency_key: "attempt-1".to_owned(),
    };
    // The original waits on one connection; the client retries on another, as after a
    // connection that died without the server noticing.
    let (mut first, mut second) = (server.grpc().await, server.grpc().await);
    let sent = request.clone();
    let original = tokio::spawn(async move { first.acquire(sent).await });
    wait_for_waiters(&c, R, 1).await;
    let retry = tokio::spawn(async move { second.acquire(request).await });
    let superseded = tokio::time::timeout(WAIT, original)
        .await
        .expect("the original is answered once the retry arrives")
        .expect("original task")
        .expect_err("the original is superseded");
    assert_eq!(superseded.code(), Code::Aborted);
    assert_eq!(error_reason(&superseded).as_deref(), Some("SUPERSEDED"));
    assert!(
        superseded.message().contains("the retry gets the lease"),
        "{}",
        superseded.message()
    );
    // The retry waits in the original's place: one waiter, not two.
    assert_eq!(describe(&mut c, R).await.waiters, 1);
    assert_eq!(release(&mut c, &holder).await, ReleaseOutcome::Released);
    let lease = tokio::time::timeout(WAIT, retry)
        .await
        .expect("the retry is granted after the release")
        .expect("retry task")
        .expect("retry granted")
        .into_inner()
        .lease
        .expect("lease");
    assert!(lease.token > holder.token);
    let state = describe(&mut c, R).await;
    assert_eq!(state.holder.expect("holder").lease_id, lease.lease_id);
}

#[tokio::test]
async fn acquire_without_a_client_id_or_with_a_ttl_over_the_maximum_is_refused() {
    const R: &str = "leases/checked.jsonl";
    let opts = ServerOpts::default()
        .arg("--default-ttl", "2s")
        .arg("--max-ttl", "5s");
    let server = Server::start(opts);
    let mut c = server.grpc().await;

    let no_owner = AcquireRequest {
        resource: R.to_owned(),
        ..Default::default()
    };
    assert_rejected(
        c.acquire(no_owner).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    let mut anonymous = owner("anonymous");
    anonymous.client_id.clear();
    let result = try_acquire(&mut c, R, anonymous, 1_000, 0).await;
    assert_rejected(result, Code::InvalidArgument, "INVALID_ARGUMENT");
    let result = try_acquire(&mut c, R, owner("greedy"), 5_001, 0).await;
    let status = assert_rejected(result, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(
        error_metadata(&status, "field").is_some(),
        "names the field: {status:?}"
    );
    assert!(
        describe(&mut c, R).await.holder.is_none(),
        "refusals grant nothing"
    );

    let defaulted = acquire(&mut c, R, 0).await;
    assert_eq!(defaulted.ttl_ms, 2_000, "ttl 0 means the server default");
    release(&mut c, &defaulted).await;
    assert_eq!(
        acquire(&mut c, R, 5_000).await.ttl_ms,
        5_000,
        "the maximum itself is allowed"
    );
}
