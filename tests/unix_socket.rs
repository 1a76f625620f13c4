//! The same core flow (acquire, append, read, release, stale token rejected) over a Unix socket,
//! with the raw gRPC client and with `fencepostctl --endpoint unix:/...`.

mod common;

use common::ctl::*;
use common::rpc::*;
use common::*;
use fencepost as proto;
use proto::v1::ReleaseOutcome;
use tonic::Code;

const LINES: [&str; 2] = [r#"{"n":1}"#, r#"{"n":2,"via":"uds"}"#];

#[tokio::test]
async fn the_core_flow_works_over_a_unix_socket_with_the_raw_client() {
    const R: &str = "uds/raw.jsonl";
    let server = Server::start(ServerOpts::default().unix());
    assert!(
        server.endpoint().starts_with("unix:/"),
        "{}",
        server.endpoint()
    );
    // Owner and group may connect, others not, whatever the umask.
    let path = server
        .endpoint()
        .strip_prefix("unix:")
        .expect("a socket path");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(path).expect("the socket").permissions(),
    );
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");
    let mut c = server.grpc().await;

    let lease = acquire(&mut c, R, 30_000).await;
    let reply = append(&mut c, &lease, &LINES).await.expect("append");
    assert_eq!((reply.first_seq, reply.last_seq), (1, 2));
    let entries = read_all(&mut c, R).await;
    let data: Vec<&[u8]> = entries.iter().map(|e| e.data.as_slice()).collect();
    assert_eq!(data, LINES.map(str::as_bytes));
    assert_eq!(release(&mut c, &lease).await, ReleaseOutcome::Released);

    let stale = append(&mut c, &lease, &[r#"{"n":3}"#]).await;
    assert_rejected(stale, Code::FailedPrecondition, "LEASE_RELEASED");
    assert_eq!(server.file_bytes(R), jsonl(LINES));
}

#[test]
fn the_core_flow_works_over_a_unix_socket_with_fencepostctl() {
    const R: &str = "uds/ctl.jsonl";
    let server = Server::start(ServerOpts::default().unix());
    let endpoint = server.endpoint();

    let lease = ctl_acquire(endpoint, R, &[]);
    assert_eq!(lease.resource, R);
    let appended = ctl_object(&ctl_append(endpoint, &lease, lease.token, &jsonl(LINES)));
    assert_eq!(
        (
            appended["first_seq"].as_u64(),
            appended["last_seq"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let records = ctl_json(&ctl(endpoint, ["read", R], None));
    let entries: Vec<serde_json::Value> = records.iter().map(entry_of).collect();
    let sent: Vec<serde_json::Value> = LINES
        .iter()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(entries, sent);
    assert!(ctl_release(endpoint, &lease).status.success());

    let stale = ctl_append(endpoint, &lease, lease.token, b"{\"n\":3}\n");
    assert_ctl_error(&stale, EXIT_STALE, "LEASE_RELEASED");
    assert_eq!(server.file_bytes(R), jsonl(LINES));
}

#[test]
fn a_listen_path_that_is_not_a_socket_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let victim = dir.path().join("notes.jsonl");
    std::fs::write(&victim, b"{\"keep\":true}\n").expect("write");
    let listen = format!("unix:{}", victim.display());
    assert_refused_at_start(
        &listen,
        &dir.path().join("data"),
        "exists and is not a socket",
    );
    assert_eq!(
        std::fs::read(&victim).expect("still there"),
        b"{\"keep\":true}\n",
        "the file at the listen path is untouched"
    );
}
