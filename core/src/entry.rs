//! Validation of appended entries: each one a single-line UTF-8 JSON object within the size limits.

use serde::de::IgnoredAny;

use crate::config::Limits;
use crate::error::CoreError;

/// Checks a whole batch before anything is written; the first bad entry rejects the batch.
///
/// # Errors
/// [`CoreError::InvalidEntry`], [`CoreError::EntryTooLarge`] or [`CoreError::BatchTooLarge`].
pub fn validate_batch(entries: &[Vec<u8>], limits: &Limits) -> Result<(), CoreError> {
    // About the batch as a whole, so not an entry's error (there is no entry to name).
    if entries.is_empty() {
        return Err(CoreError::InvalidArgument {
            field: "entries",
            reason: "the batch has no entries; send at least one".into(),
        });
    }
    if entries.len() > limits.max_batch_entries {
        return Err(CoreError::InvalidArgument {
            field: "entries",
            reason: format!(
                "the batch has {} entries; the limit is {}: split it into several batches",
                entries.len(),
                limits.max_batch_entries
            ),
        });
    }
    let total: usize = entries.iter().map(|e| e.len() + 1).sum();
    if total > limits.max_batch_bytes {
        return Err(CoreError::BatchTooLarge {
            size: total,
            limit: limits.max_batch_bytes,
        });
    }
    for (index, entry) in entries.iter().enumerate() {
        validate_entry(index, entry, limits.max_entry_bytes)?;
    }
    Ok(())
}

fn validate_entry(index: usize, entry: &[u8], limit: usize) -> Result<(), CoreError> {
    let invalid = |reason: &str| CoreError::InvalidEntry {
        index,
        reason: reason.to_owned(),
    };
    if entry.len() > limit {
        return Err(CoreError::EntryTooLarge {
            index,
            size: entry.len(),
            limit,
        });
    }
    if entry.contains(&b'\n') || entry.contains(&b'\r') {
        return Err(invalid(
            "it contains a raw newline; an entry is one line (escape newlines inside JSON strings)",
        ));
    }
    let text = std::str::from_utf8(entry).map_err(|e| {
        invalid(&format!(
            "it is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    if !text.trim_start().starts_with('{') {
        return Err(invalid(
            "it is not a JSON object (an entry must start with '{')",
        ));
    }
    serde_json::from_str::<IgnoredAny>(text)
        .map_err(|e| invalid(&format!("it is not valid JSON: {e}")))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(lines: &[&[u8]]) -> Vec<Vec<u8>> {
        lines.iter().map(|l| l.to_vec()).collect()
    }

    #[test]
    fn json_objects_pass() {
        let limits = Limits::default();
        validate_batch(
            &batch(&[br#"{"a":1}"#, br#" {"b":[1,2,{"c":"\n"}]} "#]),
            &limits,
        )
        .unwrap();
    }

    #[test]
    fn the_first_bad_entry_is_named() {
        let limits = Limits::default();
        let cases: Vec<(&[u8], &str)> = vec![
            (b"[1,2]", "not a JSON object"),
            (b"{\"a\":1", "not valid JSON"),
            (b"{\"a\":1}{}", "not valid JSON"),
            (b"{\"a\":\n1}", "raw newline"),
            (b"{\"a\":\"\xff\"}", "not valid UTF-8"),
            (b"", "not a JSON object"),
            (b"42", "not a JSON object"),
        ];
        for (bad, needle) in cases {
            let err = validate_batch(&batch(&[b"{}", bad]), &limits).unwrap_err();
            let msg = err.to_string();
            assert!(msg.contains("entry 1") && msg.contains(needle), "{msg}");
        }
        assert!(validate_batch(&[], &limits).is_err());
    }

    #[test]
    fn size_limits_are_enforced() {
        let limits = Limits {
            max_entry_bytes: 16,
            max_batch_bytes: 40,
            ..Limits::default()
        };
        let big = format!("{{\"a\":\"{}\"}}", "x".repeat(20));
        assert!(matches!(
            validate_batch(&[big.into_bytes()], &limits),
            Err(CoreError::EntryTooLarge { index: 0, .. })
        ));
        let lines = vec![b"{\"a\":\"0123456\"}".to_vec(); 3];
        assert!(matches!(
            validate_batch(&lines, &limits),
            Err(CoreError::BatchTooLarge { .. })
        ));
        for (entries, needle) in [
            (Vec::new(), "no entries"),
            (
                vec![b"{}".to_vec(); 10_001],
                "10001 entries; the limit is 10000",
            ),
        ] {
            let err = validate_batch(&entries, &Limits::default()).unwrap_err();
            assert!(
                matches!(&err, CoreError::InvalidArgument { field: "entries", reason } if reason.contains(needle)),
                "{err}"
            );
        }
    }
}
