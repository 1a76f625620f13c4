//! Power loss: the server is killed with appends in flight, then every byte it had not fsync'd is
//! dropped, zero-filled or scrambled (the test build of the server keeps a journal of synced
//! lengths, `.fencepost/synced.log`), and the server restarts on what is left. Recovery must lose
//! no acknowledged entry and raise no false tamper alarm.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use common::rpc::*;
use common::*;
use fencepost::v1::AppendRequest;

#[derive(Clone, Copy, Debug)]
enum Loss {
    /// Unsynced bytes are gone, and files never synced with them.
    Truncate,
    /// Unsynced bytes read back as zeros.
    Zeros,
    /// Unsynced bytes read back as garbage.
    Garbage,
    /// Canary: as if the WAL had never been fsync'd (its guard switched off). The checker must
    /// find lost entries, which proves it can fail.
    CanaryWalNeverSynced,
}

/// Last synced length per path, from the server's journal.
fn synced_lengths(data_dir: &Path) -> HashMap<PathBuf, u64> {
    let journal =
        std::fs::read_to_string(data_dir.join(".fencepost/synced.log")).unwrap_or_default();
    journal
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(len, path)| (PathBuf::from(path), len.parse().unwrap()))
        .collect()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            files_under(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Applies the loss to every file the server writes through the WAL (session files, indexes, the
/// WAL itself); files it never synced lose everything, and with [`Loss::Truncate`] vanish.
/// Returns the bytes affected and the files removed.
fn lose_unsynced(data_dir: &Path, loss: Loss) -> (u64, usize) {
    let synced = synced_lengths(data_dir);
    let meta = data_dir.join(".fencepost");
    let mut files = Vec::new();
    files_under(data_dir, &mut files);
    let mut affected = 0;
    let mut removed = 0;
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for path in files {
        let kept_as_is = [
            meta.join("lock"),
            meta.join("tokens"),
            meta.join("synced.log"),
        ];
        if kept_as_is.contains(&path) {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        // A file never synced since it was created (nor its directory) can be gone altogether.
        if matches!(loss, Loss::Truncate) && !synced.contains_key(&path) {
            affected += bytes.len() as u64;
            removed += 1;
            std::fs::remove_file(&path).unwrap();
            continue;
        }
        let mut keep = synced
            .get(&path)
            .copied()
            .unwrap_or(0)
            .min(bytes.len() as u64) as usize;
        if matches!(loss, Loss::CanaryWalNeverSynced) && path == meta.join("wal") {
            keep = 0;
        }
        affected += (bytes.len() - keep) as u64;
        let mut out = bytes[..keep].to_vec();
        match loss {
            Loss::Truncate | Loss::CanaryWalNeverSynced => {}
            Loss::Zeros => out.resize(bytes.len(), 0),
            Loss::Garbage => out.extend((keep..bytes.len()).map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed & 0xff) as u8
            })),
        }
        std::fs::write(&path, out).unwrap();
    }
    (affected, removed)
}

struct Acked {
    resource: String,
    first_seq: u64,
    lines: Vec<Vec<u8>>,
}

async fn writer(endpoint: String, id: usize, acked: Arc<Mutex<Vec<Acked>>>) {
    let mut c = connect(&endpoint).await;
    for n in 0..60 {
        // Enough distinct files that the server checkpoints (it does every 256) mid-run.
        let resource = format!("power/w{id}/s{}.jsonl", n % 40);
        let Ok(granted) = try_acquire(&mut c, &resource, owner("w"), 30_000, 10_000).await else {
            return;
        };
        let lease = granted.lease.unwrap();
        let lines: Vec<Vec<u8>> = (0..2)
            .map(|i| format!("{{\"w\":{id},\"n\":{n},\"i\":{i}}}").into_bytes())
            .collect();
        let request = AppendRequest {
            resource: resource.clone(),
            lease_id: lease.lease_id,
            token: lease.token,
            entries: lines.clone(),
            release: true,
            ..Default::default()
        };
        match c.append(request).await {
            Ok(r) => acked.lock().unwrap().push(Acked {
                resource,
                first_seq: r.into_inner().first_seq,
                lines,
            }),
            Err(_) => return,
        }
    }
}

/// Eight writers append; the server is killed (-9) while they are still going. Returns the
/// batches it acknowledged.
async fn write_then_kill9(server: &mut Server) -> Vec<Acked> {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..8)
        .map(|id| tokio::spawn(writer(server.endpoint().to_owned(), id, acked.clone())))
        .collect();
    while acked.lock().unwrap().len() < 400 {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    tokio::task::block_in_place(|| server.kill9());
    for w in writers {
        w.await.unwrap();
    }
    std::mem::take(&mut *acked.lock().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn power_loss_after_kill_9_loses_no_acknowledged_entry_and_raises_no_false_alarm() {
    for loss in [
        Loss::Truncate,
        Loss::Zeros,
        Loss::Garbage,
        Loss::CanaryWalNeverSynced,
    ] {
        let mut server = Server::start(ServerOpts::default());
        let acked = write_then_kill9(&mut server).await;
        assert!(
            !synced_lengths(server.data_dir()).is_empty(),
            "no sync journal: the server binary was not built with the `failpoints` feature (run `cargo test --workspace`)"
        );
        let (affected, removed) = lose_unsynced(server.data_dir(), loss);
        tokio::task::block_in_place(|| server.restart());

        let mut c = server.grpc().await;
        let verdict = check(&mut c, &server, &acked).await;
        if matches!(loss, Loss::CanaryWalNeverSynced) {
            assert!(
                verdict.is_err(),
                "the checker must catch the canary's lost entries"
            );
            eprintln!("power loss canary: caught: {}", verdict.unwrap_err());
            continue;
        }
        let files = verdict.unwrap_or_else(|v| panic!("{loss:?}: {v}"));
        eprintln!(
            "power loss {loss:?}: {} acknowledged batches over {} files checked, {affected} unsynced bytes lost, {removed} files removed",
            acked.len(),
            files
        );
        assert!(
            affected > 0,
            "{loss:?}: the crash left unsynced bytes to lose"
        );
        if matches!(loss, Loss::Truncate) {
            assert!(
                removed > 0,
                "files created since the last checkpoint were removed and recreated by replay"
            );
        }
    }
}

/// Every acknowledged batch at its seqs, every file exactly its entries, no tamper alarm.
/// Returns the number of files checked, or the first violation.
async fn check(c: &mut Client, server: &Server, acked: &[Acked]) -> Result<usize, String> {
    let mut by_resource: HashMap<String, Vec<fencepost::v1::Entry>> = HashMap::new();
    for a in acked {
        if !by_resource.contains_key(&a.resource) {
            by_resource.insert(a.resource.clone(), read_all(c, &a.resource).await);
        }
        let entries = &by_resource[&a.resource];
        for (i, line) in a.lines.iter().enumerate() {
            let seq = a.first_seq as usize + i;
            if entries.get(seq - 1).map(|e| &e.data) != Some(line) {
                return Err(format!("{} seq {seq} lost", a.resource));
            }
        }
    }
    for (r, entries) in &by_resource {
        let mut expected = Vec::new();
        for e in entries {
            expected.extend_from_slice(&e.data);
            expected.push(b'\n');
        }
        if server.file_bytes(r) != expected {
            return Err(format!("{r} is not exactly its entries"));
        }
        let blocked = describe(c, r).await.blocked;
        if !blocked.is_empty() {
            return Err(format!("{r}: false tamper alarm: {blocked}"));
        }
    }
    Ok(by_resource.len())
}

/// `--fsync never` does what it says: no commit is synced (the journal records only the WAL
/// header syncs of each generation's start), yet a kill -9 loses no acknowledged entry, because
/// the operating system still has everything the server wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_fsync_never_no_commit_is_synced_and_a_kill_9_still_loses_nothing() {
    let mut server = Server::start(ServerOpts::default().arg("--fsync", "never"));
    let acked = write_then_kill9(&mut server).await;
    let journal = std::fs::read_to_string(server.data_dir().join(".fencepost/synced.log")).expect(
        "sync journal: run `cargo test --workspace`, which builds the server with `failpoints`",
    );
    let wal = server.data_dir().join(".fencepost/wal");
    let wal_syncs: Vec<u64> = journal
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, path)| Path::new(path) == wal)
        .map(|(len, _)| len.parse().unwrap())
        .collect();
    assert!(
        !wal_syncs.is_empty(),
        "the header of the first generation is synced"
    );
    assert!(
        wal_syncs.iter().all(|&len| len == wal_syncs[0]),
        "only generation headers were synced, no commit: {wal_syncs:?}"
    );
    tokio::task::block_in_place(|| server.restart());
    let mut c = server.grpc().await;
    let files = check(&mut c, &server, &acked)
        .await
        .unwrap_or_else(|v| panic!("after kill -9 with --fsync never: {v}"));
    eprintln!(
        "--fsync never: {} acknowledged batches over {files} files kept across kill -9",
        acked.len()
    );
}
