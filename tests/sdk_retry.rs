//! Retries against the real server through a proxy that throws a reply away and cuts the
//! connection: the SDK retries with the same request id and the entry is appended exactly once.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::time::Duration;

use common::{Server, ServerOpts, WAIT};
use fencepost_client::proto::v1::{WatchEvent, WatchEventKind};
use fencepost_client::{Client, ResponseStream, WatchTarget};
use proxy::Proxy;
use tokio::time::timeout;
use tokio_stream::StreamExt;

const R: &str = "agents/main/sessions/sdk-retry.jsonl";
const LINE: &str = r#"{"role":"assistant","text":"exactly once"}"#;

async fn next_of_kind(events: &mut ResponseStream<WatchEvent>, kind: WatchEventKind) -> WatchEvent {
    timeout(WAIT, async {
        while let Some(event) = events.next().await {
            let event = event.expect("watch event");
            if event.kind() == kind {
                return event;
            }
        }
        panic!("the watch ended before a {kind:?} event");
    })
    .await
    .expect("watch event in time")
}

/// A client through the proxy, and a direct watch of `R` to see what the server really did.
async fn setup(server: &Server) -> (Proxy, Client, ResponseStream<WatchEvent>) {
    let proxy = Proxy::start(server.endpoint()).await;
    let client = Client::connect(&proxy.endpoint())
        .await
        .expect("connect via proxy");
    let observer = Client::connect(server.endpoint()).await.expect("connect");
    let events = observer
        .watch(WatchTarget::Resource(R.to_owned()))
        .await
        .expect("watch");
    (proxy, client, events)
}

#[tokio::test]
async fn an_append_whose_reply_was_lost_is_retried_without_a_duplicate() {
    let server = Server::start(ServerOpts::default());
    let (proxy, client, mut events) = setup(&server).await;
    let lease = client
        .lease(R)
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();

    proxy.drop_replies();
    let append = tokio::spawn(async move {
        let result = lease.append([LINE]).await;
        (lease, result)
    });
    // The server made the batch durable; its reply is being thrown away. Now break the
    // connection under the waiting call.
    let appended = next_of_kind(&mut events, WatchEventKind::Appended).await;
    proxy.cut();
    let (lease, result) = timeout(WAIT, append)
        .await
        .expect("append returned")
        .unwrap();

    let done = result.expect("the retry returns the original result");
    assert_eq!(
        (done.first_seq, done.last_seq),
        (appended.first_seq, appended.last_seq)
    );
    assert_eq!(server.file_bytes(R), common::jsonl([LINE]));
    assert!(
        proxy.accepted() >= 2,
        "the retry went over a new connection"
    );
    assert_eq!(lease.head().next_seq, 2);
    lease.release().await.unwrap();
}

#[tokio::test]
async fn an_append_once_whose_reply_was_lost_is_retried_without_a_duplicate() {
    let server = Server::start(ServerOpts::default());
    let (proxy, client, mut events) = setup(&server).await;

    proxy.drop_replies();
    let append = tokio::spawn(async move {
        client
            .append_once(R, [LINE])
            .wait(Duration::from_secs(5))
            .await
    });
    let appended = next_of_kind(&mut events, WatchEventKind::Appended).await;
    proxy.cut();
    let done = timeout(WAIT, append)
        .await
        .expect("append-once returned")
        .unwrap()
        .expect("the retry returns the original result");

    assert_eq!(done.first_seq, appended.first_seq);
    assert_eq!(done.token, appended.token);
    assert_eq!(server.file_bytes(R), common::jsonl([LINE]));
    assert!(
        proxy.accepted() >= 2,
        "the retry went over a new connection"
    );
}

#[tokio::test]
async fn a_fencing_rejection_comes_back_at_once_as_a_non_transient_error() {
    let server = Server::start(ServerOpts::default());
    let client = Client::connect(server.endpoint()).await.unwrap();
    let grant = client
        .acquire(R, fencepost_client::AcquireOptions::default())
        .await
        .unwrap();
    let lease = grant.lease.unwrap();
    client.force_release(R).await.unwrap();

    // The rejection comes back typed, as a fencing error the retry loop never retries.
    let err = timeout(
        Duration::from_secs(5),
        client.append(R, lease.lease_id, lease.token, [LINE], None),
    )
    .await
    .expect("answered")
    .unwrap_err();
    assert!(err.is_fencing() && !err.is_transient(), "{err:?}");
    assert_eq!(err.reason(), Some("LEASE_RELEASED"));
    assert!(server.file_bytes(R).is_empty());
}
