//! What can be appended as one entry: a raw JSON line or a JSON value.

/// One entry of a batch: a single JSON object, sent byte for byte as the session file's line.
///
/// Raw lines (`&str`, `String`, `&[u8]`, `Vec<u8>`) are sent as they are; the server checks them
/// (one JSON object, UTF-8, no raw newline). A [`serde_json::Value`] is sent as compact JSON.
///
/// ```
/// use fencepost_client::IntoEntry;
/// use serde_json::json;
///
/// assert_eq!(r#"{"a":1}"#.into_entry(), br#"{"a":1}"#.to_vec());
/// assert_eq!(json!({"role": "user"}).into_entry(), br#"{"role":"user"}"#.to_vec());
/// ```
pub trait IntoEntry {
    /// The line's bytes, without a newline.
    fn into_entry(self) -> Vec<u8>;
}

impl IntoEntry for Vec<u8> {
    fn into_entry(self) -> Vec<u8> {
        self
    }
}

impl IntoEntry for &[u8] {
    fn into_entry(self) -> Vec<u8> {
        self.to_vec()
    }
}

impl IntoEntry for String {
    fn into_entry(self) -> Vec<u8> {
        self.into_bytes()
    }
}

impl IntoEntry for &str {
    fn into_entry(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl IntoEntry for &String {
    fn into_entry(self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl IntoEntry for serde_json::Value {
    fn into_entry(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl IntoEntry for &serde_json::Value {
    fn into_entry(self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

/// A batch: every item as one entry.
pub(crate) fn batch<E: IntoEntry>(lines: impl IntoIterator<Item = E>) -> Vec<Vec<u8>> {
    lines.into_iter().map(IntoEntry::into_entry).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_become_compact_lines_without_a_newline() {
        let value = serde_json::json!({"text": "two\nlines"});
        let line = value.into_entry();
        assert_eq!(line, br#"{"text":"two\nlines"}"#.to_vec());
        assert!(!line.contains(&b'\n'));
    }

    #[test]
    fn a_batch_keeps_the_order() {
        assert_eq!(
            batch(["{}", r#"{"b":1}"#]),
            vec![b"{}".to_vec(), br#"{"b":1}"#.to_vec()]
        );
    }
}
