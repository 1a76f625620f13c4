//! The write-ahead log: every accepted batch is framed into one WAL record and made durable, in
//! groups, before its lines are written into its session file and acknowledged (with
//! [`Fsync::Never`], written to the OS only: commits skip the `fdatasync`).
//!
//! Two threads, so that one group's `fdatasync` overlaps the previous group's file writes:
//! - the writer ([`writer`]) drains all pending batches, checks their session files
//!   ([`tamper`]), writes their records and makes them durable with one `fdatasync` for the whole
//!   group, across resources, then hands the group on;
//! - the applier ([`apply`]) writes each group's lines into the session files and their indexes
//!   (page cache) and acknowledges its batches, while the writer commits the next group.
//!
//! Session files are fsync'd at checkpoints, once the applier has caught up, after which the WAL
//! starts a new generation; on start, [`super::replay`] re-applies the current generation's
//! records. The file's layout is in [`format`].
//!
//! The file is reused, never truncated: records overwrite space that is already allocated (zeros
//! written when the writer starts: a whole generation), so a commit's `fdatasync` writes data
//! blocks only, with no file-size change for the journal to commit.
//!
//! Named failpoints (cargo feature `failpoints`, set with `FAILPOINTS=name=return`, tests only)
//! sit at each durability boundary: `wal-write`, `wal-written`, `wal-sync`, `wal-synced`,
//! `data-write`, `data-written`, `index-written`, `checkpoint-sync`, `checkpoint-synced`, and
//! `created-data` in [`super::log`]. The `*-written`/`*-synced` ones abort the process; the
//! others inject EIO (or ENOSPC with `return(enospc)`). Two switch a guard off for canary runs:
//! `skip-replay` (no recovery at start) and `tamper-check-off` (no external-change checks).

mod apply;
mod direct;
mod format;
#[cfg(feature = "failpoints")]
mod synced;
mod tamper;
mod writer;

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

pub use self::format::{Contents, HEADER_BYTES, Record, decode, payload, read_used};
pub use self::tamper::changed_on_disk;
use super::Fsync;
use super::index::BatchRecord;
use super::log::EmbeddedLog;
use crate::error::CoreError;
use crate::model::ChainHash;
use crate::resource::ResourceName;

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

/// One batch for the writer (then the applier).
#[derive(Debug)]
pub struct Job {
    /// The resource.
    pub name: ResourceName,
    /// Its files.
    pub files: Arc<Files>,
    /// Session file length the batch expects (the head's length).
    pub expected_len: u64,
    /// The WAL record's payload (see [`payload`]).
    pub payload: Vec<u8>,
    /// The lines with newlines, to write at `expected_len`.
    pub data: Vec<u8>,
    /// The index line.
    pub index_line: Vec<u8>,
    /// The log it belongs to, told the outcome.
    pub log: Arc<EmbeddedLog>,
    /// The batch's index record, for the log's in-memory index (`None` once the log was told).
    pub record: Option<BatchRecord>,
    /// Chain hash after each of its lines.
    pub hashes: Vec<ChainHash>,
}

impl Job {
    fn finish(mut self, result: Result<(), CoreError>) {
        if let Some(record) = self.record.take() {
            self.log.finished(record, &self.hashes, result);
        }
    }
}

impl Drop for Job {
    /// A batch never finished (a thread stopped or panicked) fails, so nobody waits forever.
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            self.log
                .finished(record, &self.hashes, Err(CoreError::ShuttingDown));
        }
    }
}

/// Messages to the writer.
#[derive(Debug)]
pub enum Msg {
    /// Commit a batch.
    Append(Box<Job>),
    /// Sync every written file and reset the WAL.
    Checkpoint(oneshot::Sender<io::Result<()>>),
}

/// Starts a new generation on the WAL file (after replay of the old one: `generation` is the one
/// just replayed), durably, then the writer and applier threads.
///
/// Returns the writer's inbox and a view of why writes stopped, if they did.
///
/// # Errors
/// The header could not be written and synced, or a thread could not be started.
pub fn spawn(
    wal: File,
    wal_dir: PathBuf,
    generation: u64,
    fsync: Fsync,
) -> io::Result<(Sender<Msg>, Stopped)> {
    let stop = Arc::new(Stop::default());
    let stopped = Stopped(stop.clone());
    let applied = Arc::new(AtomicU64::new(0));
    let applier = apply::spawn(stop.clone(), applied.clone())?;
    let mut writer = writer::Writer::new(wal, wal_dir, generation, fsync, stop, applied, applier)?;
    writer.next_generation()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fencepost-wal".into())
        .spawn(move || writer.run(&rx))?;
    Ok((tx, stopped))
}

/// Why the store stopped accepting writes, read from outside the WAL's threads.
#[derive(Debug, Clone)]
pub struct Stopped(Arc<Stop>);

impl Stopped {
    /// The first failure that stopped writes; `None` while writes work.
    pub fn detail(&self) -> Option<String> {
        self.0.detail()
    }
}

/// Why the store stopped accepting writes, once a write, fsync or checkpoint failed. Shared by the
/// writer and the applier; the first reason stays.
#[derive(Debug, Default)]
struct Stop {
    stopped: AtomicBool,
    detail: Mutex<Option<String>>,
}

impl Stop {
    fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    fn detail(&self) -> Option<String> {
        if !self.is_stopped() {
            return None;
        }
        self.lock().clone()
    }

    fn set(&self, detail: String) {
        self.lock().get_or_insert(detail);
        self.stopped.store(true, Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<String>> {
        self.detail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
