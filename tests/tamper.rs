//! Writers that bypass the service: detected at the next operation and after a restart, never
//! overwritten, never adopted silently; `Adopt` is the explicit operator action.

mod common;

use std::io::Write;

use common::rpc::*;
use common::*;
use fencepost::v1::{AdoptRequest, OwnerKind, WatchEventKind};
use tonic::Code;

type Client = fencepost::v1::fencepost_client::FencepostClient<tonic::transport::Channel>;

async fn adopt(
    c: &mut Client,
    resource: &str,
) -> Result<fencepost::v1::AdoptResponse, tonic::Status> {
    c.adopt(AdoptRequest {
        resource: resource.to_owned(),
    })
    .await
    .map(tonic::Response::into_inner)
}

/// A server where `resource` holds one line, `{"n":1}`, and is free again.
async fn written_once(resource: &str) -> (Server, Client) {
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, resource, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#])
        .await
        .expect("append");
    release(&mut c, &lease).await;
    (server, c)
}

/// Microseconds since the Unix epoch: an adopted epoch is at least this, read before adopting.
fn now_micros() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    u64::try_from(since.as_micros()).expect("fits")
}

fn append_externally(server: &Server, resource: &str, bytes: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(server.file(resource))
        .expect("open session file");
    f.write_all(bytes).expect("external write");
}

#[tokio::test]
async fn an_external_append_is_reported_refused_and_adopted_only_on_request() {
    const R: &str = "tamper/echo.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#, r#"{"n":2}"#])
        .await
        .expect("append");
    release(&mut c, &lease).await;

    append_externally(&server, R, b"{\"echo\":true}\n");
    let d = describe(&mut c, R).await;
    assert!(
        d.blocked.starts_with("EXTERNAL_MODIFICATION"),
        "{}",
        d.blocked
    );
    assert!(
        d.blocked.contains("appended: 14 foreign bytes at 16..30"),
        "{}",
        d.blocked
    );

    let lease = acquire(&mut c, R, 30_000).await;
    let refused = append(&mut c, &lease, &[r#"{"n":3}"#]).await;
    assert_rejected(refused, Code::FailedPrecondition, "EXTERNAL_MODIFICATION");
    assert_rejected(
        adopt(&mut c, R).await,
        Code::FailedPrecondition,
        "RESOURCE_BUSY",
    );
    release(&mut c, &lease).await;

    let before = now_micros();
    let adopted = adopt(&mut c, R).await.expect("adopt");
    let head = adopted.head.expect("head");
    assert_eq!((head.next_seq, head.length), (4, 30));
    assert!(head.epoch >= before, "a new epoch: {}", head.epoch);
    assert!(
        adopted.detail.contains("adopted 1 lines"),
        "{}",
        adopted.detail
    );

    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":4}"#])
        .await
        .expect("appends work again");
    let entries = read_all(&mut c, R).await;
    assert_eq!(entries.len(), 4);
    assert_eq!(entries[2].data, br#"{"echo":true}"#);
    assert_eq!(entries[2].owner.as_ref().unwrap().client_id, "operator");
    assert_eq!(entries[2].owner.as_ref().unwrap().kind(), OwnerKind::Other);
    assert_eq!(
        server.file_bytes(R),
        jsonl([r#"{"n":1}"#, r#"{"n":2}"#, r#"{"echo":true}"#, r#"{"n":4}"#])
    );
}

#[tokio::test]
async fn truncation_replacement_and_deletion_are_each_named() {
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    for (r, damage, needle) in [
        ("tamper/truncated.jsonl", "truncate", "truncated"),
        ("tamper/replaced.jsonl", "replace", "replaced"),
        ("tamper/deleted.jsonl", "delete", "deleted"),
    ] {
        let lease = acquire(&mut c, r, 30_000).await;
        append(&mut c, &lease, &[r#"{"n":1}"#, r#"{"n":2}"#])
            .await
            .expect("append");
        let path = server.file(r);
        match damage {
            "truncate" => std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(3)
                .unwrap(),
            "replace" => {
                let tmp = path.with_extension("tmp");
                std::fs::write(&tmp, b"{\"n\":1}\n{\"n\":2}\n").unwrap();
                std::fs::rename(&tmp, &path).unwrap();
            }
            _ => std::fs::remove_file(&path).unwrap(),
        }
        let refused = append(&mut c, &lease, &[r#"{"n":3}"#]).await;
        let status = assert_rejected(refused, Code::FailedPrecondition, "EXTERNAL_MODIFICATION");
        assert!(
            status.message().contains(needle),
            "{r}: {}",
            status.message()
        );
        assert!(describe(&mut c, r).await.blocked.contains(needle), "{r}");
    }
}

#[tokio::test]
async fn an_in_place_edit_made_while_the_server_was_down_is_found_at_start() {
    const R: &str = "tamper/edited.jsonl";
    let mut server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#, r#"{"n":2}"#])
        .await
        .expect("append");
    server.stop();
    let mut bytes = std::fs::read(server.file(R)).unwrap();
    bytes[5] = b'9'; // {"n":9} : same length, different content
    std::fs::write(server.file(R), &bytes).unwrap();
    server.restart();
    let mut c = server.grpc().await;
    let d = describe(&mut c, R).await;
    assert!(
        d.blocked.contains("edited in place: bytes 0..16"),
        "{}",
        d.blocked
    );
    let lease = acquire(&mut c, R, 30_000).await;
    let refused = append(&mut c, &lease, &[r#"{"n":3}"#]).await;
    assert_rejected(refused, Code::FailedPrecondition, "EXTERNAL_MODIFICATION");
    assert_eq!(
        std::fs::read(server.file(R)).unwrap(),
        bytes,
        "foreign bytes are never overwritten"
    );
}

#[tokio::test]
async fn a_partial_foreign_line_is_not_adopted() {
    const R: &str = "tamper/partial.jsonl";
    let (server, mut c) = written_once(R).await;
    append_externally(&server, R, b"{\"half\":");
    let refused = adopt(&mut c, R).await;
    let status = assert_rejected(refused, Code::FailedPrecondition, "EXTERNAL_MODIFICATION");
    assert!(
        status.message().contains("partial line at byte 8"),
        "{}",
        status.message()
    );
    assert_eq!(server.file_bytes(R), b"{\"n\":1}\n{\"half\":");
}

#[tokio::test]
async fn a_deleted_session_file_is_not_adopted_until_it_exists_again() {
    const R: &str = "tamper/deleted.jsonl";
    let (server, mut c) = written_once(R).await;
    std::fs::remove_file(server.file(R)).unwrap();
    let refused = adopt(&mut c, R).await;
    let status = assert_rejected(refused, Code::FailedPrecondition, "EXTERNAL_MODIFICATION");
    assert!(
        status
            .message()
            .contains("is missing, so there is nothing to adopt"),
        "{}",
        status.message()
    );
    // The way out the message names works.
    std::fs::write(server.file(R), b"").unwrap();
    adopt(&mut c, R).await.expect("adopt the empty file");
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":2}"#])
        .await
        .expect("appends work again");
    assert_eq!(server.file_bytes(R), b"{\"n\":2}\n");
}

#[tokio::test]
async fn the_periodic_scan_reports_a_change_on_watch_and_adoption_is_reported_too() {
    const R: &str = "tamper/scanned.jsonl";
    let server = Server::start(ServerOpts::default().arg("--scan-interval", "200ms"));
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#])
        .await
        .expect("append");
    let mut events = watch(&mut c, "tamper/", true).await;
    append_externally(&server, R, b"{\"cron\":1}\n");
    let seen = loop {
        let e = next_event(&mut events).await;
        if e.kind() == WatchEventKind::ExternalModification {
            break e;
        }
    };
    assert_eq!(seen.resource, R);
    assert!(
        seen.detail.contains("appended: 11 foreign bytes at 8..19"),
        "{}",
        seen.detail
    );
    release(&mut c, &lease).await;
    adopt(&mut c, R).await.expect("adopt");
    loop {
        let e = next_event(&mut events).await;
        if e.kind() == WatchEventKind::Adopted {
            assert!(e.detail.contains("adopted 1 lines"), "{}", e.detail);
            break;
        }
    }
}

#[tokio::test]
async fn fencepostctl_adopt_prints_the_new_head_and_what_was_adopted() {
    const R: &str = "tamper/cli.jsonl";
    let (server, mut c) = written_once(R).await;
    append_externally(&server, R, b"{\"ext\":1}\n{\"ext\":2}\n");
    let before = now_micros();
    let out = common::ctl::ctl(server.endpoint(), ["adopt", R], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert!(v["epoch"].as_u64().unwrap() >= before, "a new epoch: {v}");
    assert_eq!(v["head"]["next_seq"], 4);
    assert!(
        v["detail"].as_str().unwrap().contains("adopted 2 lines"),
        "{v}"
    );
    assert_eq!(describe(&mut c, R).await.blocked, "");
}

#[tokio::test]
async fn canary_with_tamper_checks_switched_off_foreign_bytes_are_overwritten() {
    const R: &str = "tamper/canary.jsonl";
    let server = Server::start(ServerOpts::default().failpoints("tamper-check-off=return"));
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#])
        .await
        .expect("append");
    append_externally(&server, R, b"{\"echo\":true}\n");
    let tampered = server.file_bytes(R);
    // Without the guard the append goes through and writes over the foreign line: exactly what
    // the real test's checks (refusal, file unchanged) catch.
    append(&mut c, &lease, &[r#"{"n":2}"#])
        .await
        .expect("accepted with the check off");
    assert_ne!(
        server.file_bytes(R),
        tampered,
        "the canary must trip the check"
    );
}

#[tokio::test]
async fn a_file_replaced_while_an_earlier_batch_is_still_being_written_is_caught() {
    const R: &str = "tamper/busy.jsonl";
    // Every session-file write takes half a second, so a batch is still being written when the
    // next one is checked.
    let server = Server::start(ServerOpts::default().failpoints("data-write=sleep(500)"));
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#])
        .await
        .expect("append");
    let before = server.wal_commits();
    let (mut c2, lease2) = (c.clone(), lease.clone());
    let second = tokio::spawn(async move { append(&mut c2, &lease2, &[r#"{"n":2}"#]).await });
    server.wait_for_commit(before).await; // durable, and being written into the file
    let path = server.file(R);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, b"{\"n\":1}\n").unwrap();
    std::fs::rename(&tmp, &path).unwrap();

    assert!(
        !second.is_finished(),
        "the second batch must still be being written, or this tests nothing"
    );
    let refused = append(&mut c, &lease, &[r#"{"n":3}"#]).await;
    let status = assert_rejected(refused, Code::FailedPrecondition, "EXTERNAL_MODIFICATION");
    assert!(
        status.message().contains("replaced"),
        "{}",
        status.message()
    );
    // The batch that was durable before the file was replaced is still acknowledged.
    second.await.unwrap().expect("second append");
}

#[tokio::test]
async fn an_adoption_after_the_index_was_lost_never_reuses_an_epoch() {
    const R: &str = "tamper/lost-index.jsonl";
    let (mut server, mut c) = written_once(R).await;
    let seen = describe(&mut c, R).await.head.expect("head").epoch;
    assert_eq!(seen, 1);
    // A runner remembers epoch 1 and lets go; the index is lost while the server is down, and
    // a line is added by hand.
    server.stop();
    std::fs::remove_file(
        server
            .data_dir()
            .join(".fencepost/index")
            .join(format!("{R}.idx")),
    )
    .unwrap();
    append_externally(&server, R, b"{\"by\":\"hand\"}\n");
    server.restart();
    let mut c = server.grpc().await;
    let before = now_micros();
    let head = adopt(&mut c, R).await.expect("adopt").head.expect("head");
    assert_eq!(head.next_seq, 3);
    assert!(head.epoch >= before, "epoch {} after {seen}", head.epoch);
    // The runner's compare-and-append, expecting what it saw before, is refused.
    let lease = acquire(&mut c, R, 30_000).await;
    let stale = c
        .append(fencepost::v1::AppendRequest {
            resource: R.to_owned(),
            lease_id: lease.lease_id.clone(),
            token: lease.token,
            entries: vec![br#"{"n":2}"#.to_vec()],
            expected_epoch: Some(seen),
            ..Default::default()
        })
        .await;
    assert_rejected(stale, Code::FailedPrecondition, "HEAD_MISMATCH");
    assert_eq!(
        server.file_bytes(R),
        b"{\"n\":1}\n{\"by\":\"hand\"}\n".to_vec()
    );
}
