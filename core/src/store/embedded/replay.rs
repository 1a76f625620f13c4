//! Start-up recovery: re-apply the write-ahead log to the session files and indexes.
//!
//! Every WAL record was durable before its batch was acknowledged (with `--fsync never`, only
//! written: a power loss can then lose acknowledged records); session files and indexes are only
//! guaranteed durable at checkpoints. Replay rewrites each record's bytes at its recorded
//! offset (idempotent), appends index lines the index lacks, and syncs both. A torn record at the
//! end of the current generation was never acknowledged and is dropped. It first checks that the
//! file and its index can take the records (the file was not deleted or cut short, the index
//! continues where the records start, the path is still safe); a resource that fails is left as
//! it is and its records are kept aside.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::index::{BatchRecord, Index};
use super::paths::{self, ResourcePaths, sync_dir};
use super::wal;
use crate::error::CoreError;
use crate::resource::ResourceName;

/// What replay did.
#[derive(Debug, Default)]
pub struct ReplayReport {
    /// Records re-applied.
    pub records: usize,
    /// Resources touched.
    pub resources: usize,
    /// The WAL generation replayed (0: a new WAL).
    pub generation: u64,
    /// Files holding the lines of resources whose session file changed while the server was
    /// down (see [`replay`]).
    pub held_back: Vec<PathBuf>,
}

/// Applies the WAL file's current generation (`wal_bytes`) under `root`.
///
/// A resource whose session file, path or index was changed while the server was down (deleted,
/// truncated, replaced by a directory or link, index damaged) is not written to: its lines are
/// kept in a file under `.fencepost/held/` instead, and the load-time check then stops appends to
/// it.
///
/// # Errors
/// A description naming the resource that could not be restored, or the WAL's damage; the WAL
/// must then be kept.
pub fn replay(root: &Path, wal_bytes: &[u8]) -> Result<ReplayReport, String> {
    let wal::Contents {
        generation,
        records,
    } = wal::decode(wal_bytes)?;
    let mut report = ReplayReport {
        records: records.len(),
        generation,
        ..ReplayReport::default()
    };
    let mut order: Vec<&str> = Vec::new();
    let mut by_name: HashMap<&str, Vec<&wal::Record<'_>>> = HashMap::new();
    for rec in &records {
        by_name
            .entry(rec.name)
            .or_insert_with(|| {
                order.push(rec.name);
                Vec::new()
            })
            .push(rec);
    }
    report.resources = order.len();
    for name in order {
        match apply(root, generation, name, &by_name[name])
            .map_err(|e| format!("replaying {name}: {e}"))?
        {
            Applied::Restored => {}
            Applied::HeldBack { why, kept_in } => {
                tracing::error!(
                    resource = name,
                    problem = %why,
                    kept_in = %kept_in.display(),
                    "the session file changed while the server was down; its acknowledged lines \
                     from the write-ahead log were not written into it but kept aside, and it \
                     refuses appends until an operator adopts or restores it"
                );
                report.held_back.push(kept_in);
            }
        }
    }
    Ok(report)
}

/// What became of one resource's records.
enum Applied {
    /// Written into the session file and index.
    Restored,
    /// Kept aside: the session file or index is not what the server left.
    HeldBack { why: String, kept_in: PathBuf },
}

/// Why a resource's records cannot be put back where they belong.
enum Refusal {
    /// The session file, its path or its index was changed while the server was down: writing
    /// would overwrite someone else's bytes or build on a broken index.
    Foreign(String),
    /// An I/O error: recovery must stop and keep the WAL.
    Io(String),
}

impl From<CoreError> for Refusal {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidResource { reason, .. } => Self::Foreign(reason),
            e => Self::Io(e.to_string()),
        }
    }
}

fn io(e: io::Error) -> Refusal {
    Refusal::Io(e.to_string())
}

fn apply(
    root: &Path,
    generation: u64,
    name: &str,
    records: &[&wal::Record<'_>],
) -> Result<Applied, String> {
    let name = ResourceName::parse(name).map_err(|e| e.to_string())?;
    let mut batches = Vec::with_capacity(records.len());
    for rec in records {
        let batch: BatchRecord =
            serde_json::from_slice(rec.record_line).map_err(|e| e.to_string())?;
        if batch.byte_len() != rec.data.len() as u64 {
            return Err(format!(
                "WAL record for seq {} has inconsistent lengths",
                batch.seq
            ));
        }
        batches.push((batch, rec.data));
    }
    match restore(root, &name, &batches) {
        Ok(()) => {
            // An earlier start that held these same records back (and then failed on another
            // resource) left a copy that is now in the file.
            forget_held_copy(root, generation, &name, &batches)
                .map_err(|e| format!("removing a copy held back earlier: {e}"))?;
            Ok(Applied::Restored)
        }
        Err(Refusal::Io(e)) => Err(e),
        Err(Refusal::Foreign(why)) => {
            let kept_in = hold_back(root, generation, &name, &batches)
                .map_err(|e| format!("keeping its records aside: {e}"))?;
            Ok(Applied::HeldBack { why, kept_in })
        }
    }
}

/// Puts the batches back into the session file and index, after checking that both are still
/// what the server left: nothing is written unless every batch fits.
fn restore(
    root: &Path,
    name: &ResourceName,
    batches: &[(BatchRecord, &[u8])],
) -> Result<(), Refusal> {
    let paths = ResourcePaths::new(root, name);
    paths::check(root, name)?;
    let index_bytes = match std::fs::read(&paths.index) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) if e.kind() == io::ErrorKind::IsADirectory => {
            return Err(Refusal::Foreign(format!(
                "its index {} is a directory",
                paths.index.display()
            )));
        }
        Err(e) => return Err(io(e)),
    };
    // After power loss the index may end in scrambled, never-synced lines; keep the valid prefix
    // if the WAL continues right after it.
    let (indexed, valid) = Index::parse_valid_prefix(&index_bytes);
    let mut next_seq = indexed.last().map_or(1, |r| r.seq + r.lens.len() as u64);
    let mut new_lines = Vec::new();
    for (batch, _) in batches {
        if batch.seq > next_seq {
            return Err(Refusal::Foreign(format!(
                "its index ends before seq {next_seq} but the write-ahead log continues at seq {}",
                batch.seq
            )));
        }
        if batch.seq == next_seq {
            new_lines.extend_from_slice(&batch.to_line());
            next_seq += batch.lens.len() as u64;
        }
    }
    let existing = paths::open_regular(root, name, &paths.data, false, false)?;
    check_data(existing.as_ref(), batches).map_err(|e| match e {
        Refusal::Foreign(why) => Refusal::Foreign(format!("{}: {why}", paths.data.display())),
        e => e,
    })?;

    let mut dirs = paths::create_parents(root, name)?;
    let data = match existing {
        Some(file) => file,
        None => paths::open_regular(root, name, &paths.data, true, false)?.expect("created"),
    };
    let index_dir = paths
        .index
        .parent()
        .expect("index has a parent")
        .to_path_buf();
    std::fs::create_dir_all(&index_dir).map_err(io)?;
    dirs.extend(
        index_dir
            .ancestors()
            .take_while(|d| d.starts_with(root))
            .map(Path::to_path_buf),
    );
    dirs.push(
        paths
            .data
            .parent()
            .expect("data has a parent")
            .to_path_buf(),
    );
    for (batch, bytes) in batches {
        data.write_all_at(bytes, batch.offset).map_err(io)?;
    }
    let mut index = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.index)
        .map_err(io)?;
    index.set_len(valid as u64).map_err(io)?;
    index.write_all(&new_lines).map_err(io)?;
    data.sync_data().map_err(io)?;
    index.sync_data().map_err(io)?;
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        sync_dir(&dir).map_err(io)?;
    }
    Ok(())
}

/// Checks that the file is still the one the batches belong to, as far as its length can tell:
/// it exists unless the log creates it, and each batch starts at or before its end (as the
/// batches before it leave it). What the file holds inside the batches' ranges is not compared:
/// those bytes were never synced, so after a power loss they may read back as anything, and the
/// log is their only authority.
fn check_data(file: Option<&File>, batches: &[(BatchRecord, &[u8])]) -> Result<(), Refusal> {
    let Some(first) = batches.first() else {
        return Ok(());
    };
    let Some(file) = file else {
        // A file created after the last checkpoint may be lost with it; one the log only adds to
        // existed at the checkpoint, which synced it, so it was deleted.
        return if first.0.offset == 0 {
            Ok(())
        } else {
            Err(Refusal::Foreign(format!(
                "deleted: the file is missing, and the write-ahead log adds to it from byte {}",
                first.0.offset
            )))
        };
    };
    let mut end = file.metadata().map_err(io)?.len();
    for (batch, bytes) in batches {
        if batch.offset > end {
            return Err(Refusal::Foreign(format!(
                "truncated: it ends at byte {end}, and the write-ahead log has a batch (seq {}) \
                 from byte {}",
                batch.seq, batch.offset
            )));
        }
        end = end.max(batch.offset + bytes.len() as u64);
    }
    Ok(())
}

/// The batches' lines, one after the other.
fn lines_of(batches: &[(BatchRecord, &[u8])]) -> Vec<u8> {
    batches
        .iter()
        .flat_map(|(_, bytes)| bytes.iter().copied())
        .collect()
}

/// Removes `.fencepost/held/<generation>/<name>` if it holds exactly these batches' lines, which
/// were just written back.
fn forget_held_copy(
    root: &Path,
    generation: u64,
    name: &ResourceName,
    batches: &[(BatchRecord, &[u8])],
) -> io::Result<()> {
    let path = paths::held_path(root, generation, name);
    let held = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if held == lines_of(batches) {
        std::fs::remove_file(&path)?;
        sync_dir(path.parent().expect("held file has a parent"))?;
    }
    Ok(())
}

/// Writes the lines of batches that cannot be restored to
/// `.fencepost/held/<generation>/<resource>` (durably: the WAL that holds them will be reused),
/// so that no acknowledged line is lost while an operator looks at the session file.
fn hold_back(
    root: &Path,
    generation: u64,
    name: &ResourceName,
    batches: &[(BatchRecord, &[u8])],
) -> io::Result<PathBuf> {
    let lines = lines_of(batches);
    let mut path = paths::held_path(root, generation, name);
    match std::fs::read(&path) {
        // The same records, kept by an earlier start that then failed.
        Ok(existing) if existing == lines => return Ok(path),
        // Other lines under the same generation number (the WAL was recreated since): never
        // written over; this start's copy goes beside them.
        Ok(_) => {
            path = paths::held_root(root)
                .join(format!("{generation}.{}", crate::model::now_unix_micros()))
                .join(name.as_str());
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = path.parent().expect("held file has a parent");
    paths::create_dir_all_synced(dir)?;
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    file.write_all(&lines)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::model::{Owner, OwnerKind};

    fn record(line: &[u8]) -> BatchRecord {
        BatchRecord {
            epoch: 1,
            token: 1,
            seq: 1,
            offset: 0,
            lens: vec![u32::try_from(line.len() - 1).unwrap()],
            owner: Arc::new(Owner {
                client_id: "c".into(),
                name: "n".into(),
                kind: OwnerKind::Runner,
            }),
            time: 1,
            hash: String::new(),
            request: None,
            lease: None,
        }
    }

    #[test]
    fn held_lines_are_never_written_over_and_dropped_once_restored() {
        let root = tempfile::tempdir().unwrap();
        let name = ResourceName::parse("a/s.jsonl").unwrap();
        let first: &[u8] = b"{\"n\":1}\n";
        let other: &[u8] = b"{\"n\":2}\n";
        let kept = hold_back(root.path(), 3, &name, &[(record(first), first)]).unwrap();
        // The same records again (a start that failed later): the same file.
        assert_eq!(
            hold_back(root.path(), 3, &name, &[(record(first), first)]).unwrap(),
            kept
        );
        // Other lines under a generation number seen before: kept beside, not over.
        let beside = hold_back(root.path(), 3, &name, &[(record(other), other)]).unwrap();
        assert_ne!(beside, kept);
        assert_eq!(std::fs::read(&kept).unwrap(), first);
        assert_eq!(std::fs::read(&beside).unwrap(), other);
        assert_eq!(paths::held_back(root.path(), &name).unwrap().len(), 2);
        // Restored in full later: that copy goes, the other stays.
        forget_held_copy(root.path(), 3, &name, &[(record(first), first)]).unwrap();
        assert!(!kept.exists());
        assert_eq!(paths::held_back(root.path(), &name).unwrap(), vec![beside]);
    }
}
