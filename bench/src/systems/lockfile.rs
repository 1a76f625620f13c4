//! Lock files, in process: `<file>.lock` created with O_CREAT|O_EXCL holding pid and time, polled
//! every 25 ms by waiters; appends are one O_APPEND write plus fdatasync; release unlinks the lock.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;

use super::files::read_files;
use super::{Client, Grant, KeepAlive, LossWatch, System};
use crate::history::Contents;

/// How often a waiter tries to create the lock file again.
const POLL: Duration = Duration::from_millis(25);

/// Session files and their locks under a fresh temp dir.
pub struct LockFiles {
    root: Arc<PathBuf>,
    next_client: AtomicU64,
    _dir: tempfile::TempDir,
}

impl LockFiles {
    /// A fresh temp dir for the session files.
    ///
    /// # Errors
    /// The temp dir cannot be created.
    pub fn new() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("fencepost-bench-lockfile-")
            .tempdir()?;
        Ok(Self {
            root: Arc::new(dir.path().to_owned()),
            next_client: AtomicU64::new(0),
            _dir: dir,
        })
    }
}

#[async_trait]
impl System for LockFiles {
    fn name(&self) -> &'static str {
        "lockfile"
    }

    fn transport(&self) -> &'static str {
        "fs"
    }

    fn expires(&self) -> bool {
        false
    }

    fn server_pid(&self) -> Option<u32> {
        None
    }

    async fn connect(&self, _ttl: Duration) -> Result<Box<dyn Client>> {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(Locker {
            root: Arc::clone(&self.root),
            client: n,
        }))
    }

    async fn contents(&self, sessions: &[String]) -> Result<Vec<(&'static str, Contents)>> {
        let root = Arc::clone(&self.root);
        let names = sessions.to_vec();
        let files = tokio::task::spawn_blocking(move || read_files(&root, &names)).await??;
        Ok(vec![("file", files)])
    }
}

/// One in-process client.
struct Locker {
    root: Arc<PathBuf>,
    client: u64,
}

fn lock_path(root: &Path, session: &str) -> PathBuf {
    root.join(format!("{session}.lock"))
}

/// Creates the lock file if nobody holds it; `Ok(false)` when it exists.
fn try_lock(root: &Path, session: &str, content: &str) -> Result<bool> {
    let path = lock_path(root, session);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match OpenOptions::new().write(true).create_new(true).open(&path) {
        Ok(mut f) => {
            f.write_all(content.as_bytes())?;
            Ok(true)
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e).with_context(|| format!("create {}", path.display())),
    }
}

/// True if the lock file still holds exactly what this grant wrote.
fn still_ours(root: &Path, grant: &Grant) -> bool {
    std::fs::read_to_string(lock_path(root, &grant.session)).is_ok_and(|c| c == grant.id)
}

fn unlock(root: &Path, grant: &Grant) -> Result<()> {
    if !still_ours(root, grant) {
        bail!("lock on {} is no longer ours", grant.session);
    }
    std::fs::remove_file(lock_path(root, &grant.session))?;
    Ok(())
}

fn append(root: &Path, grant: &Grant, lines: &[Vec<u8>], release: bool) -> Result<()> {
    if !still_ours(root, grant) {
        bail!("lock on {} is no longer ours", grant.session);
    }
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for line in lines {
        buf.extend_from_slice(line);
        buf.push(b'\n');
    }
    let path = root.join(&grant.session);
    let mut file: File = OpenOptions::new().create(true).append(true).open(&path)?;
    file.write_all(&buf)?;
    file.sync_data()?;
    if release {
        unlock(root, grant)?;
    }
    Ok(())
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await?
}

#[async_trait]
impl Client for Locker {
    async fn acquire(&mut self, session: &str) -> Result<Grant> {
        loop {
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            let content = format!(
                "pid {} time {nanos} client {}\n",
                std::process::id(),
                self.client
            );
            let (root, name, text) = (Arc::clone(&self.root), session.to_owned(), content.clone());
            if blocking(move || try_lock(&root, &name, &text)).await? {
                return Ok(Grant {
                    session: session.to_owned(),
                    token: None,
                    id: content,
                    ttl: Duration::ZERO,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn append(&mut self, grant: &Grant, lines: &[Vec<u8>], release: bool) -> Result<()> {
        let (root, grant, lines) = (Arc::clone(&self.root), grant.clone(), lines.to_vec());
        blocking(move || append(&root, &grant, &lines, release)).await
    }

    async fn release(&mut self, grant: &Grant) -> Result<()> {
        let (root, grant) = (Arc::clone(&self.root), grant.clone());
        blocking(move || unlock(&root, &grant)).await
    }

    async fn keepalive(&mut self) -> Result<Box<dyn KeepAlive>> {
        Ok(Box::new(Check {
            root: Arc::clone(&self.root),
        }))
    }

    async fn watch_loss(&mut self, grant: &Grant) -> Result<LossWatch> {
        bail!(
            "lock files never expire, so the loss of {} cannot be watched",
            grant.session
        )
    }
}

/// Lock files have no TTL to renew: "keeping alive" checks each lock file still holds our line.
struct Check {
    root: Arc<PathBuf>,
}

#[async_trait]
impl KeepAlive for Check {
    async fn renew(&mut self, grants: &[Grant]) -> Result<Vec<String>> {
        let (root, grants) = (Arc::clone(&self.root), grants.to_vec());
        blocking(move || {
            Ok(grants
                .iter()
                .filter(|g| !still_ours(&root, g))
                .map(|g| g.id.clone())
                .collect())
        })
        .await
    }
}
