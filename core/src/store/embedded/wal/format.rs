//! The WAL file's format: a header block naming the current generation, then framed records.
//!
//! A header block holds the current generation in two checksummed slots (a torn header write
//! leaves the other); every record carries its generation and a CRC, and decoding stops at the
//! first record that is torn, stale (an older generation) or never written.

use std::io::{self, Read};

use crate::resource::ResourceName;

/// The header block; records start after it.
pub const HEADER_BYTES: u64 = 4096;
/// Where each of the two header slots sits.
pub(super) const SLOT_BYTES: u64 = 512;
/// Header slot: `[magic 8][generation u64 LE][crc32 u32 LE of the first 16 bytes]`.
const MAGIC: &[u8; 8] = b"FPWAL\x002\n";
/// Record frame: `[len u32 LE][crc32 u32 LE][generation u64 LE][payload]`; len and crc cover
/// generation and payload.
const FRAME_HEAD: usize = 8;

/// One record's payload: `name \n record-json \n data` (the writer frames it).
pub fn payload(name: &ResourceName, record_line: &[u8], data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.as_str().len() + 1 + record_line.len() + data.len());
    out.extend_from_slice(name.as_str().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(record_line);
    out.extend_from_slice(data);
    out
}

/// Appends one framed record of `generation` to `out`.
pub(super) fn encode(out: &mut Vec<u8>, generation: u64, payload: &[u8]) {
    let start = out.len();
    let len = 8 + payload.len();
    out.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out[start + FRAME_HEAD..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// One header slot for `generation`.
pub(super) fn header_slot(generation: u64) -> [u8; 20] {
    let mut slot = [0; 20];
    slot[..8].copy_from_slice(MAGIC);
    slot[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32fast::hash(&slot[..16]);
    slot[16..].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// The newest generation a valid header slot names.
fn read_header(bytes: &[u8]) -> Option<u64> {
    (0..2)
        .filter_map(|i| {
            let at = usize::try_from(i * SLOT_BYTES).ok()?;
            let slot = bytes.get(at..at + 20)?;
            let crc = u32::from_le_bytes(slot[16..].try_into().ok()?);
            (&slot[..8] == MAGIC && crc32fast::hash(&slot[..16]) == crc)
                .then(|| u64::from_le_bytes(slot[8..16].try_into().expect("8 bytes")))
        })
        .max()
}

/// One decoded record.
#[derive(Debug)]
pub struct Record<'a> {
    /// Resource name.
    pub name: &'a str,
    /// The index line (without newline).
    pub record_line: &'a [u8],
    /// The lines with newlines.
    pub data: &'a [u8],
}

/// The current generation's records, decoded from the WAL file (or the part [`read_used`] read).
#[derive(Debug)]
pub struct Contents<'a> {
    /// The generation the header names (0 for a new, empty WAL).
    pub generation: u64,
    /// Its records, in commit order.
    pub records: Vec<Record<'a>>,
}

/// Decodes a WAL file: its generation and that generation's records, up to the first torn,
/// stale or unwritten frame.
///
/// # Errors
/// Neither header slot is valid although records follow: the header was damaged after it was
/// made durable, so which records are current cannot be known.
pub fn decode(bytes: &[u8]) -> Result<Contents<'_>, String> {
    let body = bytes
        .get(usize::try_from(HEADER_BYTES).unwrap_or(usize::MAX)..)
        .unwrap_or_default();
    let Some(generation) = read_header(bytes) else {
        // A header is made durable before any record is written, so without one there can only be
        // a torn first header and no records.
        return match next_frame(body, None) {
            Some(_) => Err("the write-ahead log header is damaged but records follow it".into()),
            None => Ok(Contents {
                generation: 0,
                records: Vec::new(),
            }),
        };
    };
    let mut records = Vec::new();
    let mut rest = body;
    while let Some((record, used)) = next_frame(rest, Some(generation)) {
        records.push(record);
        rest = &rest[used..];
    }
    Ok(Contents {
        generation,
        records,
    })
}

/// Reads the WAL file from the start as far as [`decode`] will look: the header and the current
/// generation's records, up to the first frame that is torn, stale or never written. The rest of
/// the file (zeros, or older generations' records) stays unread, so a start does not hold a whole
/// preallocated WAL in memory.
///
/// # Errors
/// Reading the file failed.
pub fn read_used(file: &mut impl Read) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut eof = false;
    // Reads until `bytes` holds `len` bytes (in steps of at least `READ_STEP`) or the file ends.
    let mut fill = |bytes: &mut Vec<u8>, len: usize| -> io::Result<bool> {
        while bytes.len() < len && !eof {
            let want = (len - bytes.len()).max(READ_STEP) as u64;
            eof = file.by_ref().take(want).read_to_end(bytes)? == 0;
        }
        Ok(bytes.len() >= len)
    };
    let header = usize::try_from(HEADER_BYTES).unwrap_or(usize::MAX);
    fill(&mut bytes, header)?;
    let generation = read_header(&bytes);
    let mut at = header;
    loop {
        // Length, CRC and generation first: past the current generation's last record the bytes
        // are usually the middle of an older record, whose "length" may be anything; a frame that
        // is not of the current generation is not read on.
        fill(&mut bytes, at + FRAME_HEAD + 8)?;
        let Some((len, of)) = bytes.get(at..).and_then(frame_head) else {
            break;
        };
        if len < 8 || generation.is_some_and(|g| g != of) {
            break;
        }
        fill(
            &mut bytes,
            at.saturating_add(FRAME_HEAD).saturating_add(len),
        )?;
        match next_frame(&bytes[at..], generation) {
            // Without a header, decoding looks at the first frame only.
            Some((_, used)) if generation.is_some() => at += used,
            _ => break,
        }
    }
    Ok(bytes)
}

/// How much more of the WAL [`read_used`] reads at a time.
const READ_STEP: usize = 1 << 20;

/// The length field and the generation of the frame at the start of `bytes` (unchecked), if its
/// first 16 bytes are there.
fn frame_head(bytes: &[u8]) -> Option<(usize, u64)> {
    let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    let generation = u64::from_le_bytes(bytes.get(FRAME_HEAD..FRAME_HEAD + 8)?.try_into().ok()?);
    Some((len, generation))
}

/// The frame at the start of `bytes`, if it is whole, checks out, and is of `generation` (any
/// generation if `None`); with its length.
fn next_frame(bytes: &[u8], generation: Option<u64>) -> Option<(Record<'_>, usize)> {
    let (len, record_generation) = frame_head(bytes)?;
    let crc = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?);
    let body = bytes.get(FRAME_HEAD..FRAME_HEAD + len)?;
    if len < 8 || crc32fast::hash(body) != crc || generation.is_some_and(|g| g != record_generation)
    {
        return None;
    }
    let payload = &body[8..];
    let n1 = payload.iter().position(|b| *b == b'\n')?;
    let n2 = payload[n1 + 1..].iter().position(|b| *b == b'\n')?;
    let name = std::str::from_utf8(&payload[..n1]).ok()?;
    let record = Record {
        name,
        record_line: &payload[n1 + 1..n1 + 1 + n2],
        data: &payload[n1 + 2 + n2..],
    };
    Some((record, FRAME_HEAD + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(generation: u64, epoch: u32, data: &[u8]) -> Vec<u8> {
        let name = ResourceName::parse("a/b.jsonl").unwrap();
        let mut out = Vec::new();
        let line = format!("{{\"epoch\":{epoch}}}\n");
        encode(&mut out, generation, &payload(&name, line.as_bytes(), data));
        out
    }

    fn file(generation: u64, records: &[Vec<u8>], tail: &[u8]) -> Vec<u8> {
        let mut bytes = vec![0; HEADER_BYTES as usize];
        let at = ((generation % 2) * SLOT_BYTES) as usize;
        bytes[at..at + 20].copy_from_slice(&header_slot(generation));
        for r in records {
            bytes.extend(r);
        }
        bytes.extend(tail);
        bytes
    }

    #[test]
    fn records_round_trip_and_decoding_stops_at_a_torn_frame() {
        let (a, b) = (record(3, 1, b"{}\n{}\n"), record(3, 2, b"{\"x\":1}\n"));
        let torn = &record(3, 3, b"{}\n")[..10];
        let bytes = file(3, &[a.clone(), b.clone()], torn);
        let contents = decode(&bytes).unwrap();
        assert_eq!(contents.generation, 3);
        assert_eq!(contents.records.len(), 2);
        assert_eq!(contents.records[0].name, "a/b.jsonl");
        assert_eq!(contents.records[0].record_line, b"{\"epoch\":1}");
        assert_eq!(contents.records[1].data, b"{\"x\":1}\n");

        let mut flipped = file(3, &[a, b], &[]);
        flipped[HEADER_BYTES as usize + 20] ^= 1;
        assert_eq!(decode(&flipped).unwrap().records.len(), 0);
    }

    #[test]
    fn start_up_reads_only_as_far_as_decoding_looks() {
        // Reads `bytes`, checks it stopped within a step of the three records, and decodes them.
        let three_records_read = |bytes: &[u8]| {
            let read = read_used(&mut io::Cursor::new(bytes)).unwrap();
            let most = HEADER_BYTES as usize + READ_STEP;
            assert!(read.len() <= most, "{} > {most}", read.len());
            assert_eq!(decode(&read).unwrap().records.len(), 3);
        };
        let records: Vec<_> = (0..3).map(|i| record(7, i, b"{}\n")).collect();
        let zeros = vec![0; 3 * READ_STEP];
        three_records_read(&file(7, &records, &zeros));

        // A record longer than a read step is read whole; a torn one ends the reading.
        let big = record(7, 3, &vec![b'x'; 2 * READ_STEP]);
        let torn = &record(7, 4, b"{}\n")[..12];
        let mut bytes = file(7, &[records[0].clone(), big], torn);
        bytes.extend(&zeros);
        let read = read_used(&mut io::Cursor::new(&bytes)).unwrap();
        assert_eq!(decode(&read).unwrap().records.len(), 2);

        // Past the last record, the middle of an older generation's record is not read on, even
        // where its bytes say "a long frame follows".
        let older = record(6, 0, &vec![0xff; 2 * READ_STEP]);
        let mut bytes = file(7, &records, &older[40..]);
        bytes.extend(&zeros);
        three_records_read(&bytes);

        // A damaged header with a record after it is still seen as such.
        let mut damaged = file(7, &records, &[]);
        damaged[SLOT_BYTES as usize] ^= 1; // generation 7 is in the odd slot
        let read = read_used(&mut io::Cursor::new(&damaged)).unwrap();
        assert!(decode(&read).is_err());

        // A short or empty file is read whole.
        assert!(
            read_used(&mut io::Cursor::new(&[] as &[u8]))
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            read_used(&mut io::Cursor::new(&[1u8; 10])).unwrap(),
            [1u8; 10]
        );
    }

    #[test]
    fn records_of_an_older_generation_are_stale() {
        // Generation 5 overwrote the start of generation 4's space, then stopped.
        let old: Vec<_> = (0..3).map(|i| record(4, i, b"{}\n")).collect();
        let mut bytes = file(4, &old, &[]);
        let new = record(5, 9, b"{}\n");
        assert_eq!(new.len(), old[0].len());
        let at = SLOT_BYTES as usize; // generation 5's slot
        bytes[at..at + 20].copy_from_slice(&header_slot(5));
        let start = HEADER_BYTES as usize;
        bytes[start..start + new.len()].copy_from_slice(&new);
        let contents = decode(&bytes).unwrap();
        assert_eq!(contents.generation, 5);
        assert_eq!(contents.records.len(), 1);
        assert_eq!(contents.records[0].record_line, b"{\"epoch\":9}");
    }

    #[test]
    fn a_torn_header_slot_falls_back_to_the_other_and_no_header_means_no_records() {
        let rec = record(6, 1, b"{}\n");
        let mut bytes = file(6, std::slice::from_ref(&rec), &[]);
        let at = SLOT_BYTES as usize; // generation 7's slot
        bytes[at..at + 20].copy_from_slice(&header_slot(7));
        bytes[at + 9] ^= 0xff; // generation 7's header write tore
        let contents = decode(&bytes).unwrap();
        assert_eq!((contents.generation, contents.records.len()), (6, 1));

        assert_eq!(decode(&[]).unwrap().generation, 0);
        assert_eq!(decode(&vec![0; 8192]).unwrap().records.len(), 0);
        let mut headless = file(6, &[rec], &[]);
        headless[..SLOT_BYTES as usize].fill(0);
        let err = decode(&headless).unwrap_err();
        assert!(err.contains("header is damaged"), "{err}");
    }
}
