//! Test builds only: a journal of how far each file is known to be on stable storage, so a
//! power-loss test can drop (or scramble) every byte that was not fsync'd. One line per sync:
//! `<length>\t<path>`, in `.fencepost/synced.log`.

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
