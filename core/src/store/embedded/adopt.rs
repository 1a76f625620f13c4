//! Adoption: the explicit operator action that accepts a session file changed behind the server's
//! back. Batches that still match keep their metadata; everything after the first difference
//! becomes one batch owned by the operator, with a new write epoch. Nothing is adopted silently.

use std::fs;
use std::io::Write;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::index::{BatchRecord, Index};
use super::paths::{self, ResourcePaths, sync_dir};
use crate::error::CoreError;
use crate::model::{Head, Owner, OwnerKind, chain, now_unix_micros};
use crate::resource::ResourceName;

/// The owner recorded on adopted bytes.
fn operator() -> Arc<Owner> {
    Arc::new(Owner {
        client_id: "operator".into(),
        name: "fencepost adopt".into(),
        kind: OwnerKind::Other,
    })
}

/// The epoch of an adopted batch: above every epoch the resource ever had, which the index alone
/// cannot promise: it may have been lost (its epochs would start again at 1) or restored from an
/// older copy. So, as with tokens, the wall clock in µs is a floor: epochs rise by one per batch,
/// far slower than the clock, so a resource's epochs stay below it. A client still expecting an
/// epoch from before the adoption is refused (`HEAD_MISMATCH`) rather than matched by accident.
/// As with tokens, this holds unless the clock is set back past an earlier adoption and the index
/// that recorded it is lost too.
fn adopted_epoch(last_epoch: u64, now_micros: u64) -> u64 {
    (last_epoch + 1).max(now_micros)
}

/// Rewrites the index of `name` to cover the file as it is now (blocking I/O). The WAL must have
/// been checkpointed first, so no replay can write old bytes over the adopted content.
///
/// # Errors
/// [`CoreError::InvalidResource`] if the path is unsafe; [`CoreError::ExternalModification`] if
/// the file is missing or does not end with a newline (fix the last line first); storage errors.
pub fn adopt(
    root: &std::path::Path,
    name: &ResourceName,
    p: &ResourcePaths,
) -> Result<String, CoreError> {
    paths::check(root, name)?;
    let data = match paths::open_regular(root, name, &p.data, false, false)? {
        Some(_) => fs::read(&p.data).map_err(|e| paths::io_error(name, &p.data, &e))?,
        // Adopting nothing would leave an index without a file, which is refused again at once.
        None => {
            return Err(CoreError::ExternalModification {
                resource: name.as_str().to_owned(),
                detail: format!(
                    "the session file {} is missing, so there is nothing to adopt; to accept it \
                     as empty, create an empty file there and adopt again",
                    p.data.display()
                ),
            });
        }
    };
    let index_bytes = match fs::read(&p.index) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(paths::io_error(name, &p.index, &e)),
    };
    let (records, _) =
        Index::parse_records(&index_bytes).map_err(|detail| CoreError::CorruptMetadata {
            resource: name.as_str().to_owned(),
            detail,
        })?;
    let last_epoch = records.last().map_or(0, |r| r.epoch);
    let kept = verified_prefix(records, &data);
    let after = kept.last().map_or(Head::EMPTY, BatchRecord::head_after);
    let (offset, seq, mut hash) = (after.length, after.next_seq, after.chain_hash);
    let rest = &data[usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len())..];
    if !rest.is_empty() && !rest.ends_with(b"\n") {
        return Err(CoreError::ExternalModification {
            resource: name.as_str().to_owned(),
            detail: format!(
                "the file ends with a partial line at byte {}; remove or complete it before adopting",
                data.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1)
            ),
        });
    }
    let lens: Vec<u32> = rest
        .split_inclusive(|b| *b == b'\n')
        .map(|l| u32::try_from(l.len() - 1).unwrap_or(u32::MAX))
        .collect();
    for line in rest.split_inclusive(|b| *b == b'\n') {
        hash = chain(&hash, &line[..line.len() - 1]);
    }
    let adopted = BatchRecord {
        epoch: adopted_epoch(last_epoch, now_unix_micros()),
        token: 0,
        seq,
        offset,
        lens,
        owner: operator(),
        time: now_unix_micros(),
        hash: hex::encode(hash),
        request: None,
        lease: None,
    };
    let detail = format!(
        "kept {} entries ({} bytes) as recorded; adopted {} lines, bytes {offset}..{} (sha256 {}) as epoch {}",
        seq - 1,
        offset,
        adopted.lens.len(),
        data.len(),
        hex::encode(Sha256::digest(rest)),
        adopted.epoch
    );
    let mut out = Vec::new();
    for rec in kept.iter().chain(std::iter::once(&adopted)) {
        out.extend(rec.to_line());
    }
    let dir = p.index.parent().expect("index has a parent");
    fs::create_dir_all(dir).map_err(|e| paths::io_error(name, dir, &e))?;
    let tmp = &p.adopting;
    let write = || -> std::io::Result<()> {
        let mut f = fs::File::create(tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        fs::rename(tmp, &p.index)?;
        sync_dir(dir)
    };
    write().map_err(|e| paths::io_error(name, &p.index, &e))?;
    let moved = paths::set_held_aside(root, name)
        .map_err(|e| paths::io_error(name, &paths::meta_dir(root), &e))?;
    if moved.is_empty() {
        Ok(detail)
    } else {
        let moved: Vec<String> = moved.iter().map(|m| m.display().to_string()).collect();
        Ok(format!(
            "{detail}; lines held back at a restart were moved to {}",
            moved.join(", ")
        ))
    }
}

/// The leading records whose bytes and chain hash still match `data`.
fn verified_prefix(records: Vec<BatchRecord>, data: &[u8]) -> Vec<BatchRecord> {
    let mut kept = Vec::new();
    let mut hash = [0u8; 32];
    for rec in records {
        let mut off = usize::try_from(rec.offset).unwrap_or(usize::MAX);
        let mut h = hash;
        let mut ok = true;
        for len in &rec.lens {
            let end = off + *len as usize;
            if end >= data.len() || data[end] != b'\n' || data[off..end].contains(&b'\n') {
                ok = false;
                break;
            }
            h = chain(&h, &data[off..end]);
            off = end + 1;
        }
        if !ok || hex::encode(h) != rec.hash {
            break;
        }
        hash = h;
        kept.push(rec);
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::adopted_epoch;

    #[test]
    fn an_adopted_epoch_is_above_the_index_and_the_clock() {
        // A lost index (no epochs) still gives an epoch above any the resource had before.
        assert_eq!(
            adopted_epoch(0, 1_800_000_000_000_000),
            1_800_000_000_000_000
        );
        // An epoch already past the clock (an earlier adoption, a clock set back) still rises.
        assert_eq!(
            adopted_epoch(1_800_000_000_000_000, 1_700_000_000_000_000),
            1_800_000_000_000_001
        );
    }
}
