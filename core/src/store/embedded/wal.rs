//! The write-ahead log and its group-commit writer thread.
//!
//! Every accepted batch is framed into one WAL record; the writer drains all pending batches,
//! writes their records, and makes them durable with one `fdatasync` for the whole group, across
//! resources. Only then does it write the lines into the session files and their indexes (page
//! cache), and acknowledge. Session files are fsync'd at checkpoints, after which the WAL is reset;
//! on start, [`super::replay`] re-applies whatever the WAL holds beyond the last checkpoint.
//!
//! Named failpoints (cargo feature `failpoints`, set with `FAILPOINTS=name=return`, tests only)
//! sit at each durability boundary: `wal-write`, `wal-written`, `wal-sync`, `wal-synced`,
//! `data-write`, `data-written`, `index-written`, `checkpoint-sync`, `checkpoint-synced`, and
//! `created-data` in [`super::log`]. The `*-written`/`*-synced` ones abort the process; the
//! others inject EIO (or ENOSPC with `return(enospc)`). Two switch a guard off for canary runs:
//! `skip-replay` (no recovery at start) and `tamper-check-off` (no external-change checks).

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};

use tokio::sync::oneshot;

use super::paths::sync_dir;
use crate::error::CoreError;
use crate::resource::ResourceName;

/// WAL size after which the writer checkpoints.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// Most batches committed by one fdatasync.
const MAX_GROUP: usize = 1024;
/// Files written since the last checkpoint after which the writer checkpoints (bounds the
/// descriptors it keeps open).
const CHECKPOINT_FILES: usize = 256;

/// The open files of one resource.
#[derive(Debug)]
pub struct Files {
    /// The session file (positional writes).
    pub data: File,
    /// The index file (append mode).
    pub index: File,
    /// Where the session file lives, to detect replacement.
    pub data_path: PathBuf,
    /// (device, inode) of the session file when opened.
    pub identity: (u64, u64),
}

/// One batch for the writer.
#[derive(Debug)]
pub struct Job {
    /// The resource.
    pub name: ResourceName,
    /// Its files.
    pub files: Arc<Files>,
    /// Session file length the batch expects (the head's length).
    pub expected_len: u64,
    /// The framed WAL record.
    pub frame: Vec<u8>,
    /// The lines with newlines, to write at `expected_len`.
    pub data: Vec<u8>,
    /// The index line.
    pub index_line: Vec<u8>,
    /// Where the outcome goes.
    pub reply: oneshot::Sender<Result<(), CoreError>>,
}

/// Messages to the writer.
#[derive(Debug)]
pub enum Msg {
    /// Commit a batch.
    Append(Job),
    /// Sync every written file and reset the WAL.
    Checkpoint(oneshot::Sender<io::Result<()>>),
}

/// Frames one record: `[len u32 LE][crc32 u32 LE][name \n record-json \n data]`.
pub fn frame(name: &ResourceName, record_line: &[u8], data: &[u8]) -> Vec<u8> {
    let len = name.as_str().len() + 1 + record_line.len() + data.len();
    let mut out = Vec::with_capacity(8 + len);
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(name.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(record_line);
    out.extend_from_slice(data);
    let crc = crc32fast::hash(&out[8..]);
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    out
}

/// One decoded record.
#[derive(Debug)]
pub struct Record<'a> {
    /// Resource name.
    pub name: &'a str,
    /// The index line (without newline).
    pub record_line: &'a [u8],
    /// The lines with newlines.
    pub data: &'a [u8],
}

/// Decodes records until the end or the first torn/corrupt frame. Returns them and the length
/// of the valid prefix.
pub fn decode(bytes: &[u8]) -> (Vec<Record<'_>>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    while bytes.len() - pos >= 8 {
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(pos + 8..pos + 8 + len) else {
            break;
        };
        if len == 0 || crc32fast::hash(payload) != crc {
            break;
        }
        let Some(n1) = payload.iter().position(|b| *b == b'\n') else {
            break;
        };
        let Some(n2) = payload[n1 + 1..].iter().position(|b| *b == b'\n') else {
            break;
        };
        let Ok(name) = std::str::from_utf8(&payload[..n1]) else {
            break;
        };
        out.push(Record {
            name,
            record_line: &payload[n1 + 1..n1 + 1 + n2],
            data: &payload[n1 + 2 + n2..],
        });
        pos += 8 + len;
    }
    (out, pos)
}

/// Starts the writer thread on an open, empty WAL file.
pub fn spawn(wal: File, wal_dir: PathBuf) -> io::Result<Sender<Msg>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fencepost-wal".into())
        .spawn(move || Writer::new(wal, wal_dir).run(&rx))?;
    Ok(tx)
}

struct Writer {
    wal: File,
    wal_dir: PathBuf,
    size: u64,
    // Session files written since the last checkpoint (paths only: no descriptor is pinned).
    dirty: HashSet<PathBuf>,
    broken: Option<String>,
}

impl Writer {
    fn new(wal: File, wal_dir: PathBuf) -> Self {
        Self {
            wal,
            wal_dir,
            size: 0,
            dirty: HashSet::new(),
            broken: None,
        }
    }

    fn run(mut self, rx: &Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            let mut group = Vec::new();
            let mut checkpoints = Vec::new();
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(job) => group.push(job),
                    Msg::Checkpoint(reply) => checkpoints.push(reply),
                }
                if group.len() < MAX_GROUP {
                    next = rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit(group);
            }
            if !checkpoints.is_empty()
                || self.size >= CHECKPOINT_BYTES
                || self.dirty.len() >= CHECKPOINT_FILES
            {
                let result = self.checkpoint();
                if let Err(e) = &result {
                    // A failed fsync may have dropped dirty pages (and cleared the error): never
                    // truncate the WAL after one. The store stops; a restart replays the WAL.
                    tracing::error!(error = %e, "checkpoint failed; the store stops accepting writes and keeps the WAL");
                    self.broken
                        .get_or_insert_with(|| format!("checkpoint failed: {e}"));
                }
                for reply in checkpoints {
                    let _ = reply.send(
                        result
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| io::Error::new(e.kind(), e.to_string())),
                    );
                }
            }
        }
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "final checkpoint failed; the WAL will be replayed on start");
        }
    }

    fn commit(&mut self, group: Vec<Job>) {
        let mut ready = Vec::with_capacity(group.len());
        let mut buf = Vec::new();
        for job in group {
            if let Some(detail) = &self.broken {
                let _ = job.reply.send(Err(store_failed("*", detail)));
                continue;
            }
            match tamper_check(&job) {
                Ok(()) => {
                    buf.extend_from_slice(&job.frame);
                    ready.push(job);
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        if ready.is_empty() {
            return;
        }
        let durable = (|| -> io::Result<()> {
            fail::fail_point!("wal-write", |arg| Err(injected(arg)));
            self.wal.write_all(&buf)?;
            fail::fail_point!("wal-written", |_| std::process::abort());
            fail::fail_point!("wal-sync", |arg| Err(injected(arg)));
            self.wal.sync_data()
        })();
        if let Err(e) = durable {
            let detail = format!("write-ahead log write or fsync failed: {e}");
            tracing::error!(error = %e, "WAL write failed; the store stops accepting writes");
            for job in ready {
                let _ = job.reply.send(Err(store_failed("*", &detail)));
            }
            self.broken = Some(detail);
            return;
        }
        self.size += buf.len() as u64;
        #[cfg(feature = "failpoints")]
        synced::record(&self.wal_dir, &[(self.wal_dir.join("wal"), self.size)]);
        for job in ready {
            let result = (|| -> io::Result<()> {
                fail::fail_point!("wal-synced", |_| std::process::abort());
                fail::fail_point!("data-write", |arg| Err(injected(arg)));
                job.files.data.write_all_at(&job.data, job.expected_len)?;
                fail::fail_point!("data-written", |_| std::process::abort());
                (&job.files.index).write_all(&job.index_line)?;
                fail::fail_point!("index-written", |_| std::process::abort());
                Ok(())
            })();
            let reply = match result {
                Ok(()) => {
                    self.dirty.insert(job.files.data_path.clone());
                    Ok(())
                }
                Err(e) => {
                    // The batch is in the WAL but not in its files: stop everything, so that a
                    // restart replays it rather than anything being written over it.
                    let detail = format!("writing {} failed: {e}", job.files.data_path.display());
                    tracing::error!(resource = %job.name, %detail, "the store stops accepting writes");
                    self.broken.get_or_insert_with(|| detail.clone());
                    Err(store_failed(job.name.as_str(), &detail))
                }
            };
            let _ = job.reply.send(reply);
        }
    }

    fn checkpoint(&mut self) -> io::Result<()> {
        if self.broken.is_some() {
            return Err(io::Error::other(
                "the store is stopped after a write failure",
            ));
        }
        // One syncfs makes every session file, index and directory written since the last
        // checkpoint durable at once (they live on the WAL's filesystem), instead of one fsync each.
        fail::fail_point!("checkpoint-sync", |arg| Err(injected(arg)));
        nix::unistd::syncfs(&self.wal).map_err(io::Error::from)?;
        #[cfg(feature = "failpoints")]
        synced::record_paths(&self.wal_dir, &self.dirty);
        self.dirty.clear();
        fail::fail_point!("checkpoint-synced", |_| std::process::abort());
        self.wal.set_len(0)?;
        self.wal.sync_all()?;
        sync_dir(&self.wal_dir)?;
        self.size = 0;
        #[cfg(feature = "failpoints")]
        synced::record(&self.wal_dir, &[(self.wal_dir.join("wal"), 0)]);
        Ok(())
    }
}

/// Refuses a batch whose session file is not the one, or not as long as, the server left it.
fn tamper_check(job: &Job) -> Result<(), CoreError> {
    match changed_on_disk(&job.files.data_path, job.files.identity, job.expected_len) {
        None => Ok(()),
        Some(detail) => Err(CoreError::ExternalModification {
            resource: job.name.as_str().to_owned(),
            detail,
        }),
    }
}

/// How the session file differs from what the server left (`None` if it does not): replaced,
/// deleted, or a different length. One `lstat`; in-place edits are found by the full check on open.
pub fn changed_on_disk(path: &Path, identity: (u64, u64), expected_len: u64) -> Option<String> {
    fail::fail_point!("tamper-check-off", |_| None);
    let len = match std::fs::symlink_metadata(path) {
        Ok(m) if (m.dev(), m.ino()) == identity => m.len(),
        Ok(_) => return Some("replaced: the session file is a different file now".into()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Some("deleted: the session file is gone".into());
        }
        Err(e) => return Some(format!("unreadable: {e}")),
    };
    match len.cmp(&expected_len) {
        std::cmp::Ordering::Equal => None,
        std::cmp::Ordering::Greater => Some(format!(
            "appended: {} foreign bytes at {expected_len}..{len}",
            len - expected_len
        )),
        std::cmp::Ordering::Less => Some(format!(
            "truncated: {len} bytes on disk, {expected_len} recorded"
        )),
    }
}

/// The error a test failpoint injects: `return(enospc)` gives ENOSPC, anything else EIO.
#[cfg(feature = "failpoints")]
fn injected(arg: Option<String>) -> io::Error {
    match arg.as_deref() {
        Some("enospc") => io::Error::from_raw_os_error(libc::ENOSPC),
        _ => io::Error::from_raw_os_error(libc::EIO),
    }
}

fn store_failed(resource: &str, detail: &str) -> CoreError {
    CoreError::StorageFailed {
        resource: resource.to_owned(),
        detail: detail.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_torn_tail_is_cut() {
        let name = ResourceName::parse("a/b.jsonl").unwrap();
        let mut bytes = frame(&name, b"{\"epoch\":1}\n", b"{}\n{}\n");
        bytes.extend(frame(&name, b"{\"epoch\":2}\n", b"{\"x\":1}\n"));
        let full = bytes.len();
        bytes.extend(&frame(&name, b"{\"epoch\":3}\n", b"{}\n")[..10]);
        let (records, valid) = decode(&bytes);
        assert_eq!(valid, full);
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].name, "a/b.jsonl");
        assert_eq!(records[0].record_line, b"{\"epoch\":1}");
        assert_eq!(records[1].data, b"{\"x\":1}\n");

        let mut flipped = bytes.clone();
        flipped[12] ^= 1;
        assert_eq!(decode(&flipped).0.len(), 0);
    }
}

/// Test builds only: a journal of how far each file is known to be on stable storage, so a
/// power-loss test can drop (or scramble) every byte that was not fsync'd. One line per sync:
/// `<length>\t<path>`, in `.fencepost/synced.log`.
#[cfg(feature = "failpoints")]
mod synced {
    use std::io::Write;
    use std::path::{Path, PathBuf};

    pub fn record(meta: &Path, entries: &[(PathBuf, u64)]) {
        let mut out = String::new();
        for (path, len) in entries {
            out.push_str(&format!("{len}\t{}\n", path.display()));
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(meta.join("synced.log"));
        if let Ok(mut f) = file {
            let _ = f.write_all(out.as_bytes());
        }
    }

    pub fn record_paths(meta: &Path, data_paths: &std::collections::HashSet<PathBuf>) {
        let root = meta.parent().unwrap_or(meta);
        let mut entries = Vec::new();
        for data in data_paths {
            let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
            entries.push((data.clone(), len(data)));
            if let Ok(rel) = data.strip_prefix(root) {
                let index = meta.join("index").join(format!("{}.idx", rel.display()));
                entries.push((index.clone(), len(&index)));
            }
        }
        record(meta, &entries);
    }
}
