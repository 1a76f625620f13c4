//! Damaged files under the data dir (made while the server is down): bit flips, zero-filled
//! tails, missing or extra metadata, planted FIFOs. Each gives a clear error on that resource
//! only, never a panic, a hang or a silent adoption.

mod common;

use std::io::Write;

use common::rpc::*;
use common::*;
use tonic::Code;

/// A server with two written resources, stopped so the test can damage its files.
async fn stopped_server_with(resources: &[&str]) -> Server {
    let mut server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    for r in resources {
        let lease = acquire(&mut c, r, 30_000).await;
        append(&mut c, &lease, &[r#"{"n":1}"#, r#"{"n":2}"#])
            .await
            .expect("append");
        append(&mut c, &lease, &[r#"{"n":3}"#])
            .await
            .expect("append");
        release(&mut c, &lease).await;
    }
    server.stop();
    server
}

fn index_path(server: &Server, resource: &str) -> std::path::PathBuf {
    server
        .data_dir()
        .join(".fencepost/index")
        .join(format!("{resource}.idx"))
}

async fn assert_healthy(c: &mut Client, resource: &str) {
    let lease = acquire(c, resource, 30_000).await;
    append(c, &lease, &[r#"{"still":"fine"}"#])
        .await
        .expect("the undamaged resource still works");
    assert_eq!(describe(c, resource).await.blocked, "");
}

#[tokio::test]
async fn a_bit_flip_in_an_index_is_a_clear_data_loss_error_on_that_resource_only() {
    let mut server = stopped_server_with(&["bad/idx.jsonl", "good/idx.jsonl"]).await;
    let path = index_path(&server, "bad/idx.jsonl");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[3] ^= 0x40; // inside the first of two lines: not a torn tail
    std::fs::write(&path, &bytes).unwrap();
    server.restart();
    let mut c = server.grpc().await;
    let err = try_describe(&mut c, "bad/idx.jsonl")
        .await
        .expect_err("corrupt index");
    assert_eq!(err.code(), Code::DataLoss, "{err:?}");
    assert_eq!(error_reason(&err).as_deref(), Some("CORRUPT_METADATA"));
    assert!(err.message().contains("unreadable"), "{}", err.message());
    let refused = try_acquire(&mut c, "bad/idx.jsonl", owner("a"), 30_000, 0).await;
    assert_rejected(refused, Code::DataLoss, "CORRUPT_METADATA");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "the damaged index is left for the operator"
    );
    assert_healthy(&mut c, "good/idx.jsonl").await;
}

#[tokio::test]
async fn damaged_session_files_are_reported_with_the_kind_of_change() {
    let resources = [
        "dmg/zeros.jsonl",
        "dmg/flip.jsonl",
        "dmg/noindex.jsonl",
        "dmg/nodata.jsonl",
    ];
    let mut server = stopped_server_with(&resources).await;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(server.file(resources[0]))
        .unwrap();
    f.write_all(&[0u8; 512]).unwrap();
    let mut bytes = std::fs::read(server.file(resources[1])).unwrap();
    bytes[10] ^= 0x01;
    std::fs::write(server.file(resources[1]), &bytes).unwrap();
    std::fs::remove_file(index_path(&server, resources[2])).unwrap();
    std::fs::remove_file(server.file(resources[3])).unwrap();
    // Extra files the server does not own are ignored.
    std::fs::write(
        server.data_dir().join(".fencepost/index/stray.txt"),
        b"junk",
    )
    .unwrap();
    server.restart();
    let mut c = server.grpc().await;
    for (r, needle) in [
        (resources[0], "appended: 512 foreign bytes at 24..536"),
        (resources[1], "edited in place"),
        (resources[2], "appended: 24 foreign bytes at 0..24"),
        (resources[3], "deleted"),
    ] {
        let d = describe(&mut c, r).await;
        assert!(
            d.blocked.starts_with("EXTERNAL_MODIFICATION") && d.blocked.contains(needle),
            "{r}: {}",
            d.blocked
        );
        let lease = acquire(&mut c, r, 30_000).await;
        let refused = append(&mut c, &lease, &[r#"{"n":4}"#]).await;
        assert_rejected(refused, Code::FailedPrecondition, "EXTERNAL_MODIFICATION");
        release(&mut c, &lease).await;
    }
    assert!(
        !server.file(resources[3]).exists(),
        "a deleted file is not recreated behind the operator's back"
    );
}

#[tokio::test]
async fn a_fifo_planted_at_a_resource_path_is_refused_without_blocking() {
    let server = Server::start(ServerOpts::default());
    let dir = server.data_dir().join("fifo");
    std::fs::create_dir_all(&dir).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(dir.join("s.jsonl"))
        .status()
        .unwrap();
    assert!(status.success());
    let mut c = server.grpc().await;
    let refused = try_acquire(&mut c, "fifo/s.jsonl", owner("a"), 30_000, 0).await;
    let status = assert_rejected(refused, Code::InvalidArgument, "INVALID_RESOURCE");
    assert!(
        status.message().contains("not a regular file"),
        "{}",
        status.message()
    );
    let err = try_describe(&mut c, "fifo/s.jsonl")
        .await
        .expect_err("fifo");
    assert_eq!(error_reason(&err).as_deref(), Some("INVALID_RESOURCE"));
    assert_healthy(&mut c, "fifo-neighbour/s.jsonl").await;
}

/// A server whose resources each have a checkpointed batch and a newer one still only in the
/// write-ahead log (the server was killed), so the test can damage files before replay.
async fn killed_server_with(resources: &[&str]) -> Server {
    let mut server = stopped_server_with(resources).await;
    server.restart();
    let mut c = server.grpc().await;
    for r in resources {
        let lease = acquire(&mut c, r, 30_000).await;
        append(&mut c, &lease, &[r#"{"n":4,"logged":"yes"}"#])
            .await
            .expect("append");
    }
    server.kill9();
    server
}

/// The lines replay kept aside for `resource`, from any WAL generation.
fn held_lines(server: &Server, resource: &str) -> Option<Vec<u8>> {
    let held = server.data_dir().join(".fencepost/held");
    std::fs::read_dir(held)
        .ok()?
        .filter_map(|generation| std::fs::read(generation.ok()?.path().join(resource)).ok())
        .next()
}

#[tokio::test]
async fn damage_made_while_a_killed_server_was_down_is_left_alone_and_the_logged_lines_kept() {
    const TRUNCATED: &str = "down/truncated.jsonl";
    const DELETED: &str = "down/deleted.jsonl";
    const DIRECTORY: &str = "down/now-a-dir.jsonl";
    const INDEX: &str = "down/index.jsonl";
    const GOOD: &str = "down/good.jsonl";
    let mut server = killed_server_with(&[TRUNCATED, DELETED, DIRECTORY, INDEX, GOOD]).await;
    let logged = b"{\"n\":4,\"logged\":\"yes\"}\n".to_vec();

    // Cut inside the checkpointed lines, before where the logged batch starts.
    let truncated = server.file_bytes(TRUNCATED)[..10].to_vec();
    std::fs::write(server.file(TRUNCATED), &truncated).unwrap();
    std::fs::remove_file(server.file(DELETED)).unwrap();
    std::fs::remove_file(server.file(DIRECTORY)).unwrap();
    std::fs::create_dir(server.file(DIRECTORY)).unwrap();
    let index = index_path(&server, INDEX);
    let mut index_bytes = std::fs::read(&index).unwrap();
    index_bytes[3] ^= 0x40;
    std::fs::write(&index, &index_bytes).unwrap();

    // The server starts: one damaged resource does not keep the others from being served.
    server.restart();
    let mut c = server.grpc().await;
    assert_healthy(&mut c, GOOD).await;

    // Nothing is written into the damaged ones, and the acknowledged lines are kept aside.
    assert_eq!(server.file_bytes(TRUNCATED), truncated, "not filled in");
    assert!(!server.file(DELETED).exists(), "not recreated with a hole");
    assert!(server.file(DIRECTORY).is_dir());
    assert_eq!(
        std::fs::read(&index).unwrap(),
        index_bytes,
        "index untouched"
    );
    for r in [TRUNCATED, DELETED, DIRECTORY, INDEX] {
        assert_eq!(held_lines(&server, r).as_deref(), Some(&logged[..]), "{r}");
    }
    assert_eq!(held_lines(&server, GOOD), None, "restored in place");

    // Each damaged resource refuses appends with what is wrong with it.
    let blocked = describe(&mut c, TRUNCATED).await.blocked;
    assert!(blocked.contains("truncated"), "{blocked}");
    let blocked = describe(&mut c, DELETED).await.blocked;
    assert!(blocked.contains("deleted"), "{blocked}");
    let refused = try_acquire(&mut c, DIRECTORY, owner("a"), 30_000, 0).await;
    assert_rejected(refused, Code::InvalidArgument, "INVALID_RESOURCE");
    let refused = try_acquire(&mut c, INDEX, owner("a"), 30_000, 0).await;
    assert_rejected(refused, Code::DataLoss, "CORRUPT_METADATA");
}

#[tokio::test]
async fn a_resource_whose_logged_lines_were_held_back_refuses_appends_until_adopted() {
    const R: &str = "down/both-gone.jsonl";
    let mut server = killed_server_with(&[R]).await;
    let logged = b"{\"n\":4,\"logged\":\"yes\"}\n".to_vec();
    // The file and its index are both removed while the server is down: what is left looks
    // consistent (nothing at all), yet lines acknowledged before the kill are missing.
    std::fs::remove_file(server.file(R)).unwrap();
    std::fs::remove_file(index_path(&server, R)).unwrap();
    server.restart();
    let mut c = server.grpc().await;
    assert_eq!(held_lines(&server, R).as_deref(), Some(&logged[..]));
    let blocked = describe(&mut c, R).await.blocked;
    assert!(blocked.contains("could not be put back"), "{blocked}");
    let lease = acquire(&mut c, R, 30_000).await;
    let refused = append(&mut c, &lease, &[r#"{"n":5}"#]).await;
    assert_rejected(refused, Code::FailedPrecondition, "EXTERNAL_MODIFICATION");
    release(&mut c, &lease).await;

    // The operator accepts the file as it is (recreated empty); the held lines move aside.
    std::fs::write(server.file(R), b"").unwrap();
    let adopted = c
        .adopt(fencepost::v1::AdoptRequest {
            resource: R.to_owned(),
        })
        .await
        .expect("adopt")
        .into_inner();
    assert!(
        adopted.detail.contains("held-adopted"),
        "{}",
        adopted.detail
    );
    assert_eq!(held_lines(&server, R), None);
    let aside = server.data_dir().join(".fencepost/held-adopted");
    let kept: Vec<Vec<u8>> = std::fs::read_dir(aside)
        .unwrap()
        .filter_map(|g| std::fs::read(g.ok()?.path().join(R)).ok())
        .collect();
    assert_eq!(kept, vec![logged], "the lines are still kept, aside");
    let lease = acquire(&mut c, R, 30_000).await;
    append(&mut c, &lease, &[r#"{"n":5}"#])
        .await
        .expect("appends work again");
}
