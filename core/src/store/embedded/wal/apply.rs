//! The applier thread: writes each durable group's lines into the session files and their
//! indexes, then acknowledges its batches; and the flusher, which starts the write-back of those
//! files ahead of the checkpoint.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};

#[cfg(feature = "failpoints")]
use super::injected;
use super::{Files, Job, Stop, store_failed};

/// WAL bytes after which the applier has the flusher start writing session files back, so that
/// the checkpoint's `syncfs` finds little left to write and stalls appends only briefly. Small,
/// because commits that meet a write-back on the device wait for it: with 8 MiB, each write-back
/// took ~6 ms and slowed the commits around it to 2-7 ms (about 30 slow commits in 5 s of W2);
/// with 1 MiB, about 4.
const PREFLUSH_BYTES: u64 = 1 << 20;
/// The page size write-back works in (4 KiB on every Linux platform fencepost targets).
const PAGE: u64 = 4096;

/// What the writer hands the applier.
pub(super) enum Work {
    /// A group whose WAL records are durable (written only, with [`super::Fsync::Never`]). `seq` numbers groups in commit order; `wal_bytes`
    /// is how many WAL bytes were written since the start, this group's included.
    Group {
        seq: u64,
        jobs: Vec<Job>,
        wal_bytes: u64,
    },
    /// Answered once every group handed over before it is written (the checkpoint waits for it).
    Drain(SyncSender<()>),
}

/// Starts the applier; it counts the groups it finished in `applied` and stops the store on a
/// failed write.
pub(super) fn spawn(stop: Arc<Stop>, applied: Arc<AtomicU64>) -> io::Result<Sender<Work>> {
    let mut applier = Applier {
        stop,
        applied,
        flusher: spawn_flusher()?,
        unflushed: HashMap::new(),
        preflushed: 0,
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("fencepost-apply".into())
        .spawn(move || {
            let _guard = StopOnPanic(applier.stop.clone());
            applier.run(&rx);
        })?;
    Ok(tx)
}

/// Stops the store if the applier panics: the writer must not commit batches nobody will write.
struct StopOnPanic(Arc<Stop>);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0
                .set("the thread writing session files panicked".into());
        }
    }
}

struct Applier {
    stop: Arc<Stop>,
    applied: Arc<AtomicU64>,
    flusher: SyncSender<Vec<Arc<Files>>>,
    /// Files written since they were last handed to the flusher, by identity.
    unflushed: HashMap<(u64, u64), Arc<Files>>,
    /// `wal_bytes` when the flusher was last asked to write back.
    preflushed: u64,
}

impl Applier {
    fn run(&mut self, rx: &Receiver<Work>) {
        while let Ok(work) = rx.recv() {
            match work {
                Work::Group {
                    seq,
                    jobs,
                    wal_bytes,
                } => {
                    self.apply(jobs);
                    self.applied.store(seq, Ordering::Release);
                    self.preflush(wal_bytes);
                }
                Work::Drain(reply) => {
                    // The checkpoint's syncfs writes back everything handed over so far.
                    self.unflushed.clear();
                    let _ = reply.send(());
                }
            }
        }
    }

    fn apply(&mut self, jobs: Vec<Job>) {
        for job in jobs {
            // A batch of this file ordered before this one failed (which stopped the store): this
            // one must not land after a gap. One ordered after this one failing (a later group's
            // WAL write, say) does not matter: this one is durable and is written.
            if self.stop.is_stopped()
                && let Some(e) = job.log.failed_before(job.expected_len)
            {
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
                    self.stop.set(detail.clone());
                    Err(store_failed(job.name.as_str(), &detail))
                }
            };
            job.finish(reply);
        }
    }

    fn preflush(&mut self, wal_bytes: u64) {
        if wal_bytes - self.preflushed < PREFLUSH_BYTES {
            return;
        }
        let batch: Vec<Arc<Files>> = self.unflushed.values().cloned().collect();
        // A busy flusher gets these files with the next batch.
        if self.flusher.try_send(batch).is_ok() {
            self.preflushed = wal_bytes;
            self.unflushed.clear();
        }
    }
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
