//! Resource names: hostile names are refused everywhere, nothing escapes the data dir (not
//! through `..`, absolute paths, symlinks or files posing as directories), and every name the
//! grammar allows works and is mirrored on disk.

mod common;

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

use common::rpc::*;
use common::*;
use fencepost as proto;
use proto::v1::{AppendResponse, ReadRequest};
use tonic::{Code, Status};

/// Every path below `root` (not following symlinks), except the server's own metadata.
fn tree(root: &Path) -> BTreeSet<PathBuf> {
    let mut found = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            if path.file_name().is_some_and(|n| n == ".fencepost") {
                continue;
            }
            if std::fs::symlink_metadata(&path).expect("stat").is_dir() {
                pending.push(path.clone());
            }
            found.insert(path);
        }
    }
    found
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).expect("read_dir").next().is_none()
}

#[track_caller]
fn assert_invalid_resource<T: Debug>(call: &str, name: &str, result: Result<T, Status>) {
    match result {
        Ok(value) => panic!("{call} {name:?} was accepted: {value:?}"),
        Err(status) => {
            assert_eq!(
                status.code(),
                Code::InvalidArgument,
                "{call} {name:?}: {status:?}"
            );
            let reason = error_reason(&status);
            assert_eq!(
                reason.as_deref(),
                Some("INVALID_RESOURCE"),
                "{call} {name:?}: {status:?}"
            );
        }
    }
}

fn hostile_names(outside: &Path) -> Vec<String> {
    let long = |c: &str, n: usize| c.repeat(n);
    let mut names: Vec<String> = [
        "..",
        "../escape.jsonl",
        "a/b/../../../escape.jsonl",
        "a/../b.jsonl",
        "a/./b.jsonl",
        ".",
        "./a.jsonl",
        "a/..",
        "/",
        "/etc/passwd",
        "a\0b.jsonl",
        "a\\b.jsonl",
        "..\\escape.jsonl",
        "",
        "a//b.jsonl",
        "a/b/",
        // Would put a directory where another resource's index file goes.
        "s.jsonl.idx/x.jsonl",
        "a b.jsonl",
        "*.jsonl",
        "a?b.jsonl",
        "séance.jsonl",
        "ａ.jsonl",
        "a\u{200b}b.jsonl",
        "~/x.jsonl",
        "a\nb.jsonl",
        "a\tb.jsonl",
        "%2e%2e/escape.jsonl",
        ".fencepost",
        ".fencepost/x",
        ".fencepost/x/y.jsonl",
    ]
    .map(str::to_owned)
    .to_vec();
    names.push(format!("{}/abs.jsonl", outside.display()));
    names.push(format!("{}.jsonl", long("x", 129)));
    names.push(format!("a/{}/b.jsonl", long("y", 129)));
    names.push(["s"; 9].join("/"));
    names.push(vec![long("z", 64); 8].join("/")); // 8 x 64 + 7 = 519 bytes
    names
}

#[tokio::test]
async fn hostile_resource_names_are_refused_and_nothing_is_created_outside_the_data_dir() {
    let outside = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    // The server's temp dir: its data dir, its socket, its working directory.
    let root = server
        .data_dir()
        .parent()
        .expect("data dir parent")
        .to_path_buf();
    let before = tree(&root);

    let names = hostile_names(outside.path());
    assert!(names.len() >= 20);
    for name in &names {
        let acquired = try_acquire(&mut c, name, owner("hostile"), 1_000, 0).await;
        assert_invalid_resource("Acquire", name, acquired);
        assert_invalid_resource("Describe", name, try_describe(&mut c, name).await);
        let request = ReadRequest {
            resource: name.clone(),
            ..Default::default()
        };
        assert_invalid_resource("Read", name, read(&mut c, request).await);
    }

    assert_eq!(tree(&root), before, "no file or directory appeared");
    assert!(is_empty_dir(outside.path()), "nothing written outside");
}

async fn acquire_and_append(c: &mut Client, resource: &str) -> Result<AppendResponse, Status> {
    let granted = try_acquire(c, resource, owner("intruder"), 30_000, 0).await?;
    append(c, &granted.lease.expect("lease"), &[r#"{"x":1}"#]).await
}

#[tokio::test]
async fn a_symlinked_directory_pointing_outside_the_data_dir_is_refused() {
    let outside = tempfile::tempdir().expect("tempdir");
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    std::os::unix::fs::symlink(outside.path(), server.data_dir().join("evil")).expect("symlink");

    for name in ["evil/s.jsonl", "evil/deeper/s.jsonl"] {
        let result = acquire_and_append(&mut c, name).await;
        assert_rejected(result, Code::InvalidArgument, "INVALID_RESOURCE");
    }
    assert!(
        is_empty_dir(outside.path()),
        "nothing written through the symlink"
    );
}

#[tokio::test]
async fn a_symlinked_session_file_pointing_outside_is_neither_written_nor_read() {
    let outside = tempfile::tempdir().expect("tempdir");
    let target = outside.path().join("target.jsonl");
    std::fs::write(&target, b"{\"secret\":1}\n").expect("write target");
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    std::os::unix::fs::symlink(&target, server.data_dir().join("link.jsonl")).expect("symlink");

    let result = acquire_and_append(&mut c, "link.jsonl").await;
    assert_rejected(result, Code::InvalidArgument, "INVALID_RESOURCE");
    assert_eq!(std::fs::read(&target).expect("target"), b"{\"secret\":1}\n");

    let request = ReadRequest {
        resource: "link.jsonl".to_owned(),
        ..Default::default()
    };
    if let Ok(entries) = read(&mut c, request).await {
        let leaked = entries
            .iter()
            .any(|e| e.data.windows(6).any(|w| w == b"secret"));
        assert!(!leaked, "Read served bytes from outside the data dir");
    }
}

#[tokio::test]
async fn a_resource_below_an_existing_regular_file_is_refused() {
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let plain = server.data_dir().join("plain");
    std::fs::write(&plain, b"not a directory\n").expect("write plain file");

    let result = acquire_and_append(&mut c, "plain/s.jsonl").await;
    assert_rejected(result, Code::InvalidArgument, "INVALID_RESOURCE");
    assert_eq!(std::fs::read(&plain).expect("plain"), b"not a directory\n");
}

#[tokio::test]
async fn names_using_the_whole_grammar_are_accepted_and_mirrored_on_disk() {
    let server = Server::start(ServerOpts::default());
    let mut c = server.grpc().await;
    let seg = |c: &str, n: usize| c.repeat(n);
    let exactly_512 = [seg("a", 128), seg("b", 128), seg("c", 128), seg("d", 125)].join("/");
    assert_eq!(exactly_512.len(), 512);
    let names = [
        "agents/main/sessions/4f1c2a.jsonl".to_owned(),
        "agents/voice/sessions/remediation:t2:414ee52d.jsonl".to_owned(),
        "AZaz09._:@+-/x".to_owned(),
        "1/2/3/4/5/6/7/8.jsonl".to_owned(),
        "a/.../b..c.jsonl".to_owned(),
        "-leading-dash.jsonl".to_owned(),
        "ends-like-an-index.idx".to_owned(),
        seg("y", 128),
        exactly_512,
    ];
    for name in &names {
        let line = format!(r#"{{"name_len":{}}}"#, name.len());
        let lease = acquire(&mut c, name, 30_000).await;
        append(&mut c, &lease, &[&line])
            .await
            .unwrap_or_else(|s| panic!("{name}: {s:?}"));
        assert_eq!(
            server.file_bytes(name),
            jsonl([&line]),
            "{name} mirrored on disk"
        );
        assert!(describe(&mut c, name).await.exists);
    }
}
