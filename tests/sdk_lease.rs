//! The SDK's kept-alive lease against the real server: how fast a loss is observed (forced
//! release, paused keepalives, server restart), jeopardy before loss, appends through the lease,
//! and a dropped lease freeing the resource.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::{Duration, Instant};

use common::{Server, ServerOpts, WAIT};
use fencepost_client::proto::v1::WatchEventKind;
use fencepost_client::{Client, Error, LeaseHealth, LossReason, WatchTarget};
use proxy::Proxy;
use tokio::time::timeout;
use tokio_stream::StreamExt;

const R: &str = "agents/main/sessions/sdk-lease.jsonl";

async fn client(endpoint: &str, name: &str) -> Client {
    Client::builder(endpoint)
        .name(name)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connect to {endpoint}: {e}"))
}

#[tokio::test]
async fn a_forced_release_is_observed_as_released_within_a_bound() {
    let server = Server::start(ServerOpts::default());
    let holder = client(server.endpoint(), "holder").await;
    let operator = client(server.endpoint(), "operator").await;
    let lease = holder
        .lease(R)
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let lost = lease.lost();
    let token = lease.loss_token();

    let forced_at = Instant::now();
    operator.force_release(R).await.unwrap();
    let reason = timeout(WAIT, lost).await.expect("loss observed");
    let delay = forced_at.elapsed();
    eprintln!("MEASURED forced release -> lease.lost(): {delay:?} (TTL 30s)");

    assert_eq!(reason, LossReason::Released);
    assert!(token.is_cancelled());
    assert!(delay < Duration::from_secs(5), "took {delay:?}");
    assert_eq!(lease.health(), LeaseHealth::Lost(LossReason::Released));
    let refused = lease.append([r#"{"late":true}"#]).await.unwrap_err();
    assert_eq!(
        refused,
        Error::Lost {
            reason: LossReason::Released
        }
    );
}

#[tokio::test]
async fn paused_keepalives_bring_jeopardy_then_a_loss_no_later_than_the_server_expiry() {
    let server = Server::start(ServerOpts::default());
    let holder = client(server.endpoint(), "holder").await;
    let observer = client(server.endpoint(), "observer").await;
    let mut events = observer
        .watch(WatchTarget::Resource(R.to_owned()))
        .await
        .unwrap();
    let ttl = Duration::from_secs(2);
    let lease = holder.lease(R).ttl(ttl).acquire().await.unwrap();
    let jeopardy = lease.jeopardy();
    let lost = lease.lost();

    let paused_at = Instant::now();
    holder.pause_keepalives(true);
    let health = timeout(WAIT, jeopardy).await.expect("jeopardy observed");
    let jeopardy_after = paused_at.elapsed();
    let reason = timeout(WAIT, lost).await.expect("loss observed");
    let lost_after = paused_at.elapsed();
    let expired_after = timeout(WAIT, async {
        while let Some(event) = events.next().await {
            if event.expect("watch event").kind() == WatchEventKind::Expired {
                return paused_at.elapsed();
            }
        }
        panic!("the watch ended before the lease expired");
    })
    .await
    .expect("server expiry observed");
    eprintln!(
        "MEASURED keepalives paused (TTL {ttl:?}): jeopardy after {jeopardy_after:?}, \
         lease.lost() after {lost_after:?}, server expiry seen after {expired_after:?} \
         (client ahead of server by {:?})",
        expired_after.saturating_sub(lost_after)
    );

    assert_eq!(health, LeaseHealth::Jeopardy);
    // Normally the client's own deadline fires first (ConnectionLost); on a starved machine the
    // server's push can arrive first (Expired). The bound below is what matters.
    assert!(
        matches!(reason, LossReason::ConnectionLost | LossReason::Expired),
        "{reason:?}"
    );
    assert!(jeopardy_after <= lost_after);
    // The client's deadline counts from when renewals were sent, so it gives up first; the
    // slack only covers the watch event's own delivery.
    assert!(
        lost_after <= expired_after + Duration::from_secs(1),
        "client lost at {lost_after:?}, server expired at {expired_after:?}"
    );
    assert!(lost_after < ttl + Duration::from_secs(2), "{lost_after:?}");
    holder.pause_keepalives(false);
}

#[tokio::test]
async fn a_server_restart_is_observed_as_server_restarted() {
    let mut server = Server::start(ServerOpts::default());
    let proxy = Proxy::start(server.endpoint()).await;
    let holder = client(&proxy.endpoint(), "holder").await;
    let lease = holder
        .lease(R)
        .ttl(Duration::from_secs(20))
        .acquire()
        .await
        .unwrap();
    let lost = lease.lost();

    let restarted_at = Instant::now();
    server.restart();
    proxy.set_upstream(server.endpoint());
    let reason = timeout(WAIT, lost).await.expect("loss observed");
    let delay = restarted_at.elapsed();
    eprintln!("MEASURED server kill -9 + restart -> lease.lost(): {delay:?} (TTL 20s)");

    assert_eq!(reason, LossReason::ServerRestarted);
    assert!(delay < Duration::from_secs(10), "took {delay:?}");
}

#[tokio::test]
async fn a_dropped_lease_frees_the_resource_well_before_its_ttl() {
    let server = Server::start(ServerOpts::default());
    let holder = client(server.endpoint(), "holder").await;
    let waiter = client(server.endpoint(), "waiter").await;
    let lease = holder
        .lease(R)
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    let queued = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.lease(R).wait(WAIT).acquire().await }
    });
    common::rpc::wait_for_waiters(&server.grpc().await, R, 1).await;

    let dropped_at = Instant::now();
    drop(lease);
    let granted = timeout(WAIT, queued)
        .await
        .expect("waiter granted in time")
        .unwrap()
        .expect("waiter granted");
    let delay = dropped_at.elapsed();
    eprintln!("MEASURED drop(lease) -> next waiter granted: {delay:?} (TTL 30s)");

    assert!(delay < Duration::from_secs(5), "took {delay:?}");
    assert_eq!(granted.owner().name, "waiter");
    granted.release().await.unwrap();
}

#[tokio::test]
async fn appends_through_a_lease_move_its_head_and_compare_against_its_epoch() {
    let server = Server::start(ServerOpts::default());
    let holder = client(server.endpoint(), "holder").await;
    let lease = holder.lease(R).acquire().await.unwrap();
    assert_eq!((lease.epoch(), lease.head().next_seq), (0, 1));

    let done = lease
        .append([serde_json::json!({"role": "user", "text": "hi"})])
        .await
        .unwrap();
    assert_eq!(
        (done.first_seq, lease.epoch(), lease.head().next_seq),
        (1, 1, 2)
    );
    lease
        .append_expecting(1, [r#"{"role":"assistant","text":"hello"}"#])
        .await
        .unwrap();
    let stale = lease.append_expecting(1, ["{}"]).await.unwrap_err();
    assert!(matches!(stale, Error::HeadMismatch { .. }), "{stale:?}");
    // A head mismatch is not a loss.
    assert_eq!(lease.health(), LeaseHealth::Healthy);
    assert_eq!(
        server.file_bytes(R),
        common::jsonl([
            r#"{"role":"user","text":"hi"}"#,
            r#"{"role":"assistant","text":"hello"}"#
        ])
    );
    lease.release().await.unwrap();
    assert!(holder.describe(R).await.unwrap().holder.is_none());
}

#[tokio::test]
async fn a_lease_granted_after_a_queue_wait_longer_than_its_ttl_starts_healthy() {
    let server = Server::start(ServerOpts::default());
    let holder = client(server.endpoint(), "holder").await;
    let waiter = client(server.endpoint(), "waiter").await;
    let held = holder
        .lease(R)
        .ttl(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap();
    let queued = tokio::spawn({
        let waiter = waiter.clone();
        async move {
            waiter
                .lease(R)
                .ttl(Duration::from_secs(1))
                .wait(WAIT)
                .acquire()
                .await
        }
    });
    common::rpc::wait_for_waiters(&server.grpc().await, R, 1).await;
    // The holder stops renewing; the server hands the resource over once its 2s TTL ran out,
    // after the waiter has queued for longer than its own 1s TTL.
    holder.pause_keepalives(true);
    let lease = timeout(WAIT, queued)
        .await
        .expect("granted in time")
        .unwrap()
        .expect("granted");

    // Had the client counted the TTL from when it asked, the lease would be dead on arrival.
    lease.append([r#"{"after":"wait"}"#]).await.unwrap();
    assert_eq!(lease.health(), LeaseHealth::Healthy);
    let held_lost = timeout(WAIT, held.lost()).await.expect("holder's loss");
    // The client's own deadline normally fires first; under load the server's expiry push can
    // win the race. Either way the holder knows.
    assert!(
        matches!(held_lost, LossReason::ConnectionLost | LossReason::Expired),
        "{held_lost:?}"
    );
    lease.release().await.unwrap();
}

#[tokio::test]
async fn append_and_release_appends_then_hands_the_resource_on_and_a_refused_batch_still_frees_it()
{
    let server = Server::start(ServerOpts::default());
    let holder = client(server.endpoint(), "holder").await;
    let waiter = client(server.endpoint(), "waiter").await;
    // Leases that outlive the test's waits: only a release can free the resource in time.
    let ttl = Duration::from_secs(60);
    let prompt = Duration::from_secs(5);
    let lease = holder.lease(R).ttl(ttl).acquire().await.unwrap();
    let queued = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.lease(R).ttl(ttl).wait(prompt).acquire().await }
    });
    common::rpc::wait_for_waiters(&server.grpc().await, R, 1).await;

    let done = lease
        .append_and_release([r#"{"turn":1}"#, r#"{"turn":2}"#])
        .await
        .unwrap();
    assert_eq!((done.first_seq, done.last_seq), (1, 2));
    let next = timeout(prompt, queued).await.unwrap().unwrap().unwrap();
    assert_eq!((next.epoch(), next.head().next_seq), (1, 3));

    // A batch the server refuses leaves the lease held; the SDK then releases it as if dropped.
    let bad = next.append_and_release(["not json"]).await.unwrap_err();
    assert!(matches!(bad, Error::InvalidInput { .. }), "{bad:?}");
    let again = timeout(prompt, holder.lease(R).wait(prompt).acquire())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.head().next_seq, 3);
    assert_eq!(
        server.file_bytes(R),
        common::jsonl([r#"{"turn":1}"#, r#"{"turn":2}"#])
    );
}
