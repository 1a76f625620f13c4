//! Entries: what an append stores (bytes, metadata, heads, chain hash), how Read selects them,
//! and how a bad entry anywhere in a batch refuses the whole batch.

mod common;

use common::rpc::*;
use common::*;
use fencepost as proto;
use proto::v1::{AcquireRequest, AppendRequest, Head, OwnerKind, ReadRequest};
use sha2::{Digest, Sha256};
use tonic::Code;

const OK: &[u8] = br#"{"ok":true}"#;

fn chain(lines: &[&str]) -> Vec<[u8; 32]> {
    let mut hash = [0u8; 32];
    lines
        .iter()
        .map(|line| {
            let mut hasher = Sha256::new();
            hasher.update(hash);
            hasher.update(line.as_bytes());
            hash = hasher.finalize().into();
            hash
        })
        .collect()
}

#[tokio::test]
async fn appended_entries_are_stored_byte_for_byte_with_their_metadata() {
    const R: &str = "entries/stored.jsonl";
    let lines = [
        r#"{ "b" : "é ☃ \u00e9" ,"a":1 }"#,
        r#"{"nested":{"x":[1,2,{"y":null}]},"s":"tab\tquote\"slash\\"}"#,
        r#"{}"#,
    ];
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;

    let empty = describe(&mut c, R).await;
    assert!(!empty.exists && empty.holder.is_none() && empty.token == 0);
    let zero = Head {
        epoch: 0,
        next_seq: 1,
        length: 0,
        chain_hash: vec![0; 32],
    };
    assert_eq!(empty.head, Some(zero));

    let mut writer = owner("writer");
    writer.kind = OwnerKind::Runner.into();
    let request = AcquireRequest {
        resource: R.to_owned(),
        owner: Some(writer.clone()),
        ttl_ms: 30_000,
        ..Default::default()
    };
    let lease = c
        .acquire(request)
        .await
        .expect("acquire")
        .into_inner()
        .lease
        .expect("lease");
    let first = append(&mut c, &lease, &lines[..2])
        .await
        .expect("first batch");
    let second = append(&mut c, &lease, &lines[2..])
        .await
        .expect("second batch");
    assert_eq!((first.first_seq, first.last_seq), (1, 2));
    assert_eq!((second.first_seq, second.last_seq), (3, 3));

    let file = jsonl(lines);
    assert_eq!(server.file_bytes(R), file);
    let hashes = chain(&lines);
    let head = second.head.expect("head");
    assert_eq!(
        (head.epoch, head.next_seq, head.length),
        (2, 4, file.len() as u64)
    );
    assert_eq!(head.chain_hash, hashes[2]);
    assert_eq!(first.head.expect("head").epoch, 1);
    let state = describe(&mut c, R).await;
    assert!(state.exists);
    assert_eq!(state.head, Some(head));

    let entries = read_all(&mut c, R).await;
    assert_eq!(entries.len(), 3);
    for (i, entry) in entries.iter().enumerate() {
        assert_eq!(entry.seq, i as u64 + 1);
        assert_eq!(entry.epoch, if i < 2 { 1 } else { 2 });
        assert_eq!(entry.token, lease.token);
        assert_eq!(entry.owner.as_ref(), Some(&writer));
        assert_eq!(entry.data, lines[i].as_bytes());
        assert_eq!(entry.chain_hash, hashes[i]);
        assert!(entry.time_unix_micros > 0);
    }
    assert!(entries[0].time_unix_micros <= entries[2].time_unix_micros);
}

#[tokio::test]
async fn read_starts_at_a_seq_or_a_write_epoch_and_honours_the_limit() {
    const R: &str = "entries/read.jsonl";
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    let batches: [&[&str]; 3] = [
        &[r#"{"n":1}"#, r#"{"n":2}"#],
        &[r#"{"n":3}"#],
        &[r#"{"n":4}"#, r#"{"n":5}"#, r#"{"n":6}"#],
    ];
    for batch in batches {
        append(&mut c, &lease, batch).await.expect("append");
    }
    let mut seqs = async |from_seq: u64, from_epoch: Option<u64>, limit: u64| -> Vec<u64> {
        let request = ReadRequest {
            resource: R.to_owned(),
            from_seq,
            from_epoch,
            limit,
        };
        let entries = read(&mut c, request).await.expect("read");
        entries.iter().map(|e| e.seq).collect()
    };
    assert_eq!(seqs(0, None, 0).await, [1, 2, 3, 4, 5, 6]);
    assert_eq!(seqs(3, None, 0).await, [3, 4, 5, 6]);
    assert_eq!(seqs(0, Some(2), 0).await, [3, 4, 5, 6]);
    assert_eq!(
        seqs(1, Some(3), 0).await,
        [4, 5, 6],
        "from_epoch takes precedence"
    );
    assert_eq!(seqs(2, None, 2).await, [2, 3]);
    assert_eq!(seqs(7, None, 0).await, Vec::<u64>::new());
    assert!(
        read_all(&mut c, "entries/never-written.jsonl")
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn an_invalid_line_anywhere_in_a_batch_rejects_the_whole_batch() {
    const R: &str = "entries/invalid.jsonl";
    let cases: [(&str, Vec<&[u8]>, usize); 15] = [
        ("not JSON, first", vec![b"not json", OK, OK], 0),
        ("not JSON, middle", vec![OK, br#"{"a":"#, OK], 1),
        ("not JSON, last", vec![OK, OK, b"nope"], 2),
        ("a JSON array", vec![OK, b"[1,2]"], 1),
        ("a JSON string", vec![br#""text""#], 0),
        ("a JSON number", vec![OK, b"42"], 1),
        ("JSON null", vec![b"null", OK], 0),
        ("invalid UTF-8", vec![OK, b"{\"a\":\"\xff\xfe\"}"], 1),
        (
            "two objects split by a newline",
            vec![OK, b"{\"a\":1}\n{\"b\":2}"],
            1,
        ),
        (
            "a raw newline inside an object",
            vec![b"{\"a\":\n1}", OK],
            0,
        ),
        ("a trailing newline", vec![OK, b"{\"a\":1}\n", OK], 1),
        ("two objects on one line", vec![b"{\"a\":1}{\"b\":2}"], 0),
        ("trailing garbage", vec![OK, b"{\"a\":1} x"], 1),
        ("an empty entry", vec![OK, b""], 1),
        ("only whitespace", vec![b"   ", OK], 0),
    ];
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":1}"#])
        .await
        .expect("valid first batch");
    let file = server.file_bytes(R);
    let head = describe(&mut c, R).await.head;

    for (what, batch, index) in cases {
        let entries = batch.iter().map(|e| e.to_vec()).collect();
        let result = append_raw(&mut c, R, &lease.lease_id, lease.token, entries).await;
        let status = match result {
            Ok(ok) => panic!("{what}: batch accepted: {ok:?}"),
            Err(status) => status,
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(
            error_reason(&status).as_deref(),
            Some("INVALID_ENTRY"),
            "{what}"
        );
        assert_eq!(
            error_metadata(&status, "index"),
            Some(index.to_string()),
            "{what}"
        );
        assert_eq!(server.file_bytes(R), file, "{what}: file unchanged");
        assert_eq!(
            describe(&mut c, R).await.head,
            head,
            "{what}: head unchanged"
        );
    }

    let empty = append_raw(&mut c, R, &lease.lease_id, lease.token, Vec::new()).await;
    let status = assert_rejected(empty, Code::InvalidArgument, "INVALID_ARGUMENT");
    assert!(
        status.message().contains("the batch has no entries"),
        "{}",
        status.message()
    );
    let many = vec![b"{}".to_vec(); 10_001];
    let status = assert_rejected(
        append_raw(&mut c, R, &lease.lease_id, lease.token, many).await,
        Code::InvalidArgument,
        "INVALID_ARGUMENT",
    );
    assert!(
        status
            .message()
            .contains("10001 entries; the limit is 10000"),
        "{}",
        status.message()
    );
    assert_eq!(server.file_bytes(R), file);

    let ok = append(&mut c, &lease, &[r#"{"n":2}"#])
        .await
        .expect("lease still usable");
    assert_eq!((ok.first_seq, ok.head.expect("head").epoch), (2, 2));
}

#[tokio::test]
async fn an_oversize_entry_anywhere_in_a_batch_rejects_the_whole_batch() {
    const R: &str = "entries/oversize.jsonl";
    const LIMIT: usize = 64;
    let sized = |len: usize| format!(r#"{{"p":"{}"}}"#, "x".repeat(len - 8)).into_bytes();
    let server = Server::start(ServerOpts::default().arg("--max-entry-bytes", &LIMIT.to_string()));
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;

    let at_limit = append_raw(&mut c, R, &lease.lease_id, lease.token, vec![sized(LIMIT)]).await;
    at_limit.expect("an entry of exactly the limit is accepted");
    let file = server.file_bytes(R);
    let head = describe(&mut c, R).await.head;

    for index in 0..3 {
        let mut batch = vec![OK.to_vec(), OK.to_vec(), OK.to_vec()];
        batch[index] = sized(LIMIT + 1);
        let result = append_raw(&mut c, R, &lease.lease_id, lease.token, batch).await;
        let status = assert_rejected(result, Code::InvalidArgument, "ENTRY_TOO_LARGE");
        assert_eq!(error_metadata(&status, "index"), Some(index.to_string()));
        assert_eq!(
            error_metadata(&status, "size"),
            Some((LIMIT + 1).to_string())
        );
        assert_eq!(error_metadata(&status, "limit"), Some(LIMIT.to_string()));
        assert_eq!(server.file_bytes(R), file);
        assert_eq!(describe(&mut c, R).await.head, head);
    }
}

#[tokio::test]
async fn a_batch_over_the_batch_limit_is_rejected_whole() {
    const R: &str = "entries/batch.jsonl";
    let opts = ServerOpts::default()
        .arg("--max-entry-bytes", "64")
        .arg("--max-batch-bytes", "256");
    let server = Server::start(opts);
    let mut c = server.grpc().await;
    let lease = acquire(&mut c, R, 30_000).await;
    let line = format!(r#"{{"p":"{}"}}"#, "x".repeat(56));
    let request = |n: usize| AppendRequest {
        resource: R.to_owned(),
        lease_id: lease.lease_id.clone(),
        token: lease.token,
        entries: vec![line.clone().into_bytes(); n],
        ..Default::default()
    };

    c.append(request(3)).await.expect("192 bytes fit");
    let file = server.file_bytes(R);
    let result = c.append(request(5)).await;
    assert_rejected(result, Code::InvalidArgument, "BATCH_TOO_LARGE");
    assert_eq!(server.file_bytes(R), file);
    assert_eq!(describe(&mut c, R).await.head.expect("head").epoch, 1);
}
