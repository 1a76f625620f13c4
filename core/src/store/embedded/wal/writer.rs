//! The writer thread: groups pending batches, checks their session files, makes the group's WAL
//! records durable with one `fdatasync` and hands the group to the applier; checkpoints.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};

use super::apply::Work;
use super::direct::DirectWal;
use super::format::{HEADER_BYTES, SLOT_BYTES, encode, header_slot};
use super::{Fsync, Job, Msg, Stop, store_failed, tamper::tamper_check};
#[cfg(feature = "failpoints")]
use super::{injected, synced};
use crate::store::embedded::paths::sync_dir;

/// Record bytes in one generation after which the writer checkpoints.
const CHECKPOINT_BYTES: u64 = 64 << 20;
/// The WAL's size from the writer's start: a generation's records plus room for the group that
/// crosses the checkpoint threshold, zero-filled and synced before the first append (about 0.1 s,
/// once per data dir, or on the first start with a smaller WAL). Growing it on demand instead put
/// the zero-fill into commits (2-5 ms each for 4 MiB steps) all through the first 64 MiB a new
/// server took: W1's p99 on a fresh server was 6.2 ms, against 3.1-3.9 ms on one whose WAL had
/// grown.
const PREALLOCATED: u64 = CHECKPOINT_BYTES + GROW_BYTES;
/// Zero-filled space the writer adds at a time when a group runs past the allocated space.
const GROW_BYTES: u64 = 4 << 20;
/// Most batches committed by one fdatasync.
const MAX_GROUP: usize = 1024;
/// Files written since the last checkpoint after which the writer checkpoints (bounds the
/// descriptors the applier keeps for early write-back).
const CHECKPOINT_FILES: usize = 256;
/// How long the writer polls for the next batch after a commit before it sleeps.
const SPIN: std::time::Duration = std::time::Duration::from_micros(250);

pub(super) struct Writer {
    wal: File,
    /// The metadata directory, on the data dir's filesystem: a checkpoint syncs that filesystem
    /// (where every session file and index lives), wherever the WAL file itself is.
    meta_dir: File,
    /// Whether a commit syncs the WAL before its batches are acknowledged ([`Fsync::Always`]).
    sync_commits: bool,
    /// The WAL opened for direct group writes; `None` where the filesystem refuses them, and
    /// when commits are not synced (then the page cache is the faster way).
    direct: Option<DirectWal>,
    wal_dir: PathBuf,
    /// The generation records are written in.
    generation: u64,
    /// Where the next record goes.
    pos: u64,
    /// WAL bytes written since the start, across generations (paces the applier's write-back).
    written: u64,
    /// The file's length: space up to here is allocated and needs no size change to overwrite.
    allocated: u64,
    /// Session files written since the last checkpoint (paths only: no descriptor is pinned).
    dirty: HashSet<PathBuf>,
    stop: Arc<Stop>,
    applier: Sender<Work>,
    /// Groups handed to the applier; it counts those it finished in `applied`.
    groups: u64,
    applied: Arc<AtomicU64>,
    /// Session files with committed batches the applier may not have written yet, by identity:
    /// where the file ends after them, and the last group that has one.
    ends: HashMap<(u64, u64), (u64, u64)>,
}

impl Writer {
    pub(super) fn new(
        wal: File,
        wal_dir: PathBuf,
        generation: u64,
        fsync: Fsync,
        stop: Arc<Stop>,
        applied: Arc<AtomicU64>,
        applier: Sender<Work>,
    ) -> io::Result<Self> {
        let sync_commits = fsync == Fsync::Always;
        Ok(Self {
            allocated: wal.metadata()?.len(),
            sync_commits,
            direct: if sync_commits {
                DirectWal::open(&wal_dir.join("wal"))?
            } else {
                None
            },
            meta_dir: File::open(&wal_dir)?,
            wal,
            wal_dir,
            generation,
            pos: HEADER_BYTES,
            written: 0,
            dirty: HashSet::new(),
            stop,
            applier,
            groups: 0,
            applied,
            ends: HashMap::new(),
        })
    }

    pub(super) fn run(mut self, rx: &Receiver<Msg>) {
        while let Some(msg) = next_message(rx) {
            let mut group = Vec::new();
            let mut checkpoints = Vec::new();
            let mut next = Some(msg);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Append(job) => group.push(*job),
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
                || self.pos - HEADER_BYTES >= CHECKPOINT_BYTES
                || self.dirty.len() >= CHECKPOINT_FILES
            {
                let result = self.checkpoint();
                if let Err(e) = &result {
                    // A failed fsync may have dropped dirty pages (and cleared the error): never
                    // start a new WAL generation after one. The store stops; a restart replays the WAL.
                    tracing::error!(error = %e, "checkpoint failed; the store stops accepting writes and keeps the WAL");
                    self.stop.set(format!("checkpoint failed: {e}"));
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
        let stopped = self.stop.detail();
        let seq = self.groups + 1;
        let applied = self.applied.load(Ordering::Acquire);
        self.ends.retain(|_, &mut (_, last)| last > applied);
        let mut ready = Vec::with_capacity(group.len());
        let mut buf = Vec::new();
        for job in group {
            if let Some(detail) = &stopped {
                job.finish(Err(store_failed("*", detail)));
                continue;
            }
            // A batch ordered after one that failed fails too.
            if let Some(e) = job.log.failure() {
                job.finish(Err(e));
                continue;
            }
            let identity = job.files.identity;
            let checked = match self.ends.get(&identity) {
                // A batch that follows another of this group is checked with it.
                Some(&(end, last)) if last == seq && end == job.expected_len => Ok(()),
                // The applier may be writing earlier batches of the file meanwhile: it is as long
                // as what was acknowledged (read before the stat), or longer, up to where they end.
                Some(&(end, _)) if end == job.expected_len => {
                    tamper_check(&job, job.log.written_len()..=end)
                }
                _ => tamper_check(&job, job.expected_len..=job.expected_len),
            };
            match checked {
                Ok(()) => {
                    encode(&mut buf, self.generation, &job.payload);
                    self.ends
                        .insert(identity, (job.expected_len + job.data.len() as u64, seq));
                    if !self.dirty.contains(&job.files.data_path) {
                        self.dirty.insert(job.files.data_path.clone());
                    }
                    ready.push(job);
                }
                Err(e) => job.finish(Err(e)),
            }
        }
        if ready.is_empty() {
            return;
        }
        let durable = (|| -> io::Result<()> {
            fail::fail_point!("wal-write", |arg| Err(injected(arg)));
            self.grow(self.pos + buf.len() as u64)?;
            self.write_records(&buf)?;
            fail::fail_point!("wal-written", |_| std::process::abort());
            if self.sync_commits {
                fail::fail_point!("wal-sync", |arg| Err(injected(arg)));
                self.wal.sync_data()?;
                // The journal records syncs where they happen (`--fsync never` makes none).
                #[cfg(feature = "failpoints")]
                synced::record(
                    &self.wal_dir,
                    &[(self.wal_dir.join("wal"), self.pos + buf.len() as u64)],
                );
            }
            Ok(())
        })();
        if let Err(e) = durable {
            let detail = format!("write-ahead log write or fsync failed: {e}");
            tracing::error!(error = %e, "WAL write failed; the store stops accepting writes");
            self.stop.set(detail.clone());
            for job in ready {
                job.finish(Err(store_failed("*", &detail)));
            }
            return;
        }
        self.pos += buf.len() as u64;
        self.written += buf.len() as u64;
        self.groups = seq;
        let work = Work::Group {
            seq,
            jobs: ready,
            wal_bytes: self.written,
        };
        if self.applier.send(work).is_err() {
            // The applier panicked; the group's batches fail as they drop.
            self.stop
                .set("the thread writing session files stopped".into());
        }
    }

    fn checkpoint(&mut self) -> io::Result<()> {
        self.drain()?;
        if let Some(detail) = self.stop.detail() {
            return Err(io::Error::other(format!(
                "the store is stopped after a write failure: {detail}"
            )));
        }
        // One syncfs makes every session file, index and directory written since the last
        // checkpoint durable at once (they all live on the data dir's filesystem, which the
        // metadata dir shares; paths crossing a mount are refused), instead of one fsync each.
        fail::fail_point!("checkpoint-sync", |arg| Err(injected(arg)));
        let started = std::time::Instant::now();
        nix::unistd::syncfs(&self.meta_dir).map_err(io::Error::from)?;
        #[cfg(feature = "failpoints")]
        synced::record_paths(&self.wal_dir, &self.dirty);
        let files = self.dirty.len();
        self.dirty.clear();
        fail::fail_point!("checkpoint-synced", |_| std::process::abort());
        let wal_bytes = self.pos - HEADER_BYTES;
        self.next_generation()?;
        // Appends wait while it runs: operators can match latency spikes against this line.
        tracing::info!(
            files,
            wal_bytes,
            took_us = started.elapsed().as_micros(),
            "checkpoint"
        );
        Ok(())
    }

    /// Writes a group's records at `pos`: directly where the filesystem allows it, else through
    /// the page cache (from then on, if a direct write is refused).
    fn write_records(&mut self, buf: &[u8]) -> io::Result<()> {
        if let Some(direct) = &mut self.direct {
            match direct.write(buf, self.pos) {
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(error = %e, "the filesystem refused a direct WAL write; writing through the page cache from now on");
                    self.direct = None;
                }
                result => return result,
            }
        }
        self.wal.write_all_at(buf, self.pos)
    }

    /// Waits until the applier has written every group handed to it.
    fn drain(&self) -> io::Result<()> {
        let gone = || io::Error::other("the thread writing session files stopped");
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.applier.send(Work::Drain(tx)).map_err(|_| gone())?;
        rx.recv().map_err(|_| gone())
    }

    /// Makes a new generation current: its header slot is written and synced before any of its
    /// records, so the older records in the file are stale from then on.
    pub(super) fn next_generation(&mut self) -> io::Result<()> {
        let generation = self.generation + 1;
        let created = self.allocated < HEADER_BYTES;
        self.grow(PREALLOCATED)?;
        self.wal
            .write_all_at(&header_slot(generation), (generation % 2) * SLOT_BYTES)?;
        self.wal.sync_data()?;
        if created {
            sync_dir(&self.wal_dir)?;
        }
        self.generation = generation;
        self.pos = HEADER_BYTES;
        if let Some(direct) = &mut self.direct {
            direct.restart();
        }
        #[cfg(feature = "failpoints")]
        synced::record(&self.wal_dir, &[(self.wal_dir.join("wal"), self.pos)]);
        Ok(())
    }

    /// Zero-fills the file up to `end` (rounded up to [`GROW_BYTES`]), so that records overwrite
    /// allocated space; the caller's sync makes the new length durable.
    fn grow(&mut self, end: u64) -> io::Result<()> {
        if end <= self.allocated {
            return Ok(());
        }
        let target = end.div_ceil(GROW_BYTES) * GROW_BYTES;
        let zeros = vec![0; usize::try_from(GROW_BYTES).unwrap_or(usize::MAX)];
        while self.allocated < target {
            self.wal.write_all_at(&zeros, self.allocated)?;
            self.allocated += GROW_BYTES;
        }
        Ok(())
    }
}

/// The next message: polled for up to [`SPIN`], then waited for. `None` once every sender is gone.
fn next_message(rx: &Receiver<Msg>) -> Option<Msg> {
    let start = std::time::Instant::now();
    loop {
        match rx.try_recv() {
            Ok(msg) => return Some(msg),
            Err(std::sync::mpsc::TryRecvError::Disconnected) => return None,
            Err(std::sync::mpsc::TryRecvError::Empty) if start.elapsed() < SPIN => {
                std::thread::yield_now();
            }
            Err(std::sync::mpsc::TryRecvError::Empty) => return rx.recv().ok(),
        }
    }
}
