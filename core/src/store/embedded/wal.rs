//! The write-ahead log and its group-commit writer thread.
//!
//! Every accepted batch is framed into one WAL record; the writer drains all pending batches,
//! writes their records, and makes them durable with one `fdatasync` for the whole group, across
//! resources. Only then does it write the lines into the session files and their indexes (page
//! cache), and acknowledge. Session files are fsync'd at checkpoints, after which the WAL starts a
//! new generation; on start, [`super::replay`] re-applies the current generation's records.
//!
//! The file is reused, never truncated: records overwrite space that is already allocated (zeros
//! written when the writer starts, [`PREALLOCATED`] bytes: a whole generation), so a commit's
//! `fdatasync` writes data blocks only, with no file-size change for the journal to commit. A
//! header block holds the current generation in two checksummed slots (a torn header write leaves
//! the other); every record carries its generation and a CRC, and decoding stops at the first
//! record that is torn, stale (an older generation) or never written.
//!
//! Named failpoints (cargo feature `failpoints`, set with `FAILPOINTS=name=return`, tests only)
//! sit at each durability boundary: `wal-write`, `wal-written`, `wal-sync`, `wal-synced`,
//! `data-write`, `data-written`, `index-written`, `checkpoint-sync`, `checkpoint-synced`, and
//! `created-data` in [`super::log`]. The `*-written`/`*-synced` ones abort the process; the
//! others inject EIO (or ENOSPC with `return(enospc)`). Two switch a guard off for canary runs:
//! `skip-replay` (no recovery at start) and `tamper-check-off` (no external-change checks).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use tokio::sync::oneshot;

use super::index::BatchRecord;
use super::log::EmbeddedLog;
use super::paths::sync_dir;
use crate::error::CoreError;
use crate::model::ChainHash;
use crate::resource::ResourceName;

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
/// The header block; records start after it.
pub const HEADER_BYTES: u64 = 4096;
/// Where each of the two header slots sits.
const SLOT_BYTES: u64 = 512;
/// Header slot: `[magic 8][generation u64 LE][crc32 u32 LE of the first 16 bytes]`.
const MAGIC: &[u8; 8] = b"FPWAL\x002\n";
/// Record frame: `[len u32 LE][crc32 u32 LE][generation u64 LE][payload]`; len and crc cover
/// generation and payload.
const FRAME_HEAD: usize = 8;
/// WAL bytes after which the writer has the flusher start writing session files back, so that the
/// checkpoint's `syncfs` finds little left to write and stalls appends only briefly. Small, because
/// commits that meet a write-back on the device wait for it: with 8 MiB, each write-back took
/// ~6 ms and slowed the commits around it to 2-7 ms (about 30 slow commits in 5 s of W2); with
/// 1 MiB, about 4.
const PREFLUSH_BYTES: u64 = 1 << 20;
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
    /// A batch the writer never finished (it stopped or panicked) fails, so nobody waits forever.
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

/// One record's payload: `name \n record-json \n data` (the writer frames it).
pub fn payload(name: &ResourceName, record_line: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.as_str().len() + 1 + record_line.len() + data.len());
    out.extend_from_slice(name.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(record_line);
    out.extend_from_slice(data);
    out
}

/// Appends one framed record of `generation` to `out`.
fn encode(out: &mut Vec<u8>, generation: u64, payload: &[u8]) {
    let start = out.len();
    let len = 8 + payload.len();
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + FRAME_HEAD..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One header slot for `generation`.
fn header_slot(generation: u64) -> [u8; 20] {
    let mut slot = [0; 20];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&slot[..16]);
    slot[16..].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// The newest generation a valid header slot names.
fn read_header(bytes: &[u8]) -> Option<u64> {
    (0..2)
        .filter_map(|i| {
            let at = usize::try_from(i * SLOT_BYTES).ok()?;
            let slot = bytes.get(at..at + 20)?;
            let crc = u32::from_le_bytes(slot[16..].try_into().ok()?);
            (&slot[..8] == MAGIC && crc32fast::hash(&slot[..16]) == crc)
                .then(|| u64::from_le_bytes(slot[8..16].try_into().expect("8 bytes")))
        })
        .max()
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

/// The current generation's records, decoded from the WAL file (or the part [`read_used`] read).
#[derive(Debug)]
pub struct Contents<'a> {
    /// The generation the header names (0 for a new, empty WAL).
    pub generation: u64,
    /// Its records, in commit order.
    pub records: Vec<Record<'a>>,
}

/// Decodes a WAL file: its generation and that generation's records, up to the first torn,
/// stale or unwritten frame.
///
/// # Errors
/// Neither header slot is valid although records follow: the header was damaged after it was
/// made durable, so which records are current cannot be known.
pub fn decode(bytes: &[u8]) -> Result<Contents<'_>, String> {
    let body = bytes
        .get(usize::try_from(HEADER_BYTES).unwrap_or(usize::MAX)..)
        .unwrap_or_default();
    let Some(generation) = read_header(bytes) else {
        // A header is made durable before any record is written, so without one there can only be
        // a torn first header and no records.
        return match next_frame(body, None) {
            Some(_) => Err("the write-ahead log header is damaged but records follow it".into()),
            None => Ok(Contents {
                generation: 0,
                records: Vec::new(),
            }),
        };
    };
    let mut records = Vec::new();
    let mut rest = body;
    while let Some((record, used)) = next_frame(rest, Some(generation)) {
        records.push(record);
        rest = &rest[used..];
    }
    Ok(Contents {
        generation,
        records,
    })
}

/// Reads the WAL file from the start as far as [`decode`] will look: the header and the current
/// generation's records, up to the first frame that is torn, stale or never written. The rest of
/// the file (zeros, or older generations' records) stays unread, so a start does not hold a whole
/// preallocated WAL in memory.
///
/// # Errors
/// Reading the file failed.
pub fn read_used(file: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut eof = false;
    // Reads until `bytes` holds `len` bytes (in steps of at least `READ_STEP`) or the file ends.
    let mut fill = |bytes: &mut Vec<u8>, len: usize| -> io::Result<bool> {
        while bytes.len() < len && !eof {
            let want = (len - bytes.len()).max(READ_STEP) as u64;
            eof = file.by_ref().take(want).read_to_end(bytes)? == 0;
        }
        Ok(bytes.len() >= len)
    };
    let header = usize::try_from(HEADER_BYTES).unwrap_or(usize::MAX);
    fill(&mut bytes, header)?;
    let generation = read_header(&bytes);
    let mut at = header;
    loop {
        // Length, CRC and generation first: past the current generation's last record the bytes
        // are usually the middle of an older record, whose "length" may be anything; a frame that
        // is not of the current generation is not read on.
        fill(&mut bytes, at + FRAME_HEAD + 8)?;
        let Some((len, of)) = bytes.get(at..).and_then(frame_head) else {
            break;
        };
        if len < 8 || generation.is_some_and(|g| g != of) {
            break;
        }
        fill(
            &mut bytes,
            at.saturating_add(FRAME_HEAD).saturating_add(len),
        )?;
        match next_frame(&bytes[at..], generation) {
            // Without a header, decoding looks at the first frame only.
            Some((_, used)) if generation.is_some() => at += used,
            _ => break,
        }
    }
    Ok(bytes)
}

/// How much more of the WAL [`read_used`] reads at a time.
const READ_STEP: usize = 1 << 20;

/// The length field and the generation of the frame at the start of `bytes` (unchecked), if its
/// first 16 bytes are there.
fn frame_head(bytes: &[u8]) -> Option<(usize, u64)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let generation = u64::from_le_bytes(bytes.get(FRAME_HEAD..FRAME_HEAD + 8)?.try_into().ok()?);
    Some((len, generation))
}

/// The frame at the start of `bytes`, if it is whole, checks out, and is of `generation` (any
/// generation if `None`); with its length.
fn next_frame(bytes: &[u8], generation: Option<u64>) -> Option<(Record<'_>, usize)> {
    let (len, record_generation) = frame_head(bytes)?;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(FRAME_HEAD..FRAME_HEAD + len)?;
    if len < 8 || crc32fast::hash(body) != crc || generation.is_some_and(|g| g != record_generation)
    {
        return None;
    }
    let payload = &body[8..];
    let n1 = payload.iter().position(|b| *b == b'\n')?;
    let n2 = payload[n1 + 1..].iter().position(|b| *b == b'\n')?;
    let name = std::str::from_utf8(&payload[..n1]).ok()?;
    let record = Record {
        name,
        record_line: &payload[n1 + 1..n1 + 1 + n2],
        data: &payload[n1 + 2 + n2..],
    };
    Some((record, FRAME_HEAD + len))
}

/// Starts a new generation on the WAL file (after replay of the old one: `generation` is the one
/// just replayed), durably, then the writer thread.
///
/// # Errors
/// The header could not be written and synced.
pub fn spawn(wal: File, wal_dir: PathBuf, generation: u64) -> io::Result<Sender<Msg>> {
    let allocated = wal.metadata()?.len();
    let flusher = spawn_flusher()?;
    let mut writer = Writer {
        wal,
        wal_dir,
        generation,
        pos: HEADER_BYTES,
        preflushed: HEADER_BYTES,
        unflushed: HashMap::new(),
        allocated,
        dirty: HashSet::new(),
        broken: None,
        flusher,
    };
    writer.next_generation()?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fencepost-wal".into())
        .spawn(move || writer.run(&rx))?;
    Ok(tx)
}

/// Starts the flusher: a thread that starts the write-back of the session files and indexes it is
/// handed (the complete pages of each; the partly written last page stays cached for the next
/// append). It asks for write-back only (`posix_fadvise(DONTNEED)` writes dirty pages without
/// waiting and without a device cache flush, then drops the clean ones), so the commits' own
/// `fdatasync`s do not queue behind cache flushes. It only moves work ahead of the checkpoint,
/// whose `syncfs` makes everything durable and decides; a failure here is logged and left to it.
fn spawn_flusher() -> io::Result<SyncSender<Vec<Arc<Files>>>> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Arc<Files>>>(1);
    std::thread::Builder::new()
        .name("fencepost-flush".into())
        .spawn(move || {
            while let Ok(batch) = rx.recv() {
                for files in batch {
                    for file in [&files.data, &files.index] {
                        if let Err(e) = write_back_full_pages(file) {
                            tracing::warn!(path = %files.data_path.display(), error = %e, "early write-back failed; the checkpoint will retry and decide");
                        }
                    }
                }
            }
        })?;
    Ok(tx)
}

/// Starts the write-back of the complete pages of `file` and drops them from the cache.
fn write_back_full_pages(file: &File) -> io::Result<()> {
    use rustix::fs::{Advice, AtFlags, StatxFlags, fadvise, statx};
    // Size only: asking for timestamps would give the file fine-grained ones (see `changed_on_disk`).
    let size = statx(file, "", AtFlags::EMPTY_PATH, StatxFlags::SIZE)?.stx_size;
    let pages = size & !(PAGE - 1);
    if let Some(len) = std::num::NonZeroU64::new(pages) {
        fadvise(file, 0, Some(len), Advice::DontNeed)?;
    }
    Ok(())
}

/// The page size write-back works in (4 KiB on every Linux platform fencepost targets).
const PAGE: u64 = 4096;

struct Writer {
    wal: File,
    wal_dir: PathBuf,
    /// The generation records are written in.
    generation: u64,
    /// Where the next record goes.
    pos: u64,
    /// `pos` when the flusher was last asked to write back.
    preflushed: u64,
    flusher: SyncSender<Vec<Arc<Files>>>,
    /// Files written since they were last handed to the flusher, by identity.
    unflushed: HashMap<(u64, u64), Arc<Files>>,
    /// The file's length: space up to here is allocated and needs no size change to overwrite.
    allocated: u64,
    // Session files written since the last checkpoint (paths only: no descriptor is pinned).
    dirty: HashSet<PathBuf>,
    broken: Option<String>,
}

impl Writer {
    fn run(mut self, rx: &Receiver<Msg>) {
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
        // Where each session file ends after the batches of this group accepted so far.
        let mut ends: HashMap<(u64, u64), u64> = HashMap::new();
        for job in group {
            if let Some(detail) = &self.broken {
                job.finish(Err(store_failed("*", detail)));
                continue;
            }
            // A batch ordered after one that failed fails too.
            if let Some(e) = job.log.failure() {
                job.finish(Err(e));
                continue;
            }
            let identity = job.files.identity;
            // A batch that follows another of this group is checked with it (its file is not
            // written yet); the first one is checked on disk.
            let checked = match ends.get(&identity) {
                Some(&end) if end == job.expected_len => Ok(()),
                _ => tamper_check(&job),
            };
            match checked {
                Ok(()) => {
                    encode(&mut buf, self.generation, &job.payload);
                    ends.insert(identity, job.expected_len + job.data.len() as u64);
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
            self.wal.write_all_at(&buf, self.pos)?;
            fail::fail_point!("wal-written", |_| std::process::abort());
            fail::fail_point!("wal-sync", |arg| Err(injected(arg)));
            self.wal.sync_data()
        })();
        if let Err(e) = durable {
            let detail = format!("write-ahead log write or fsync failed: {e}");
            tracing::error!(error = %e, "WAL write failed; the store stops accepting writes");
            for job in ready {
                job.finish(Err(store_failed("*", &detail)));
            }
            self.broken = Some(detail);
            return;
        }
        self.pos += buf.len() as u64;
        if self.pos - self.preflushed >= PREFLUSH_BYTES {
            let batch: Vec<Arc<Files>> = self.unflushed.values().cloned().collect();
            // A busy flusher gets these files with the next batch.
            if self.flusher.try_send(batch).is_ok() {
                self.preflushed = self.pos;
                self.unflushed.clear();
            }
        }
        #[cfg(feature = "failpoints")]
        synced::record(&self.wal_dir, &[(self.wal_dir.join("wal"), self.pos)]);
        for job in ready {
            // An earlier batch of this file failed to be written (which also stopped the store):
            // this one must not land after a gap.
            if let Some(e) = self.broken.as_ref().and_then(|_| job.log.failure()) {
                job.finish(Err(e));
                continue;
            }
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
                    self.unflushed
                        .entry(job.files.identity)
                        .or_insert_with(|| job.files.clone());
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
            job.finish(reply);
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
        let started = std::time::Instant::now();
        nix::unistd::syncfs(&self.wal).map_err(io::Error::from)?;
        #[cfg(feature = "failpoints")]
        synced::record_paths(&self.wal_dir, &self.dirty);
        let files = self.dirty.len();
        self.dirty.clear();
        self.unflushed.clear();
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

    /// Makes a new generation current: its header slot is written and synced before any of its
    /// records, so the older records in the file are stale from then on.
    fn next_generation(&mut self) -> io::Result<()> {
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
        self.preflushed = HEADER_BYTES;
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

/// How long the writer polls for the next batch after a commit before it sleeps.
const SPIN: std::time::Duration = std::time::Duration::from_micros(250);

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
/// deleted, or a different length. One `statx`; in-place edits are found by the full check on open.
///
/// The `statx` asks for type, inode and size only. Asking for timestamps (as a full `lstat` does)
/// makes the kernel give the file fine-grained timestamps on its next write, so every append
/// would dirty its inode, and on ext4 every WAL `fdatasync` then writes an inode table block too
/// (measured: fdatasync p50 143 µs without, 207 µs with).
pub fn changed_on_disk(path: &Path, identity: (u64, u64), expected_len: u64) -> Option<String> {
    fail::fail_point!("tamper-check-off", |_| None);
    let len = match identity_and_len(path) {
        Ok((found, regular, len)) => {
            if found != identity || !regular {
                return Some("replaced: the session file is a different file now".into());
            }
            len
        }
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

/// ((device, inode), is a regular file, length) of `path` itself (not a symlink's target), from a
/// `statx` that asks for nothing else; a full `lstat` where `statx` is missing (old kernels,
/// seccomp profiles) or the filesystem did not fill those fields.
fn identity_and_len(path: &Path) -> io::Result<((u64, u64), bool, u64)> {
    use rustix::fs::{AtFlags, CWD, StatxFlags, makedev, statx};
    let want = StatxFlags::TYPE | StatxFlags::INO | StatxFlags::SIZE;
    match statx(CWD, path, AtFlags::SYMLINK_NOFOLLOW, want) {
        Ok(st) if StatxFlags::from_bits_retain(st.stx_mask).contains(want) => {
            let dev = makedev(st.stx_dev_major, st.stx_dev_minor);
            let regular = u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFREG;
            Ok(((dev, st.stx_ino), regular, st.stx_size))
        }
        Ok(_) | Err(rustix::io::Errno::NOSYS | rustix::io::Errno::PERM) => {
            use std::os::unix::fs::MetadataExt;
            let m = std::fs::symlink_metadata(path)?;
            Ok(((m.dev(), m.ino()), m.file_type().is_file(), m.len()))
        }
        Err(e) => Err(e.into()),
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

    fn record(generation: u64, epoch: u32, data: &[u8]) -> Vec<u8> {
        let name = ResourceName::parse("a/b.jsonl").unwrap();
        let mut out = Vec::new();
        let line = format!("{{\"epoch\":{epoch}}}\n");
        encode(&mut out, generation, &payload(&name, line.as_bytes(), data));
        out
    }

    fn file(generation: u64, records: &[Vec<u8>], tail: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0; HEADER_BYTES as usize];
        let at = ((generation % 2) * SLOT_BYTES) as usize;
        bytes[at..at + 20].copy_from_slice(&header_slot(generation));
        for r in records {
            bytes.extend(r);
        }
        bytes.extend(tail);
        bytes
    }

    #[test]
    fn records_round_trip_and_decoding_stops_at_a_torn_frame() {
        let (a, b) = (record(3, 1, b"{}\n{}\n"), record(3, 2, b"{\"x\":1}\n"));
        let torn = &record(3, 3, b"{}\n")[..10];
        let bytes = file(3, &[a.clone(), b.clone()], torn);
        let contents = decode(&bytes).unwrap();
        assert_eq!(contents.generation, 3);
        assert_eq!(contents.records.len(), 2);
        assert_eq!(contents.records[0].name, "a/b.jsonl");
        assert_eq!(contents.records[0].record_line, b"{\"epoch\":1}");
        assert_eq!(contents.records[1].data, b"{\"x\":1}\n");

        let mut flipped = file(3, &[a, b], &[]);
        flipped[HEADER_BYTES as usize + 20] ^= 1;
        assert_eq!(decode(&flipped).unwrap().records.len(), 0);
    }

    #[test]
    fn start_up_reads_only_as_far_as_decoding_looks() {
        // Reads `bytes`, checks it stopped within a step of the three records, and decodes them.
        let three_records_read = |bytes: &[u8]| {
            let read = read_used(&mut io::Cursor::new(bytes)).unwrap();
            let most = HEADER_BYTES as usize + READ_STEP;
            assert!(read.len() <= most, "{} > {most}", read.len());
            assert_eq!(decode(&read).unwrap().records.len(), 3);
        };
        let records: Vec<_> = (0..3).map(|i| record(7, i, b"{}\n")).collect();
        let zeros = vec![0; 3 * READ_STEP];
        three_records_read(&file(7, &records, &zeros));

        // A record longer than a read step is read whole; a torn one ends the reading.
        let big = record(7, 3, &vec![b'x'; 2 * READ_STEP]);
        let torn = &record(7, 4, b"{}\n")[..12];
        let mut bytes = file(7, &[records[0].clone(), big], torn);
        bytes.extend(&zeros);
        let read = read_used(&mut io::Cursor::new(&bytes)).unwrap();
        assert_eq!(decode(&read).unwrap().records.len(), 2);

        // Past the last record, the middle of an older generation's record is not read on, even
        // where its bytes say "a long frame follows".
        let older = record(6, 0, &vec![0xff; 2 * READ_STEP]);
        let mut bytes = file(7, &records, &older[40..]);
        bytes.extend(&zeros);
        three_records_read(&bytes);

        // A damaged header with a record after it is still seen as such.
        let mut damaged = file(7, &records, &[]);
        damaged[SLOT_BYTES as usize] ^= 1; // generation 7 is in the odd slot
        let read = read_used(&mut io::Cursor::new(&damaged)).unwrap();
        assert!(decode(&read).is_err());

        // A short or empty file is read whole.
        assert!(
            read_used(&mut io::Cursor::new(&[] as &[u8]))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            read_used(&mut io::Cursor::new(&[1u8; 10])).unwrap(),
            [1u8; 10]
        );
    }

    #[test]
    fn records_of_an_older_generation_are_stale() {
        // Generation 5 overwrote the start of generation 4's space, then stopped.
        let old: Vec<_> = (0..3).map(|i| record(4, i, b"{}\n")).collect();
        let mut bytes = file(4, &old, &[]);
        let new = record(5, 9, b"{}\n");
        assert_eq!(new.len(), old[0].len());
        let at = SLOT_BYTES as usize; // generation 5's slot
        bytes[at..at + 20].copy_from_slice(&header_slot(5));
        let start = HEADER_BYTES as usize;
        bytes[start..start + new.len()].copy_from_slice(&new);
        let contents = decode(&bytes).unwrap();
        assert_eq!(contents.generation, 5);
        assert_eq!(contents.records.len(), 1);
        assert_eq!(contents.records[0].record_line, b"{\"epoch\":9}");
    }

    #[test]
    fn a_torn_header_slot_falls_back_to_the_other_and_no_header_means_no_records() {
        let rec = record(6, 1, b"{}\n");
        let mut bytes = file(6, std::slice::from_ref(&rec), &[]);
        let at = SLOT_BYTES as usize; // generation 7's slot
        bytes[at..at + 20].copy_from_slice(&header_slot(7));
        bytes[at + 9] ^= 0xff; // generation 7's header write tore
        let contents = decode(&bytes).unwrap();
        assert_eq!((contents.generation, contents.records.len()), (6, 1));

        assert_eq!(decode(&[]).unwrap().generation, 0);
        assert_eq!(decode(&vec![0; 8192]).unwrap().records.len(), 0);
        let mut headless = file(6, &[rec], &[]);
        headless[..SLOT_BYTES as usize].fill(0);
        let err = decode(&headless).unwrap_err();
        assert!(err.contains("header is damaged"), "{err}");
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
