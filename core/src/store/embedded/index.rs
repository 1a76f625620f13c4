//! The per-resource entry index: one JSON line per batch, and its in-memory form.
//!
//! A batch record names its epoch, token, owner, time, first seq, byte offset, the length of each
//! line and the chain hash after its last line. Per-entry offsets and hashes are derived on load
//! by reading the session file, which doubles as the check that the file is what the server wrote.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{ChainHash, Head, Owner, chain};

/// One batch as persisted in the index file and the write-ahead log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchRecord {
    /// Write epoch.
    pub epoch: u64,
    /// Token the batch was appended under.
    pub token: u64,
    /// Seq of its first entry.
    pub seq: u64,
    /// Byte offset of its first line in the session file.
    pub offset: u64,
    /// Length of each line, without its newline.
    pub lens: Vec<u32>,
    /// Who appended it.
    pub owner: Arc<Owner>,
    /// Server time, microseconds since the Unix epoch.
    pub time: u64,
    /// Chain hash after the batch's last line, hex.
    pub hash: String,
    /// The request id it was appended with, if any: a retry that reaches a restarted server finds
    /// its original result here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// The lease of a request id given with one (Append); none for AppendOnce, whose request ids
    /// belong to the owner's client id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<String>,
}

impl BatchRecord {
    /// Bytes the batch occupies in the session file (lines plus newlines).
    pub fn byte_len(&self) -> u64 {
        self.lens.iter().map(|l| u64::from(*l) + 1).sum()
    }

    /// The head right after this batch.
    pub fn head_after(&self) -> Head {
        let mut chain_hash = [0u8; 32];
        hex::decode_to_slice(&self.hash, &mut chain_hash).unwrap_or_default();
        Head {
            epoch: self.epoch,
            next_seq: self.seq + self.lens.len() as u64,
            length: self.offset + self.byte_len(),
            chain_hash,
        }
    }

    /// One index line, newline-terminated.
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("batch records always serialize");
        line.push(b'\n');
        line
    }
}

/// Where one entry is, and the chain hash after it.
#[derive(Debug, Clone, Copy)]
pub struct EntryMeta {
    /// Byte offset of the line.
    pub offset: u64,
    /// Line length without the newline.
    pub len: u32,
    /// Position of its batch in [`Index::batches`].
    pub batch: u32,
    /// Chain hash after this entry.
    pub hash: ChainHash,
}

/// The in-memory index of one resource.
#[derive(Debug, Default)]
pub struct Index {
    /// Every batch, in order.
    pub batches: Vec<BatchRecord>,
    /// Every entry, in order (entry seq `s` is at position `s - 1`).
    pub entries: Vec<EntryMeta>,
}

/// How the session file differs from what the index says the server wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mismatch {
    /// Bytes were added after the last recorded entry.
    Appended { from: u64, to: u64 },
    /// The file is shorter than recorded.
    Truncated { recorded: u64, actual: u64 },
    /// Recorded bytes were changed in place.
    Edited { from: u64, to: u64 },
}

impl Mismatch {
    /// A description naming the kind of change and the byte range.
    pub fn describe(&self) -> String {
        match self {
            Self::Appended { from, to } => {
                format!("appended: {} foreign bytes at {from}..{to}", to - from)
            }
            Self::Truncated { recorded, actual } => {
                format!("truncated: {actual} bytes on disk, {recorded} recorded")
            }
            Self::Edited { from, to } => format!("edited in place: bytes {from}..{to} changed"),
        }
    }
}

impl Index {
    /// Token of the last batch (0 if none).
    pub fn last_token(&self) -> u64 {
        self.batches.last().map_or(0, |b| b.token)
    }

    /// The head implied by the index.
    pub fn head(&self) -> Head {
        let Some(last) = self.batches.last() else {
            return Head::EMPTY;
        };
        Head {
            epoch: last.epoch,
            next_seq: self.entries.len() as u64 + 1,
            length: last.offset + last.byte_len(),
            chain_hash: self.entries.last().map_or([0; 32], |e| e.hash),
        }
    }

    /// Parses index lines. A torn final line (no newline, or unparsable at the very end) is
    /// dropped; the returned length is where the valid part ends.
    ///
    /// # Errors
    /// A description of a corrupt line in the middle, or of records that do not follow each other.
    pub fn parse_records(bytes: &[u8]) -> Result<(Vec<BatchRecord>, usize), String> {
        let mut records: Vec<BatchRecord> = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let Some(nl) = bytes[pos..].iter().position(|b| *b == b'\n') else {
                break; // torn tail: never acknowledged
            };
            let line = &bytes[pos..pos + nl];
            let rec: BatchRecord = match serde_json::from_slice(line) {
                Ok(r) => r,
                Err(_) if pos + nl + 1 == bytes.len() => break,
                Err(e) => return Err(format!("index line at byte {pos} is unreadable: {e}")),
            };
            if let Some(prev) = records.last() {
                let expect_seq = prev.seq + prev.lens.len() as u64;
                let expect_off = prev.offset + prev.byte_len();
                if rec.seq != expect_seq || rec.offset != expect_off || rec.epoch <= prev.epoch {
                    return Err(format!(
                        "index record at byte {pos} (seq {}, offset {}) does not follow seq {expect_seq}, offset {expect_off}",
                        rec.seq, rec.offset
                    ));
                }
            } else if rec.seq != 1 || rec.offset != 0 {
                return Err("the first index record does not start at seq 1, offset 0".into());
            }
            records.push(rec);
            pos += nl + 1;
        }
        Ok((records, pos))
    }

    /// Like [`Index::parse_records`], but stops at the first unreadable or out-of-sequence line
    /// instead of failing (for replay, where the WAL covers what follows).
    pub fn parse_valid_prefix(bytes: &[u8]) -> (Vec<BatchRecord>, usize) {
        let mut end = bytes.len();
        loop {
            match Self::parse_records(&bytes[..end]) {
                Ok(parsed) => return parsed,
                Err(_) => {
                    // Cut at the line before the last complete one and try again.
                    end = bytes[..end.saturating_sub(1)]
                        .iter()
                        .rposition(|b| *b == b'\n')
                        .map_or(0, |i| i + 1);
                }
            }
        }
    }

    /// Builds the index from records and checks the session file `data` against it.
    pub fn build(records: Vec<BatchRecord>, data: &[u8]) -> (Self, Option<Mismatch>) {
        let mut index = Index::default();
        let mut hash = [0u8; 32];
        let mut mismatch = None;
        for (b, rec) in records.iter().enumerate() {
            let mut off = rec.offset;
            for len in &rec.lens {
                let end = off + u64::from(*len);
                if mismatch.is_none() {
                    mismatch = check_line(data, off, end);
                }
                if mismatch.is_none() {
                    hash = chain(&hash, &data[off as usize..end as usize]);
                }
                index.entries.push(EntryMeta {
                    offset: off,
                    len: *len,
                    batch: u32::try_from(b).unwrap_or(u32::MAX),
                    hash,
                });
                off = end + 1;
            }
            if mismatch.is_none() && hex::encode(hash) != rec.hash {
                mismatch = Some(Mismatch::Edited {
                    from: rec.offset,
                    to: off,
                });
            }
        }
        index.batches = records;
        let recorded = index.head().length;
        let actual = data.len() as u64;
        if mismatch.is_none() && actual > recorded {
            mismatch = Some(Mismatch::Appended {
                from: recorded,
                to: actual,
            });
        }
        (index, mismatch)
    }

    /// Adds a written batch whose per-line hashes are known.
    pub fn push(&mut self, rec: BatchRecord, hashes: &[ChainHash]) {
        let b = u32::try_from(self.batches.len()).unwrap_or(u32::MAX);
        let mut off = rec.offset;
        for (len, hash) in rec.lens.iter().zip(hashes) {
            self.entries.push(EntryMeta {
                offset: off,
                len: *len,
                batch: b,
                hash: *hash,
            });
            off += u64::from(*len) + 1;
        }
        self.batches.push(rec);
    }
}

fn check_line(data: &[u8], off: u64, end: u64) -> Option<Mismatch> {
    let actual = data.len() as u64;
    if end >= actual {
        return Some(Mismatch::Truncated {
            recorded: end + 1,
            actual,
        });
    }
    if data[end as usize] != b'\n' || data[off as usize..end as usize].contains(&b'\n') {
        return Some(Mismatch::Edited {
            from: off,
            to: end + 1,
        });
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::OwnerKind;

    fn record(
        seq: u64,
        offset: u64,
        lines: &[&[u8]],
        prev: ChainHash,
        epoch: u64,
    ) -> (BatchRecord, ChainHash) {
        let mut h = prev;
        for l in lines {
            h = chain(&h, l);
        }
        let rec = BatchRecord {
            epoch,
            token: 7,
            seq,
            offset,
            lens: lines.iter().map(|l| l.len() as u32).collect(),
            owner: Arc::new(Owner {
                client_id: "c".into(),
                name: "n".into(),
                kind: OwnerKind::Cli,
            }),
            time: 1,
            hash: hex::encode(h),
            request: None,
            lease: None,
        };
        (rec, h)
    }

    #[test]
    fn a_faithful_file_verifies_and_tampering_is_classified() {
        let (r1, h1) = record(1, 0, &[b"{\"a\":1}", b"{}"], [0; 32], 1);
        let (r2, _) = record(3, 11, &[b"{\"b\":2}"], h1, 2);
        let data = b"{\"a\":1}\n{}\n{\"b\":2}\n".to_vec();
        let mut bytes = r1.to_line();
        bytes.extend(r2.to_line());
        bytes.extend(b"{\"torn"); // torn tail is dropped
        let (records, valid) = Index::parse_records(&bytes).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(valid, bytes.len() - 6);

        let (index, mismatch) = Index::build(records.clone(), &data);
        assert_eq!(mismatch, None);
        assert_eq!(index.head().next_seq, 4);
        assert_eq!(index.head().length, data.len() as u64);

        let mut appended = data.clone();
        appended.extend(b"{\"x\":1}\n");
        assert!(matches!(
            Index::build(records.clone(), &appended).1,
            Some(Mismatch::Appended { from: 19, to: 27 })
        ));
        assert!(matches!(
            Index::build(records.clone(), &data[..15]).1,
            Some(Mismatch::Truncated { .. })
        ));
        let mut edited = data.clone();
        edited[2] = b'z';
        assert!(matches!(
            Index::build(records, &edited).1,
            Some(Mismatch::Edited { from: 0, .. })
        ));
    }
}
