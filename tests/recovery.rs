//! Crash recovery and data-dir ownership: kill -9 with appends in flight loses no acknowledged
//! entry, tokens keep rising across restarts, leases end on restart, one server per data dir.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;

use common::rpc::*;
use common::*;
use fencepost as proto;
use proto::v1::Lease;
use tonic::Code;

fn line(writer: usize, n: usize) -> String {
    format!(r#"{{"w":{writer},"n":{n}}}"#)
}

/// Appends batches of 1, 2, 3, 1, ... lines until the server dies. Returns the size of every
/// batch it sent (the last one possibly unanswered) and how many were acknowledged.
async fn write_until_failure(
    mut c: Client,
    lease: Lease,
    writer: usize,
    acks: tokio::sync::mpsc::UnboundedSender<()>,
) -> (Vec<usize>, usize) {
    let mut sent = Vec::new();
    let mut n = 0;
    for batch in 0..100_000 {
        let size = batch % 3 + 1;
        let lines: Vec<String> = (n..n + size).map(|k| line(writer, k)).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        sent.push(size);
        match append(&mut c, &lease, &lines).await {
            Ok(reply) => {
                assert_eq!(
                    (reply.first_seq, reply.last_seq),
                    (n as u64 + 1, (n + size) as u64)
                );
                n += size;
                let _ = acks.send(());
            }
            Err(_) => return (sent, batch),
        }
    }
    panic!("writer {writer} never saw the server die");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_appends_survive_kill_9_and_tokens_keep_rising() {
    const WRITERS: usize = 4;
    const CHURN: &str = "crash/churn.jsonl";
    let mut server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let mut highest: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..5 {
        let lease = acquire(&mut c, CHURN, 30_000).await;
        highest.insert(CHURN.to_owned(), lease.token);
        release(&mut c, &lease).await;
    }

    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let resource = format!("crash/w{w}.jsonl");
        let mut own = server.grpc().await;
        let lease = acquire(&mut own, &resource, 60_000).await;
        highest.insert(resource.clone(), lease.token);
        let task = tokio::spawn(write_until_failure(own, lease.clone(), w, acks_tx.clone()));
        writers.push((lease, task));
    }
    drop(acks_tx);
    for _ in 0..60 {
        let ack = tokio::time::timeout(WAIT, acks.recv()).await;
        ack.expect("appends are acknowledged")
            .expect("writers running");
    }
    server.kill9(); // with the writers' next batches in flight

    let mut outcomes = Vec::new();
    for (lease, task) in writers {
        let stopped = tokio::time::timeout(WAIT, task).await;
        let (sent, acked) = stopped.expect("writer stops").expect("writer task");
        outcomes.push((lease, sent, acked));
    }
    server.restart();
    let mut c = server.grpc().await;

    for (w, (lease, sent, acked)) in outcomes.iter().enumerate() {
        let resource = &lease.resource;
        let entries = read_all(&mut c, resource).await;
        let acked_lines: usize = sent[..*acked].iter().sum();
        assert!(
            entries.len() >= acked_lines,
            "{resource}: {} entries, {acked_lines} acknowledged",
            entries.len()
        );
        // Whole batches only (an unacknowledged one may or may not have made it).
        let mut batch_of = Vec::new();
        let mut batches = 0;
        while batch_of.len() < entries.len() {
            assert!(
                batches < sent.len(),
                "{resource}: more entries than were sent"
            );
            batch_of.extend(std::iter::repeat_n(batches as u64 + 1, sent[batches]));
            batches += 1;
        }
        assert_eq!(
            batch_of.len(),
            entries.len(),
            "{resource}: a torn batch survived"
        );
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(entry.seq, i as u64 + 1);
            assert_eq!(
                entry.data,
                line(w, i).as_bytes(),
                "{resource} seq {}",
                i + 1
            );
            assert_eq!(entry.token, lease.token);
            assert_eq!(entry.epoch, batch_of[i], "one write epoch per batch");
        }
        let file = server.file_bytes(resource);
        assert_eq!(
            file,
            jsonl(entries.iter().map(|e| &e.data)),
            "{resource}: file == Read"
        );
        let state = describe(&mut c, resource).await;
        assert!(state.holder.is_none(), "leases end on restart");
        let head = state.head.expect("head");
        assert_eq!(head.epoch, batches as u64);
        assert_eq!(head.next_seq, entries.len() as u64 + 1);
        assert_eq!(head.length, file.len() as u64);
    }

    let mut regranted = BTreeMap::new();
    for (resource, before) in &highest {
        let lease = acquire(&mut c, resource, 30_000).await;
        assert!(
            lease.token > *before,
            "{resource}: token {} after {before}",
            lease.token
        );
        regranted.insert(resource.clone(), lease);
    }
    let resource = &outcomes[0].0.resource;
    let next = read_all(&mut c, resource).await.len() as u64 + 1;
    let reply = append(&mut c, &regranted[resource], &[r#"{"after":"restart"}"#]).await;
    assert_eq!(reply.expect("appends continue the log").first_seq, next);
}

#[tokio::test]
async fn a_graceful_stop_keeps_every_entry_and_ends_every_lease() {
    const R: &str = "restart/graceful.jsonl";
    let lines = [r#"{"n":1}"#, r#"{"n":2}"#];
    let mut server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 60_000).await;
    append(&mut c, &lease, &lines).await.expect("append");

    let status = server.stop();
    assert!(status.success(), "SIGTERM is a clean shutdown: {status:?}");
    server.restart();
    let mut c = server.grpc().await;

    assert_eq!(server.file_bytes(R), jsonl(lines));
    let entries = read_all(&mut c, R).await;
    let data: Vec<&[u8]> = entries.iter().map(|e| e.data.as_slice()).collect();
    assert_eq!(data, lines.map(str::as_bytes));
    assert!(describe(&mut c, R).await.holder.is_none());

    let late = append(&mut c, &lease, &[r#"{"n":3}"#]).await;
    assert_rejected(late, Code::NotFound, "LEASE_NOT_FOUND");
    assert_eq!(server.file_bytes(R), jsonl(lines));
    let again = acquire(&mut c, R, 30_000).await;
    assert!(
        again.token > lease.token,
        "{} > {}",
        again.token,
        lease.token
    );
}

#[tokio::test]
async fn a_second_server_on_the_same_data_dir_is_refused() {
    const R: &str = "owner/only-one.jsonl";
    let server = Server::start(ServerOpts::default());
    let data_dir = server.data_dir().to_path_buf();
    let second = tokio::task::spawn_blocking(move || {
        let listen = ["--listen", "127.0.0.1:0", "--data-dir"].map(OsStr::new);
        run_fencepost(listen.into_iter().chain([data_dir.as_os_str()]))
    })
    .await
    .expect("second server");

    assert!(!second.status.success(), "second server must exit non-zero");
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        stderr.contains("in use"),
        "stderr names the reason: {stderr}"
    );
    let stdout = String::from_utf8_lossy(&second.stdout);
    assert!(
        !stdout.contains("listening"),
        "never became ready: {stdout}"
    );

    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"still":"served"}"#])
        .await
        .expect("first server unharmed");
}

#[test]
fn a_metadata_dir_that_is_a_link_is_refused() {
    // A checkpoint syncs the metadata dir's filesystem only, so it must be the session files' too.
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().join("data");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(&elsewhere, data_dir.join(".fencepost")).unwrap();
    assert_refused_at_start("127.0.0.1:0", &data_dir, ".fencepost is a symbolic link");
    assert_eq!(
        std::fs::read_dir(&elsewhere).unwrap().count(),
        0,
        "nothing written there"
    );
}

#[tokio::test]
async fn a_retry_after_kill_9_gets_the_original_result_instead_of_appending_again() {
    const R: &str = "owner/retried.jsonl";
    const ONCE: &str = "owner/retried-once.jsonl";
    let mut server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    let request = proto::v1::AppendRequest {
        resource: R.to_owned(),
        lease_id: lease.lease_id.clone(),
        token: lease.token,
        entries: vec![br#"{"n":1}"#.to_vec()],
        request_id: "turn-7".to_owned(),
        ..Default::default()
    };
    let first = c
        .append(request.clone())
        .await
        .expect("append")
        .into_inner();
    let writer = owner("once");
    let once = proto::v1::AppendOnceRequest {
        resource: ONCE.to_owned(),
        owner: Some(writer.clone()),
        wait_ms: 5_000,
        entries: vec![br#"{"m":1}"#.to_vec()],
        request_id: "beat-3".to_owned(),
        ..Default::default()
    };
    let first_once = c
        .append_once(once.clone())
        .await
        .expect("append once")
        .into_inner();

    // Both replies were lost in the crash; the clients retry against the restarted server.
    server.kill9();
    server.restart();
    let mut c = server.grpc().await;
    let again = c
        .append(request)
        .await
        .expect("retried append")
        .into_inner();
    assert_eq!(
        (again.first_seq, again.last_seq, again.head),
        (first.first_seq, first.last_seq, first.head)
    );
    let again_once = c
        .append_once(once.clone())
        .await
        .expect("retried once")
        .into_inner();
    assert_eq!(
        (again_once.first_seq, again_once.head, again_once.token),
        (first_once.first_seq, first_once.head, first_once.token)
    );
    assert_eq!(server.file_bytes(R), b"{\"n\":1}\n", "appended once");
    assert_eq!(server.file_bytes(ONCE), b"{\"m\":1}\n", "appended once");

    // The same request id from another client is a new write.
    let other = proto::v1::AppendOnceRequest {
        owner: Some(owner("other")),
        ..once
    };
    let new = c
        .append_once(other)
        .await
        .expect("other client")
        .into_inner();
    assert_eq!(new.first_seq, 2);
}
