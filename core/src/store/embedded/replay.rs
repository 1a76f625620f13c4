//! Start-up recovery: re-apply the write-ahead log to the session files and indexes.
//!
//! Every WAL record was durable before its batch was acknowledged; session files and indexes are
//! only guaranteed durable at checkpoints. Replay rewrites each record's bytes at its recorded
//! offset (idempotent), appends index lines the index lacks, and syncs both. A torn record at the
//! end of the current generation was never acknowledged and is dropped.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::index::{BatchRecord, Index};
use super::paths::{self, ResourcePaths, sync_dir};
use super::wal;
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
}

/// Applies the WAL file's current generation (`wal_bytes`) under `root`.
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
        apply(root, name, &by_name[name]).map_err(|e| format!("replaying {name}: {e}"))?;
    }
    Ok(report)
}

fn apply(root: &Path, name: &str, records: &[&wal::Record<'_>]) -> Result<(), String> {
    let name = ResourceName::parse(name).map_err(|e| e.to_string())?;
    let paths = ResourcePaths::new(root, &name);
    let mut dirs = paths::create_parents(root, &name).map_err(|e| e.to_string())?;
    let data = paths::open_regular(&name, &paths.data, true, false)
        .map_err(|e| e.to_string())?
        .expect("created");
    let index_dir = paths
        .index
        .parent()
        .expect("index has a parent")
        .to_path_buf();
    std::fs::create_dir_all(&index_dir).map_err(|e| e.to_string())?;
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

    let index_bytes = match std::fs::read(&paths.index) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    // After power loss the index may end in scrambled, never-synced lines; keep the valid prefix
    // and let the WAL (checked below to continue right after it) supply the rest.
    let (indexed, valid) = Index::parse_valid_prefix(&index_bytes);
    let mut index = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&paths.index)
        .map_err(|e| e.to_string())?;
    index.set_len(valid as u64).map_err(|e| e.to_string())?;
    let mut next_seq = indexed.last().map_or(1, |r| r.seq + r.lens.len() as u64);

    for rec in records {
        let batch: BatchRecord =
            serde_json::from_slice(rec.record_line).map_err(|e| e.to_string())?;
        if batch.byte_len() != rec.data.len() as u64 {
            return Err(format!(
                "WAL record for seq {} has inconsistent lengths",
                batch.seq
            ));
        }
        data.write_all_at(rec.data, batch.offset)
            .map_err(|e| e.to_string())?;
        if batch.seq == next_seq {
            index
                .write_all(&batch.to_line())
                .map_err(|e| e.to_string())?;
            next_seq += batch.lens.len() as u64;
        } else if batch.seq > next_seq {
            return Err(format!(
                "the index ends before seq {next_seq} but the WAL continues at seq {}",
                batch.seq
            ));
        }
    }
    data.sync_data().map_err(|e| e.to_string())?;
    index.sync_data().map_err(|e| e.to_string())?;
    dirs.sort();
    dirs.dedup();
    for dir in dirs {
        sync_dir(&dir).map_err(|e| e.to_string())?;
    }
    Ok(())
}
