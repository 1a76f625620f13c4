//! The embedded store: session files under a local data directory, made durable by a
//! group-committed write-ahead log.
//!
//! Layout: `<root>/<resource>` is the plain JSONL session file; `<root>/.fencepost/` holds the
//! data-dir lock, the token ceiling, the WAL and one index per resource under `index/`.

mod adopt;
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
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use tokio::sync::oneshot;

pub use self::log::EmbeddedLog;
pub use self::replay::ReplayReport;
use self::tokens::Tokens;
use self::wal::Msg;
use crate::error::CoreError;
use crate::resource::ResourceName;
use crate::store::{ResourceLog, Store};

/// The embedded store of one data directory. Only one server may open a data directory.
#[derive(Debug)]
pub struct EmbeddedStore {
    root: PathBuf,
    _lock: File,
    tokens: Tokens,
    wal: Sender<Msg>,
    file_ids: Arc<AtomicU64>,
    // std Mutex: map look-ups only, never held across an await or I/O.
    logs: Mutex<HashMap<ResourceName, Weak<EmbeddedLog>>>,
    replayed: ReplayReport,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the data directory: takes its lock, replays the WAL, starts the
    /// writer. Blocking; call before serving.
    ///
    /// # Errors
    /// The data dir is in use by another server, or recovery failed (the message says where).
    pub fn open(root: &Path) -> io::Result<Self> {
        let meta = paths::meta_dir(root);
        std::fs::create_dir_all(meta.join("index"))?;
        let root = root.canonicalize()?;
        let meta = paths::meta_dir(&root);
        let lock = take_lock(&meta.join("lock"), &root)?;
        let tokens = Tokens::load(meta.join("tokens"))?;

        let wal_path = meta.join("wal");
        let mut wal = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&wal_path)?;
        let mut bytes = Vec::new();
        wal.read_to_end(&mut bytes)?;
        let replayed = replay::replay(&root, &bytes).map_err(|e| {
            io::Error::other(format!(
                "recovery failed, {e}; the write-ahead log {} is kept untouched",
                wal_path.display()
            ))
        })?;
        wal.set_len(0)?;
        wal.sync_all()?;
        paths::sync_dir(&meta)?;
        paths::sync_dir(&root)?;
        let wal = wal::spawn(wal, meta)?;
        Ok(Self {
            root,
            _lock: lock,
            tokens,
            wal,
            file_ids: Arc::new(AtomicU64::new(0)),
            logs: Mutex::new(HashMap::new()),
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

    fn cached(&self, name: &ResourceName) -> Option<Arc<EmbeddedLog>> {
        let logs = self
            .logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        logs.get(name).and_then(Weak::upgrade)
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
        if let Some(log) = self.cached(name) {
            return Ok(log);
        }
        let (root, n, wal, ids) = (
            self.root.clone(),
            name.clone(),
            self.wal.clone(),
            self.file_ids.clone(),
        );
        let loaded = tokio::task::spawn_blocking(move || EmbeddedLog::load(&root, &n, wal, ids))
            .await
            .map_err(|e| CoreError::StorageFailed {
                resource: name.as_str().to_owned(),
                detail: e.to_string(),
            })??;
        let mut logs = self
            .logs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Another caller may have loaded it meanwhile: keep exactly one log per resource.
        if let Some(existing) = logs.get(name).and_then(Weak::upgrade) {
            return Ok(existing);
        }
        let log = Arc::new(loaded);
        logs.insert(name.clone(), Arc::downgrade(&log));
        if logs.len() > 4096 && logs.len().is_power_of_two() {
            logs.retain(|_, w| w.strong_count() > 0);
        }
        Ok(log)
    }

    async fn issue_token(&self, name: &ResourceName) -> Result<u64, CoreError> {
        self.tokens
            .next()
            .await
            .map_err(|e| CoreError::StorageFailed {
                resource: name.as_str().to_owned(),
                detail: format!("raising the token ceiling failed: {e}"),
            })
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
