//! One resource's log in the embedded store: its files, in-memory index and head.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, Weak};

use async_trait::async_trait;
use tokio::sync::{oneshot, watch};

use super::fds::FdBudget;
use super::index::{BatchRecord, Index};
use super::paths::{self, ResourcePaths};
use super::wal::{self, Files, Job, Msg};
use crate::error::CoreError;
use crate::model::{ChainHash, Head, StoredEntry, chain};
use crate::resource::ResourceName;
use crate::store::{NewBatch, Recorded, ResourceLog};

/// Most bytes one read returns (at least one entry).
const READ_BYTES: u64 = 4 << 20;

/// A resource's log in the embedded store.
#[derive(Debug)]
pub struct EmbeddedLog {
    name: ResourceName,
    root: PathBuf,
    paths: ResourcePaths,
    wal: Sender<Msg>,
    budget: Arc<FdBudget>,
    /// This log itself, for the descriptor budget (set by [`EmbeddedLog::into_shared`]).
    me: Weak<EmbeddedLog>,
    // std Mutex: held only for in-memory updates, never across an await or I/O.
    state: Mutex<LogState>,
    /// Ticks each time the writer finishes one of this log's batches (see `durable`).
    progress: watch::Sender<()>,
}

#[derive(Debug)]
struct LogState {
    /// The requests of the newest batches the log held when it was opened (see
    /// [`EmbeddedLog::recorded`]).
    recorded: HashMap<RequestKey, Recorded>,
    /// Open descriptors, if any: closed under descriptor pressure, reopened on use.
    files: Option<Arc<Files>>,
    /// (device, inode) of the session file once it exists; a reopen must find the same file.
    identity: Option<(u64, u64)>,
    /// Used since the descriptor budget last looked (CLOCK bit).
    used: bool,
    /// The durable batches: written to the WAL, the session file and the index.
    index: Index,
    /// The head after every ordered batch, including those the writer has not finished.
    head: Head,
    /// Token of the newest ordered batch.
    token: u64,
    /// Ordered batches the writer has not finished: the file is shorter than `head` says until
    /// then, so on-disk checks wait.
    pending: usize,
    blocked: Option<CoreError>,
    /// Offset of the first batch that failed: the batches ordered after it fail too, those
    /// ordered before it (durable, and possibly still being written) do not.
    failed_from: Option<u64>,
}

impl EmbeddedLog {
    /// Loads and verifies a resource (blocking I/O). Creates nothing.
    pub(super) fn load(
        root: &Path,
        name: &ResourceName,
        wal: Sender<Msg>,
        budget: Arc<FdBudget>,
    ) -> Result<Self, CoreError> {
        paths::check(root, name)?;
        let paths = ResourcePaths::new(root, name);
        let mut state = LogState {
            recorded: HashMap::new(),
            files: None,
            identity: None,
            used: true,
            index: Index::default(),
            head: Head::EMPTY,
            token: 0,
            pending: 0,
            blocked: None,
            failed_from: None,
        };
        let data = paths::open_regular(root, name, &paths.data, false, false)?;
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
                state.token = state.index.last_token();
            }
            None => {}
            Some(file) => {
                let bytes = std::fs::read(&paths.data)
                    .map_err(|e| paths::io_error(name, &paths.data, &e))?;
                let (index, mismatch) = Index::build(records, &bytes);
                // Canary runs of the tamper tests switch detection off to prove they can fail.
                let mismatch = (|| {
                    fail::fail_point!("tamper-check-off", |_| None);
                    mismatch
                })();
                state.head = index.head();
                state.token = index.last_token();
                state.index = index;
                if let Some(m) = mismatch {
                    state.blocked = Some(modified(m.describe()));
                }
                let files = open_files(root, name, &paths, file, index_valid as u64)?;
                state.identity = Some(files.identity);
                state.files = Some(Arc::new(files));
            }
        }
        // Acknowledged lines that replay could not put back: the file lacks them, however
        // consistent it looks now.
        if state.blocked.is_none() {
            match paths::held_back(root, name) {
                Ok(held) => {
                    if let Some(path) = held.first() {
                        state.blocked = Some(modified(format!(
                            "lines acknowledged before a restart could not be put back into it \
                             and are kept in {}; put them into the file if they belong there, \
                             then adopt it (adopting accepts the file as it is and moves the \
                             kept lines to .fencepost/held-adopted/)",
                            path.display()
                        )));
                    }
                }
                // Blocked rather than open: it may lack acknowledged lines.
                Err(e) => {
                    state.blocked = Some(modified(format!(
                        "cannot tell whether lines acknowledged before a restart were kept \
                         aside for it: {}: {e}",
                        paths::held_root(root).display()
                    )));
                }
            }
        }
        state.recorded = requests_of(&mut state.index.batches);
        Ok(Self {
            name: name.clone(),
            root: root.to_path_buf(),
            paths,
            wal,
            budget,
            me: Weak::new(),
            state: Mutex::new(state),
            progress: watch::Sender::new(()),
        })
    }

    /// Shares the log and enrols its descriptors in the budget.
    pub(super) fn into_shared(self) -> Arc<Self> {
        let log = Arc::new_cyclic(|me| Self {
            me: me.clone(),
            ..self
        });
        if log.lock().files.is_some() {
            log.budget.opened(log.me.clone());
        }
        log
    }

    /// Closes the descriptors if the log is idle and was not used since the last pass; clears
    /// the CLOCK bit otherwise. True if it holds no descriptors now.
    pub(super) fn try_close_files(&self) -> bool {
        let mut st = self.lock();
        if st.files.is_none() {
            return true;
        }
        if st.used || st.pending > 0 {
            st.used = false;
            return false;
        }
        st.files = None;
        true
    }

    /// The open files, reopening them if the budget closed them (`None`: the file does not exist
    /// yet). A reopen that finds a different file reports it as replaced.
    fn files(&self) -> Result<Option<Arc<Files>>, CoreError> {
        let identity = {
            let mut st = self.lock();
            st.used = true;
            if let Some(files) = &st.files {
                return Ok(Some(files.clone()));
            }
            match st.identity {
                Some(identity) => identity,
                None => return Ok(None),
            }
        };
        let modified = |detail: &str| CoreError::ExternalModification {
            resource: self.name.as_str().to_owned(),
            detail: detail.to_owned(),
        };
        let data = paths::open_regular(&self.root, &self.name, &self.paths.data, false, false)?
            .ok_or_else(|| modified("deleted: the session file is gone"))?;
        let files = open_files(&self.root, &self.name, &self.paths, data, u64::MAX)?;
        if files.identity != identity {
            return Err(modified(
                "replaced: the session file is a different file now",
            ));
        }
        let files = {
            let mut st = self.lock();
            st.files.get_or_insert_with(|| Arc::new(files)).clone()
        };
        self.budget.opened(self.me.clone());
        Ok(Some(files))
    }

    /// How long the session file is once every batch acknowledged so far is written: the writer's
    /// lower bound for the file's length while later batches are being written.
    pub(super) fn written_len(&self) -> u64 {
        self.lock().index.head().length
    }

    /// The error that stopped this log, if a batch at `offset` or before it failed: a batch
    /// ordered after a failed one fails too.
    pub(super) fn failed_before(&self, offset: u64) -> Option<CoreError> {
        let st = self.lock();
        st.failed_from
            .is_some_and(|from| from <= offset)
            .then(|| st.blocked.clone())
            .flatten()
    }

    /// The error that stopped this log, if any: the writer fails a batch ordered after a failed one.
    pub(super) fn failure(&self) -> Option<CoreError> {
        self.lock().blocked.clone()
    }

    /// The writer is done with one of this log's batches: on success it is durable, in the
    /// session file and index, and readable; a failure stops the log, and the head goes back to
    /// what is durable (every batch ordered after this one fails too).
    pub(super) fn finished(
        &self,
        record: BatchRecord,
        hashes: &[ChainHash],
        result: Result<(), CoreError>,
    ) {
        {
            let mut st = self.lock();
            st.pending = st.pending.saturating_sub(1);
            match result {
                // The request is on disk; in memory the lease layer remembers it.
                Ok(()) => st.index.push(
                    BatchRecord {
                        request: None,
                        lease: None,
                        ..record
                    },
                    hashes,
                ),
                Err(e) => {
                    st.blocked.get_or_insert(e);
                    st.failed_from = Some(
                        st.failed_from
                            .map_or(record.offset, |f| f.min(record.offset)),
                    );
                }
            }
            // A stopped log's head is what is durable (a failure always stops it); a batch ordered
            // before the failed one can still finish after it.
            if st.blocked.is_some() {
                st.head = st.index.head();
                st.token = st.index.last_token();
            }
        }
        self.progress.send_replace(());
    }

    /// The files to append to, creating the session file and its index if they do not exist.
    async fn files_or_create(&self) -> Result<Arc<Files>, CoreError> {
        if let Some(files) = self.files()? {
            return Ok(files);
        }
        let (root, name, paths) = (self.root.clone(), self.name.clone(), self.paths.clone());
        let files = tokio::task::spawn_blocking(move || create_files(&root, &name, &paths))
            .await
            .map_err(|e| CoreError::StorageFailed {
                resource: self.name.as_str().to_owned(),
                detail: e.to_string(),
            })??;
        {
            let mut st = self.lock();
            st.identity = Some(files.identity);
            st.files = Some(files.clone());
        }
        self.budget.opened(self.me.clone());
        Ok(files)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Creates the session file, an empty index and their directories (blocking I/O). The new
/// directory entries become durable at the next checkpoint (the WAL recreates them until then).
fn create_files(
    root: &Path,
    name: &ResourceName,
    paths: &ResourcePaths,
) -> Result<Arc<Files>, CoreError> {
    paths::create_parents(root, name)?;
    let data = paths::open_regular(root, name, &paths.data, true, false)?
        .expect("create(true) always yields a file");
    fail::fail_point!("created-data", |_| std::process::abort());
    let index_dir = parent(&paths.index);
    std::fs::create_dir_all(&index_dir).map_err(|e| paths::io_error(name, &index_dir, &e))?;
    Ok(Arc::new(open_files(root, name, paths, data, 0)?))
}

fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

fn open_files(
    root: &Path,
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
    let index = paths::open_regular(root, name, &paths.index, true, true)?.expect("created");
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
        self.lock().identity.is_some()
    }

    fn last_token(&self) -> u64 {
        self.lock().token
    }

    fn blocked(&self) -> Option<CoreError> {
        let (identity, len) = {
            let st = self.lock();
            if let Some(err) = &st.blocked {
                return Some(err.clone());
            }
            match (st.identity, st.pending) {
                (Some(identity), 0) => (identity, st.head.length),
                _ => return None,
            }
        };
        // Stat outside the lock; the answer counts only if no append moved the head meanwhile.
        let detail = wal::changed_on_disk(&self.paths.data, identity, len..=len)?;
        let st = self.lock();
        (st.pending == 0 && st.head.length == len).then(|| CoreError::ExternalModification {
            resource: self.name.as_str().to_owned(),
            detail,
        })
    }

    async fn append(&self, batch: NewBatch) -> Result<Head, CoreError> {
        if let Some(err) = self.failure() {
            return Err(err);
        }
        let files = self.files_or_create().await?;
        // The caller orders appends, so the head stays put while the batch is prepared, unless
        // a failing batch resets it (checked again below).
        let head = self.head();
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
            request: batch.request.as_ref().map(|r| r.request_id.clone()),
            lease: batch.request.and_then(|r| r.lease_id),
        };
        let next = Head {
            epoch: record.epoch,
            next_seq: record.seq + record.lens.len() as u64,
            length: record.offset + record.byte_len(),
            chain_hash: hash,
        };
        let index_line = record.to_line();
        let job = Job {
            name: self.name.clone(),
            files,
            expected_len: record.offset,
            payload: wal::payload(&self.name, &index_line, &data),
            data,
            index_line,
            log: self.me.upgrade().expect("logs in use are shared"),
            record: Some(record),
            hashes,
        };
        let mut st = self.lock();
        if let Some(err) = &st.blocked {
            return Err(err.clone());
        }
        if st.head != head {
            return Err(CoreError::StorageFailed {
                resource: self.name.as_str().to_owned(),
                detail: "the head moved while the batch was prepared".into(),
            });
        }
        // Sent under the lock, so the writer gets this log's batches in the order of their heads.
        if let Err(std::sync::mpsc::SendError(msg)) = self.wal.send(Msg::Append(Box::new(job))) {
            if let Msg::Append(mut job) = msg {
                // Never ordered: nothing to report (and this lock is held).
                job.record = None;
            }
            return Err(CoreError::ShuttingDown);
        }
        st.head = next;
        st.token = batch.token;
        st.pending += 1;
        Ok(next)
    }

    async fn durable(&self, head: Head) -> Result<(), CoreError> {
        // Subscribed before looking, so a batch finished after the look wakes us.
        let mut progress = self.progress.subscribe();
        loop {
            {
                let st = self.lock();
                let Some(last) = head.next_seq.checked_sub(2) else {
                    return Ok(()); // the empty head
                };
                let missing = || CoreError::StorageFailed {
                    resource: self.name.as_str().to_owned(),
                    detail: format!(
                        "the batch ending at seq {} is not in the log: it failed, and the log was adopted since",
                        last + 1
                    ),
                };
                if let Some(entry) = usize::try_from(last)
                    .ok()
                    .and_then(|i| st.index.entries.get(i))
                {
                    // Seqs are reused after an adoption: only this batch's hash says it is there.
                    return if entry.hash == head.chain_hash {
                        Ok(())
                    } else {
                        Err(missing())
                    };
                }
                // A failure of a batch ordered after this one does not fail it: it is still being
                // written, and finishes on its own.
                if let Some(err) = &st.blocked
                    && st.failed_from.is_none_or(|from| from < head.length)
                {
                    return Err(err.clone());
                }
                if st.pending == 0 {
                    return Err(missing());
                }
            }
            // The sender lives in `self`, so this only returns on a tick.
            let _ = progress.changed().await;
        }
    }

    async fn read(&self, from_seq: u64, limit: usize) -> Result<Vec<StoredEntry>, CoreError> {
        let Some(files) = self.files()? else {
            return Ok(Vec::new());
        };
        let (metas, batches) = {
            let st = self.lock();
            let start = usize::try_from(from_seq.max(1) - 1).unwrap_or(usize::MAX);
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
            (metas, st.index.batches[first_batch..=last_batch].to_vec())
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
        let (root, name, paths, wal, budget) = (
            self.root.clone(),
            self.name.clone(),
            self.paths.clone(),
            self.wal.clone(),
            self.budget.clone(),
        );
        let (detail, fresh) = tokio::task::spawn_blocking(move || {
            let detail = super::adopt::adopt(&root, &name, &paths)?;
            Ok::<_, CoreError>((detail, EmbeddedLog::load(&root, &name, wal, budget)?))
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
        let reopened = fresh.files.is_some();
        *self.lock() = fresh;
        // Whoever waits on a batch looks again, at the adopted log.
        self.progress.send_replace(());
        if reopened {
            self.budget.opened(self.me.clone());
        }
        Ok(detail)
    }

    fn first_seq_at_epoch(&self, epoch: u64) -> u64 {
        let st = self.lock();
        let i = st.index.batches.partition_point(|b| b.epoch < epoch);
        st.index
            .batches
            .get(i)
            .map_or(st.index.entries.len() as u64 + 1, |b| b.seq)
    }

    fn recorded(
        &self,
        request_id: &str,
        lease_id: Option<&str>,
        client_id: &str,
    ) -> Option<Recorded> {
        let st = self.lock();
        // A blocked file may lack the batch: the blocking error is the answer then.
        if st.blocked.is_some() {
            return None;
        }
        st.recorded
            .get(&request_key(request_id, lease_id, client_id))
            .copied()
    }
}

/// How many of the batches a log holds when it is opened keep their requests for
/// [`EmbeddedLog::recorded`]: retries come within seconds, not thousands of batches later.
const RECORDED_LOOKBACK: usize = 4096;

/// A batch's request: (request id, lease id for Append, client id for AppendOnce).
type RequestKey = (String, Option<String>, String);

fn request_key(request_id: &str, lease_id: Option<&str>, client_id: &str) -> RequestKey {
    match lease_id {
        Some(lease) => (request_id.to_owned(), Some(lease.to_owned()), String::new()),
        None => (request_id.to_owned(), None, client_id.to_owned()),
    }
}

/// The requests of the last [`RECORDED_LOOKBACK`] batches, by key; every batch's request is then
/// dropped from memory (it stays in the index file).
fn requests_of(batches: &mut [BatchRecord]) -> HashMap<RequestKey, Recorded> {
    let from = batches.len().saturating_sub(RECORDED_LOOKBACK);
    let mut found = HashMap::new();
    for (i, b) in batches.iter_mut().enumerate() {
        let (Some(request), lease) = (b.request.take(), b.lease.take()) else {
            continue;
        };
        if i < from || b.lens.is_empty() {
            continue;
        }
        let head = b.head_after();
        let key = request_key(&request, lease.as_deref(), &b.owner.client_id);
        found.insert(
            key,
            Recorded {
                first_seq: b.seq,
                last_seq: head.next_seq - 1,
                head,
                token: b.token,
            },
        );
    }
    found
}
