//! Reading session files back from a directory, one entry per line.

use std::path::Path;

use anyhow::{Context, Result};

use crate::history::Contents;

/// Reads the session files under `dir`; a missing file holds no lines. A last line without its
/// newline is kept as a line, so a torn tail shows up as a difference.
///
/// # Errors
/// A file exists but cannot be read.
pub fn read_files(dir: &Path, sessions: &[String]) -> Result<Contents> {
    let mut out = Contents::new();
    for name in sessions {
        let path = dir.join(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        out.insert(name.clone(), split_lines(&bytes));
    }
    Ok(out)
}

fn split_lines(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut lines: Vec<Vec<u8>> = bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect();
    if lines.last().is_some_and(Vec::is_empty) {
        lines.pop();
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_newlines_and_a_torn_tail_is_kept() {
        assert_eq!(split_lines(b""), Vec::<Vec<u8>>::new());
        assert_eq!(
            split_lines(b"{}\n{\"a\":1}\n"),
            [b"{}".to_vec(), b"{\"a\":1}".to_vec()]
        );
        assert_eq!(
            split_lines(b"{}\n{\"a\""),
            [b"{}".to_vec(), b"{\"a\"".to_vec()]
        );
    }

    #[test]
    fn a_missing_file_holds_no_lines() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.jsonl"), b"{}\n").unwrap();
        let got = read_files(dir.path(), &["a.jsonl".into(), "b.jsonl".into()]).unwrap();
        assert_eq!(got["a.jsonl"], [b"{}".to_vec()]);
        assert!(got["b.jsonl"].is_empty());
    }
}
