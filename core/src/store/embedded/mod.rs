//! The embedded store: session files under a local data directory, made durable by a
//! group-committed write-ahead log.
//!
//! Layout: `<root>/<resource>` is the plain JSONL session file; `<root>/.fencepost/` holds the
//! data-dir lock, the token ceiling, the WAL and one index per resource under `index/`.

mod adopt;
mod fds;
mod index;
mod log;
mod paths;
mod replay;
mod tokens;
mod wal;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::oneshot;

pub use self::log::EmbeddedLog;
pub use self::replay::ReplayReport;
use self::tokens::Tokens;
use self::wal::Msg;
use crate::error::CoreError;
use crate::resource::ResourceName;
use crate::store::{ResourceLog, Store};

/// When the embedded store's write-ahead log is synced to stable storage.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Fsync {
    /// Each group of batches is made durable with one `fdatasync` before any of them is
    /// acknowledged: no acknowledged entry is lost, whatever fails.
    #[default]
    Always,
    /// Batches are acknowledged once the operating system has them (the write-ahead log is
    /// written through the page cache and never synced by a commit). A crash of the server process
    /// loses nothing; a power loss or kernel crash can lose acknowledged entries, and can leave a
    /// session that needs an operator: a session file with lines the log has no record of
    /// (refused as an external modification until adopted), or an index whose last lines were
    /// half written (`CORRUPT_METADATA`). Checkpoints and the token ceiling are still synced. For
    /// scratch data only.
    Never,
}

/// The embedded store of one data directory. Only one server may open a data directory.
#[derive(Debug)]
pub struct EmbeddedStore {
    root: PathBuf,
    _lock: File,
    tokens: Tokens,
    wal: Sender<Msg>,
    /// Why writes stopped, once a write, fsync or checkpoint failed.
    stopped: wal::Stopped,
    // std Mutex: map look-ups only, never held across an await or I/O.
    logs: Mutex<LogCache>,
    /// Loads are single-flight, so two instances of one resource's log never coexist.
    loading: tokio::sync::Mutex<()>,
    /// Caps how many logs keep descriptors open.
    fds: Arc<fds::FdBudget>,
    replayed: ReplayReport,
}

/// Refuses a metadata dir that is a link or on another filesystem than the data dir: a checkpoint
/// syncs the metadata dir's filesystem only, so the session files must share it.
fn one_filesystem(root: &Path, meta: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let link = match std::fs::symlink_metadata(meta) {
        Ok(link) => link,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if link.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "{} is a symbolic link; it must be a directory on the data dir's filesystem",
            meta.display()
        )));
    }
    if link.dev() != std::fs::metadata(root)?.dev() {
        return Err(io::Error::other(format!(
            "{} is on another filesystem than {}; the server's metadata must share the session \
             files' filesystem",
            meta.display(),
            root.display()
        )));
    }
    Ok(())
}

impl EmbeddedStore {
    /// Opens (creating if needed) the data directory with every commit synced ([`Fsync::Always`]).
    /// Blocking; call before serving.
    ///
    /// # Errors
    /// As [`EmbeddedStore::open_with`].
    pub fn open(root: &Path) -> io::Result<Self> {
        Self::open_with(root, Fsync::Always)
    }

    /// Opens (creating if needed) the data directory: takes its lock, replays the WAL, starts the
    /// writer, which syncs commits as `fsync` says. Blocking; call before serving.
    ///
    /// # Errors
    /// The data dir is in use by another server, or recovery failed (the message says where).
    pub fn open_with(root: &Path, fsync: Fsync) -> io::Result<Self> {
        std::fs::create_dir_all(root)?;
        let root = root.canonicalize()?;
        let meta = paths::meta_dir(&root);
        one_filesystem(&root, &meta)?;
        paths::probe_openat2(&root);
        std::fs::create_dir_all(meta.join("index"))?;
        let lock = take_lock(&meta.join("lock"), &root)?;
        let tokens = Tokens::load(meta.join("tokens"))?;

        let wal_path = meta.join("wal");
        let mut wal = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&wal_path)?;
        let mut bytes = wal::read_used(&mut wal)?;
        // Canary runs of the crash tests switch recovery off to prove their checks can fail.
        let skip_replay = (|| {
            fail::fail_point!("skip-replay", |_| true);
            false
        })();
        if skip_replay {
            // Keep the header (the generation) and drop every record.
            bytes.truncate(usize::try_from(wal::HEADER_BYTES).unwrap_or(usize::MAX));
        }
        let replayed = replay::replay(&root, &bytes).map_err(|e| {
            io::Error::other(format!(
                "recovery failed, {e}; the write-ahead log {} is kept untouched",
                wal_path.display()
            ))
        })?;
        paths::sync_dir(&meta)?;
        paths::sync_dir(&root)?;
        let (wal, stopped) = wal::spawn(wal, meta, replayed.generation, fsync)?;
        Ok(Self {
            root,
            _lock: lock,
            tokens,
            wal,
            stopped,
            logs: Mutex::new(LogCache::default()),
            loading: tokio::sync::Mutex::new(()),
            fds: Arc::new(fds::FdBudget::from_rlimit()),
            replayed,
        })
    }

    /// What start-up recovery did.
    #[must_use]
    pub fn replay_report(&self) -> &ReplayReport {
        &self.replayed
    }

    /// The canonical data directory.
    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, LogCache> {
        self.logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Logs kept loaded (open files, verified index) beyond those in use.
const CACHED_LOGS: usize = 512;

/// Loaded logs by resource, least recently used evicted first; a log in use elsewhere (someone
/// else holds its `Arc`) is never evicted, so at most one instance per resource exists.
#[derive(Debug, Default)]
struct LogCache {
    map: HashMap<ResourceName, (Arc<EmbeddedLog>, u64)>,
    clock: u64,
}

impl LogCache {
    fn get(&mut self, name: &ResourceName) -> Option<Arc<EmbeddedLog>> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(name).map(|(log, used)| {
            *used = clock;
            log.clone()
        })
    }

    fn insert(&mut self, name: ResourceName, log: Arc<EmbeddedLog>) {
        self.clock += 1;
        self.map.insert(name, (log, self.clock));
        if self.map.len() > CACHED_LOGS {
            let mut idle: Vec<(u64, ResourceName)> = self
                .map
                .iter()
                .filter(|(_, (log, _))| Arc::strong_count(log) == 1)
                .map(|(name, (_, used))| (*used, name.clone()))
                .collect();
            idle.sort_unstable();
            for (_, name) in idle.into_iter().take(CACHED_LOGS / 8) {
                self.map.remove(&name);
            }
        }
    }
}

fn take_lock(path: &Path, root: &Path) -> io::Result<File> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "data dir {} is in use by another fencepost server ({}); stop it or choose another --data-dir",
                    root.display(),
                    holder.trim()
                ),
            ));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(e),
    }
    file.set_len(0)?;
    writeln!(file, "pid {}", std::process::id())?;
    Ok(file)
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn open(&self, name: &ResourceName) -> Result<Arc<dyn ResourceLog>, CoreError> {
        if let Some(log) = self.cache().get(name) {
            return Ok(log);
        }
        let _loading = self.loading.lock().await;
        if let Some(log) = self.cache().get(name) {
            return Ok(log);
        }
        let (root, n, wal) = (self.root.clone(), name.clone(), self.wal.clone());
        let budget = self.fds.clone();
        let loaded = tokio::task::spawn_blocking(move || EmbeddedLog::load(&root, &n, wal, budget))
            .await
            .map_err(|e| CoreError::StorageFailed {
                resource: name.as_str().to_owned(),
                detail: e.to_string(),
            })??;
        let log = loaded.into_shared();
        self.cache().insert(name.clone(), log.clone());
        Ok(log)
    }

    async fn issue_token(&self, name: &ResourceName, floor: u64) -> Result<u64, CoreError> {
        self.tokens
            .next(floor)
            .await
            .map_err(|e| CoreError::StorageFailed {
                resource: name.as_str().to_owned(),
                detail: format!("raising the token ceiling failed: {e}"),
            })
    }

    async fn resources(&self) -> Result<Vec<ResourceName>, CoreError> {
        let index_root = paths::meta_dir(&self.root).join("index");
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let mut dirs = vec![index_root.clone()];
            while let Some(dir) = dirs.pop() {
                let Ok(listing) = std::fs::read_dir(&dir) else {
                    continue;
                };
                for entry in listing.flatten() {
                    let path = entry.path();
                    let Ok(kind) = entry.file_type() else {
                        continue;
                    };
                    if kind.is_dir() {
                        dirs.push(path);
                    } else if let Some(name) = path
                        .strip_prefix(&index_root)
                        .ok()
                        .and_then(|p| p.to_str())
                        .and_then(|p| p.strip_suffix(".idx"))
                        .and_then(|p| ResourceName::parse(p).ok())
                    {
                        out.push(name);
                    }
                }
            }
            out.sort();
            out
        })
        .await
        .map_err(|e| CoreError::StorageFailed {
            resource: "*".into(),
            detail: e.to_string(),
        })
    }

    fn failure(&self) -> Option<String> {
        self.stopped.detail()
    }

    async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.wal.send(Msg::Checkpoint(tx)).is_ok() {
            match rx.await {
                Ok(Ok(())) => tracing::info!("store checkpointed"),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "final checkpoint failed; the WAL will be replayed")
                }
                Err(_) => {}
            }
        }
    }
}
#[cfg(test)]
mod tests;
