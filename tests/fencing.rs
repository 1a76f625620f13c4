//! Fencing: an append is accepted only under a live lease holding the resource's current token
//! (and the expected head, when given); every rejection leaves the file byte-for-byte unchanged.

mod common;

use std::io::Write;

use common::rpc::*;
use common::*;
use fencepost as proto;
use proto::v1::{AppendRequest, Lease, ReleaseRequest, WatchEventKind};
use tonic::Code;

/// The file and the write epoch, to compare before and after a rejected append.
async fn snapshot(server: &Server, c: &mut Client, resource: &str) -> (Vec<u8>, u64) {
    let head = describe(c, resource).await.head.expect("head");
    (server.file_bytes(resource), head.epoch)
}

/// Acquires with a short TTL, appends one line, and returns the lease once a watch saw it expire.
async fn expired_lease(c: &mut Client, resource: &str) -> Lease {
    let mut events = watch(c, resource, false).await;
    let lease = acquire(c, resource, 1_000).await;
    append(c, &lease, &[r#"{"n":1}"#])
        .await
        .expect("append while live");
    loop {
        let event = next_event(&mut events).await;
        if event.kind() == WatchEventKind::Expired {
            assert_eq!(event.lease_id, lease.lease_id);
            return lease;
        }
    }
}

#[tokio::test]
async fn stale_token_append_is_rejected_after_release() {
    const R: &str = "fence/released.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#])
        .await
        .expect("append");
    release(&mut c, &lease).await;
    let before = snapshot(&server, &mut c, R).await;

    let late = append(&mut c, &lease, &[r#"{"n":2}"#]).await;
    assert_rejected(late, Code::FailedPrecondition, "LEASE_RELEASED");
    assert_eq!(snapshot(&server, &mut c, R).await, before);
    assert_eq!(server.file_bytes(R), jsonl([r#"{"n":1}"#]));
}

#[tokio::test]
async fn stale_token_append_is_rejected_after_expiry() {
    const R: &str = "fence/expired.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = expired_lease(&mut c, R).await;
    let before = snapshot(&server, &mut c, R).await;

    let late = append(&mut c, &lease, &[r#"{"n":2}"#]).await;
    assert_rejected(late, Code::FailedPrecondition, "LEASE_EXPIRED");
    assert_eq!(snapshot(&server, &mut c, R).await, before);
    assert_eq!(server.file_bytes(R), jsonl([r#"{"n":1}"#]));
}

#[tokio::test]
async fn stale_token_append_is_rejected_after_a_newer_grant() {
    const R: &str = "fence/superseded.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let old = expired_lease(&mut c, R).await;
    let new = acquire(&mut c, R, 30_000).await;
    assert!(new.token > old.token);
    let before = snapshot(&server, &mut c, R).await;

    // The old holder with its own lease: it has ended, and its token is stale.
    let late = append(&mut c, &old, &[r#"{"n":2}"#]).await;
    let status = late.expect_err("old lease must not append");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let reason = error_reason(&status);
    assert!(
        matches!(reason.as_deref(), Some("STALE_TOKEN" | "LEASE_EXPIRED")),
        "{status:?}"
    );

    // The live lease presented with the old token: the token alone is stale.
    let entries = vec![br#"{"n":3}"#.to_vec()];
    let forged = append_raw(&mut c, R, &new.lease_id, old.token, entries).await;
    let status = assert_rejected(forged, Code::FailedPrecondition, "STALE_TOKEN");
    assert_eq!(
        error_metadata(&status, "presented"),
        Some(old.token.to_string())
    );
    assert_eq!(
        error_metadata(&status, "current"),
        Some(new.token.to_string())
    );
    assert_eq!(snapshot(&server, &mut c, R).await, before);

    let ok = append(&mut c, &new, &[r#"{"n":4}"#])
        .await
        .expect("new holder appends");
    assert_eq!((ok.first_seq, ok.last_seq), (2, 2));
    let entries = read_all(&mut c, R).await;
    let tokens: Vec<u64> = entries.iter().map(|e| e.token).collect();
    assert_eq!(tokens, [old.token, new.token]);
}

#[tokio::test]
async fn append_after_a_forced_release_is_rejected_as_released() {
    const R: &str = "fence/forced.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#])
        .await
        .expect("append");
    let forced = ReleaseRequest {
        resource: R.to_owned(),
        lease_id: String::new(),
        force: true,
    };
    c.release(forced).await.expect("forced release");
    let before = snapshot(&server, &mut c, R).await;

    let late = append(&mut c, &lease, &[r#"{"n":2}"#]).await;
    let status = assert_rejected(late, Code::FailedPrecondition, "LEASE_RELEASED");
    assert!(
        error_metadata(&status, "how").is_some(),
        "says how it was released: {status:?}"
    );
    assert_eq!(snapshot(&server, &mut c, R).await, before);
}

#[tokio::test]
async fn append_with_a_lease_on_another_resource_is_rejected_as_wrong_resource() {
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let mine = acquire(&mut c, "fence/mine.jsonl", 30_000).await;
    let theirs = acquire(&mut c, "fence/theirs.jsonl", 30_000).await;

    let entries = vec![br#"{"n":1}"#.to_vec()];
    let result = append_raw(
        &mut c,
        &theirs.resource,
        &mine.lease_id,
        mine.token,
        entries,
    )
    .await;
    assert_rejected(result, Code::FailedPrecondition, "WRONG_RESOURCE");
    assert!(server.file_bytes(&theirs.resource).is_empty());
    assert_eq!(
        describe(&mut c, &theirs.resource)
            .await
            .head
            .expect("head")
            .epoch,
        0
    );
}

#[tokio::test]
async fn append_with_an_unknown_lease_is_not_found() {
    const R: &str = "fence/unknown.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    let entries = vec![br#"{"n":1}"#.to_vec()];
    let result = append_raw(&mut c, R, "no-such-lease", lease.token, entries).await;
    assert_rejected(result, Code::NotFound, "LEASE_NOT_FOUND");
    assert!(server.file_bytes(R).is_empty());
}

#[tokio::test]
async fn compare_and_append_rejects_a_mismatched_expected_epoch() {
    const R: &str = "fence/cas.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    let request = |epoch: u64, line: &str| AppendRequest {
        resource: R.to_owned(),
        lease_id: lease.lease_id.clone(),
        token: lease.token,
        entries: vec![line.as_bytes().to_vec()],
        expected_epoch: Some(epoch),
        request_id: String::new(),
        release: false,
    };
    let first = c
        .append(request(0, r#"{"n":1}"#))
        .await
        .expect("epoch 0 matches");
    assert_eq!(first.into_inner().head.expect("head").epoch, 1);
    let before = snapshot(&server, &mut c, R).await;

    let stale = c.append(request(0, r#"{"n":2}"#)).await;
    assert_rejected(stale, Code::FailedPrecondition, "HEAD_MISMATCH");
    assert_eq!(snapshot(&server, &mut c, R).await, before);
    c.append(request(1, r#"{"n":3}"#))
        .await
        .expect("epoch 1 matches");
    assert_eq!(server.file_bytes(R), jsonl([r#"{"n":1}"#, r#"{"n":3}"#]));
}

#[tokio::test]
async fn a_retried_request_id_returns_the_original_result_and_appends_nothing() {
    const R: &str = "fence/retried.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    let request = AppendRequest {
        resource: R.to_owned(),
        lease_id: lease.lease_id.clone(),
        token: lease.token,
        entries: vec![br#"{"n":1}"#.to_vec(), br#"{"n":2}"#.to_vec()],
        expected_epoch: None,
        request_id: "req-1".to_owned(),
        release: false,
    };
    let first = c
        .append(request.clone())
        .await
        .expect("append")
        .into_inner();
    let retry = c
        .append(request)
        .await
        .expect("retried append")
        .into_inner();
    assert_eq!(retry, first);
    assert_eq!((first.first_seq, first.last_seq), (1, 2));
    assert_eq!(server.file_bytes(R), jsonl([r#"{"n":1}"#, r#"{"n":2}"#]));
    assert_eq!(describe(&mut c, R).await.head.expect("head").epoch, 1);
}

#[tokio::test]
async fn an_externally_modified_file_is_never_appended_to_or_overwritten() {
    const R: &str = "fence/tampered.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#])
        .await
        .expect("append");
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(server.file(R))
        .expect("open session file");
    file.write_all(b"{\"foreign\":true}\n")
        .expect("external write");
    drop(file);
    let tampered = server.file_bytes(R);

    let result = append(&mut c, &lease, &[r#"{"n":2}"#]).await;
    assert_rejected(result, Code::FailedPrecondition, "EXTERNAL_MODIFICATION");
    assert_eq!(
        server.file_bytes(R),
        tampered,
        "foreign bytes are neither adopted nor cut"
    );
    let blocked = describe(&mut c, R).await.blocked;
    assert!(
        blocked.contains("EXTERNAL_MODIFICATION"),
        "Describe says why: {blocked:?}"
    );
}
