//! One resource's log in the embedded store: its files, in-memory index and head.

use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::index::{BatchRecord, Index};
use super::paths::{self, ResourcePaths};
use super::wal::{self, Files, Job, Msg};
use crate::error::CoreError;
use crate::model::{Head, StoredEntry, chain};
use crate::resource::ResourceName;
use crate::store::{NewBatch, ResourceLog};

/// Most bytes one read returns (at least one entry).
const READ_BYTES: u64 = 4 << 20;

/// A resource's log in the embedded store.
#[derive(Debug)]
pub struct EmbeddedLog {
    name: ResourceName,
    root: PathBuf,
    paths: ResourcePaths,
    wal: Sender<Msg>,
    // std Mutex: held only for in-memory updates, never across an await or I/O.
    state: Mutex<LogState>,
}

#[derive(Debug)]
struct LogState {
    files: Option<Arc<Files>>,
    index: Index,
    head: Head,
    blocked: Option<CoreError>,
    /// An append is between its length check and its head update: the file may legitimately be
    /// longer than the head, so on-disk checks must wait.
    in_flight: bool,
}

/// Clears `in_flight` however an append ends.
struct InFlight<'a>(&'a EmbeddedLog);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.lock().in_flight = false;
    }
}

impl EmbeddedLog {
    /// Loads and verifies a resource (blocking I/O). Creates nothing.
    pub(super) fn load(
        root: &Path,
        name: &ResourceName,
        wal: Sender<Msg>,
    ) -> Result<Self, CoreError> {
        paths::check(root, name)?;
        let paths = ResourcePaths::new(root, name);
        let mut state = LogState {
            files: None,
            index: Index::default(),
            head: Head::EMPTY,
            blocked: None,
            in_flight: false,
        };
        let data = paths::open_regular(name, &paths.data, false, false)?;
        let index_bytes = match std::fs::read(&paths.index) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(paths::io_error(name, &paths.index, &e)),
        };
        let (records, index_valid) =
            Index::parse_records(index_bytes.as_deref().unwrap_or_default()).map_err(|detail| {
                CoreError::CorruptMetadata {
                    resource: name.as_str().to_owned(),
                    detail,
                }
            })?;
        let modified = |detail: String| CoreError::ExternalModification {
            resource: name.as_str().to_owned(),
            detail,
        };
        match data {
            None if !records.is_empty() => {
                state.blocked = Some(modified(format!(
                    "deleted: the session file is gone; {} entries were recorded",
                    records.iter().map(|r| r.lens.len()).sum::<usize>()
                )));
                state.index = Index::build(records, &[]).0;
                state.head = state.index.head();
            }
            None => {}
            Some(file) => {
                let bytes = std::fs::read(&paths.data)
                    .map_err(|e| paths::io_error(name, &paths.data, &e))?;
                let (index, mismatch) = Index::build(records, &bytes);
                state.head = index.head();
                state.index = index;
                if let Some(m) = mismatch {
                    state.blocked = Some(modified(m.describe()));
                }
                state.files = Some(Arc::new(open_files(
                    name,
                    &paths,
                    file,
                    index_valid as u64,
                )?));
            }
        }
        Ok(Self {
            name: name.clone(),
            root: root.to_path_buf(),
            paths,
            wal,
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Creates the session file, an empty index and their directories (blocking I/O). Returns the
/// directories whose entries changed, to be fsync'd at the next checkpoint.
fn create_files(
    root: &Path,
    name: &ResourceName,
    paths: &ResourcePaths,
) -> Result<(Arc<Files>, Vec<PathBuf>), CoreError> {
    let mut dirs = paths::create_parents(root, name)?;
    let data = paths::open_regular(name, &paths.data, true, false)?
        .expect("create(true) always yields a file");
    fail::fail_point!("created-data", |_| std::process::abort());
    dirs.push(parent(&paths.data));
    let index_dir = parent(&paths.index);
    let mut missing = index_dir.clone();
    while !missing.exists() {
        dirs.push(parent(&missing));
        missing = parent(&missing);
    }
    std::fs::create_dir_all(&index_dir).map_err(|e| paths::io_error(name, &index_dir, &e))?;
    dirs.push(index_dir);
    Ok((Arc::new(open_files(name, paths, data, 0)?), dirs))
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn open_files(
    name: &ResourceName,
    paths: &ResourcePaths,
    data: std::fs::File,
    index_valid: u64,
) -> Result<Files, CoreError> {
    use std::os::unix::fs::MetadataExt;
    let meta = data
        .metadata()
        .map_err(|e| paths::io_error(name, &paths.data, &e))?;
    let index_dir = parent(&paths.index);
    if !index_dir.is_dir() {
        // A session file with no index yet (written before fencepost, or a crash mid-create).
        paths::create_dir_all_synced(&index_dir)
            .map_err(|e| paths::io_error(name, &index_dir, &e))?;
    }
    let index = paths::open_regular(name, &paths.index, true, true)?.expect("created");
    // Cut a torn, never-acknowledged index tail so the next record starts on a fresh line.
    let index_len = index
        .metadata()
        .map_err(|e| paths::io_error(name, &paths.index, &e))?
        .len();
    if index_len > index_valid {
        index
            .set_len(index_valid)
            .map_err(|e| paths::io_error(name, &paths.index, &e))?;
    }
    Ok(Files {
        data,
        index,
        data_path: paths.data.clone(),
        identity: (meta.dev(), meta.ino()),
    })
}

#[async_trait]
impl ResourceLog for EmbeddedLog {
    fn head(&self) -> Head {
        self.lock().head
    }

    fn exists(&self) -> bool {
        self.lock().files.is_some()
    }

    fn last_token(&self) -> u64 {
        self.lock().index.batches.last().map_or(0, |b| b.token)
    }

    fn blocked(&self) -> Option<CoreError> {
        let (files, len) = {
            let st = self.lock();
            if let Some(err) = &st.blocked {
                return Some(err.clone());
            }
            match (&st.files, st.in_flight) {
                (Some(files), false) => (files.clone(), st.head.length),
                _ => return None,
            }
        };
        // Stat outside the lock; the answer counts only if no append moved the head meanwhile.
        let detail = wal::changed_on_disk(&files, len)?;
        let st = self.lock();
        (!st.in_flight && st.head.length == len).then(|| CoreError::ExternalModification {
            resource: self.name.as_str().to_owned(),
            detail,
        })
    }

    async fn append(&self, batch: NewBatch) -> Result<Head, CoreError> {
        let (record, hashes, data, files) = {
            let mut st = self.lock();
            if let Some(err) = &st.blocked {
                return Err(err.clone());
            }
            st.in_flight = true;
            let head = st.head;
            let mut hashes = Vec::with_capacity(batch.entries.len());
            let mut hash = head.chain_hash;
            let mut data = Vec::with_capacity(batch.entries.iter().map(|e| e.len() + 1).sum());
            for line in &batch.entries {
                hash = chain(&hash, line);
                hashes.push(hash);
                data.extend_from_slice(line);
                data.push(b'\n');
            }
            let record = BatchRecord {
                epoch: batch.epoch,
                token: batch.token,
                seq: head.next_seq,
                offset: head.length,
                lens: batch
                    .entries
                    .iter()
                    .map(|e| u32::try_from(e.len()).unwrap_or(u32::MAX))
                    .collect(),
                owner: batch.owner,
                time: batch.time_unix_micros,
                hash: hex::encode(hash),
            };
            (record, hashes, data, st.files.clone())
        };
        let _in_flight = InFlight(self);
        let (files, new_dirs) = match files {
            Some(f) => (f, Vec::new()),
            None => {
                let (root, name, paths) =
                    (self.root.clone(), self.name.clone(), self.paths.clone());
                let (f, dirs) =
                    tokio::task::spawn_blocking(move || create_files(&root, &name, &paths))
                        .await
                        .map_err(|e| CoreError::StorageFailed {
                            resource: self.name.as_str().to_owned(),
                            detail: e.to_string(),
                        })??;
                self.lock().files = Some(f.clone());
                (f, dirs)
            }
        };
        let index_line = record.to_line();
        let (reply, rx) = oneshot::channel();
        let job = Job {
            name: self.name.clone(),
            files,
            expected_len: record.offset,
            frame: wal::frame(&self.name, &index_line, &data),
            data,
            index_line,
            new_dirs,
            reply,
        };
        self.wal
            .send(Msg::Append(job))
            .map_err(|_| CoreError::ShuttingDown)?;
        let outcome = rx.await.map_err(|_| CoreError::ShuttingDown)?;
        let mut st = self.lock();
        if let Err(e) = outcome {
            st.blocked = Some(e.clone());
            return Err(e);
        }
        let n = record.lens.len() as u64;
        let length = record.offset + record.byte_len();
        st.head = Head {
            epoch: record.epoch,
            next_seq: record.seq + n,
            length,
            chain_hash: *hashes.last().expect("batches are never empty"),
        };
        st.index.push(record, &hashes);
        Ok(st.head)
    }

    async fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEntry>, CoreError> {
        let (metas, batches, files) = {
            let st = self.lock();
            let start = usize::try_from(from_seq.max(1) - 1).unwrap_or(usize::MAX);
            let Some(files) = st.files.clone() else {
                return Ok(Vec::new());
            };
            let mut end = st.index.entries.len().min(start.saturating_add(limit));
            // Bound the bytes held per read (entries may be up to the batch limit each).
            let mut bytes = 0u64;
            for (i, e) in st.index.entries.iter().enumerate().take(end).skip(start) {
                bytes += u64::from(e.len);
                if bytes > READ_BYTES && i > start {
                    end = i;
                    break;
                }
            }
            if start >= end {
                return Ok(Vec::new());
            }
            let metas = st.index.entries[start..end].to_vec();
            let first_batch = metas[0].batch as usize;
            let last_batch = metas[metas.len() - 1].batch as usize;
            (
                metas,
                st.index.batches[first_batch..=last_batch].to_vec(),
                files,
            )
        };
        let first_seq = from_seq.max(1);
        let name = self.name.clone();
        let path = self.paths.data.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::FileExt;
            let start = metas[0].offset;
            let last = metas[metas.len() - 1];
            let mut buf =
                vec![0u8; usize::try_from(last.offset + u64::from(last.len) - start).unwrap_or(0)];
            files
                .data
                .read_exact_at(&mut buf, start)
                .map_err(|e| paths::io_error(&name, &path, &e))?;
            let base = metas[0].batch as usize;
            Ok(metas
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let b = &batches[m.batch as usize - base];
                    let off = usize::try_from(m.offset - start).unwrap_or(0);
                    StoredEntry {
                        seq: first_seq + i as u64,
                        epoch: b.epoch,
                        token: b.token,
                        owner: b.owner.clone(),
                        time_unix_micros: b.time,
                        chain_hash: m.hash,
                        data: buf[off..off + m.len as usize].to_vec(),
                    }
                })
                .collect())
        })
        .await
        .map_err(|e| CoreError::StorageFailed {
            resource: self.name.as_str().to_owned(),
            detail: e.to_string(),
        })?
    }

    async fn adopt(&self) -> Result<String, CoreError> {
        // Sync and reset the WAL first: a later replay must not write old bytes over what is adopted.
        let (tx, rx) = oneshot::channel();
        self.wal
            .send(Msg::Checkpoint(tx))
            .map_err(|_| CoreError::ShuttingDown)?;
        rx.await
            .map_err(|_| CoreError::ShuttingDown)?
            .map_err(|e| paths::io_error(&self.name, &self.paths.index, &e))?;
        let (root, name, paths, wal) = (
            self.root.clone(),
            self.name.clone(),
            self.paths.clone(),
            self.wal.clone(),
        );
        let (detail, fresh) = tokio::task::spawn_blocking(move || {
            let detail = super::adopt::adopt(&root, &name, &paths)?;
            Ok::<_, CoreError>((detail, EmbeddedLog::load(&root, &name, wal)?))
        })
        .await
        .map_err(|e| CoreError::StorageFailed {
            resource: self.name.as_str().to_owned(),
            detail: e.to_string(),
        })??;
        let fresh = fresh
            .state
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *self.lock() = fresh;
        Ok(detail)
    }

    fn first_seq_at_epoch(&self, epoch: u64) -> u64 {
        let st = self.lock();
        let i = st.index.batches.partition_point(|b| b.epoch < epoch);
        st.index.batches.get(i).map_or(st.head.next_seq, |b| b.seq)
    }
}
