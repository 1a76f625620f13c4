//! Resource names: validated relative paths of session files under the data root.

use std::fmt;
use std::sync::Arc;

use crate::error::CoreError;

/// Most path segments a resource name may have.
pub const MAX_SEGMENTS: usize = 8;
/// Longest segment, in bytes.
pub const MAX_SEGMENT_LEN: usize = 128;
/// Longest name, in bytes.
pub const MAX_NAME_LEN: usize = 512;
/// First segment reserved for the server's own metadata.
pub const RESERVED_SEGMENT: &str = ".fencepost";
/// Ending of the server's index files.
pub const INDEX_SUFFIX: &str = ".idx";
/// Ending of an index file while adoption rewrites it.
pub const ADOPTING_SUFFIX: &str = ".idx.adopt";

/// A validated resource name such as `agents/main/sessions/4f1c2a.jsonl`.
///
/// Cheap to clone. The grammar is 1-8 `/`-separated segments of `[A-Za-z0-9._:@+-]{1,128}`, at most
/// 512 bytes, no `.` or `..` segment, no directory segment ending in `.idx` or `.idx.adopt`, and
/// not under the reserved `.fencepost/` tree.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(Arc<str>);

impl ResourceName {
    /// Validates `name`.
    ///
    /// # Errors
    /// [`CoreError::InvalidResource`] naming the offending segment and what is wrong with it.
    pub fn parse(name: &str) -> Result<Self, CoreError> {
        let bad = |why: String| CoreError::InvalidResource {
            name: name.to_owned(),
            reason: why,
        };
        if name.is_empty() {
            return Err(bad("the name is empty".into()));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(bad(format!(
                "the name is {} bytes; the limit is {MAX_NAME_LEN}",
                name.len()
            )));
        }
        if name.starts_with('/') {
            return Err(bad(
                "absolute paths are not allowed; use a path relative to the data root".into(),
            ));
        }
        if name.contains('\0') {
            return Err(bad("the name contains a NUL byte".into()));
        }
        if name.contains('\\') {
            return Err(bad(
                "the name contains a backslash; use '/' between segments".into(),
            ));
        }
        let segments: Vec<&str> = name.split('/').collect();
        if segments.len() > MAX_SEGMENTS {
            return Err(bad(format!(
                "the name has {} segments; the limit is {MAX_SEGMENTS}",
                segments.len()
            )));
        }
        for (i, seg) in segments.iter().enumerate() {
            check_segment(i, seg).map_err(bad)?;
        }
        // A resource's index is `<name>.idx` in a mirror of the tree, so a directory named like
        // that would collide with another resource's index file.
        for (i, seg) in segments[..segments.len() - 1].iter().enumerate() {
            if let Some(suffix) = [INDEX_SUFFIX, ADOPTING_SUFFIX]
                .into_iter()
                .find(|suffix| seg.ends_with(suffix))
            {
                return Err(bad(format!(
                    "segment {} ({seg}) is a directory ending in '{suffix}', which the server \
                     reserves for its index files; only the last segment may end that way",
                    i + 1
                )));
            }
        }
        if segments[0] == RESERVED_SEGMENT {
            return Err(bad(format!(
                "segment '{RESERVED_SEGMENT}' is reserved for the server's metadata"
            )));
        }
        Ok(Self(Arc::from(name)))
    }

    /// The name as given.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }

    /// True if this name starts with `prefix` (plain string prefix).
    #[must_use]
    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.0.starts_with(prefix)
    }
}

fn check_segment(index: usize, seg: &str) -> Result<(), String> {
    let n = index + 1;
    if seg.is_empty() {
        return Err(format!(
            "segment {n} is empty (a leading, doubled or trailing '/')"
        ));
    }
    if seg == "." || seg == ".." {
        return Err(format!(
            "segment {n} is '{seg}'; '.' and '..' are not allowed"
        ));
    }
    if seg.len() > MAX_SEGMENT_LEN {
        return Err(format!(
            "segment {n} is {} bytes; the limit is {MAX_SEGMENT_LEN}",
            seg.len()
        ));
    }
    if let Some(c) = seg.chars().find(|c| !allowed(*c)) {
        return Err(format!(
            "segment {n} ({}) contains {c:?}; allowed are A-Z a-z 0-9 . _ : @ + -",
            seg.escape_debug()
        ));
    }
    Ok(())
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '+' | '-')
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", &*self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_session_names_are_accepted() {
        for name in [
            "agents/main/sessions/4f1c2a.jsonl",
            "agents/voice/sessions/remediation:t2:414ee52d.jsonl",
            "sessions.json",
            "a/b/c/d/e/f/g/h",
            "user@host+x/-_.jsonl",
            "a/b.idx",
        ] {
            assert_eq!(ResourceName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn hostile_names_are_refused_naming_the_problem() {
        let long_seg = "a".repeat(129);
        let long_name = format!(
            "{}/{}/{}/{}/x",
            "a".repeat(128),
            "b".repeat(128),
            "c".repeat(128),
            "d".repeat(128)
        );
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty"),
            ("..", "'..'"),
            (".", "'.'"),
            ("/abs", "absolute"),
            ("a/../b", "'..'"),
            ("a/./b", "'.'"),
            ("a\0b", "NUL"),
            ("a\\b", "backslash"),
            ("a//b", "empty"),
            ("a/b/", "empty"),
            (&long_seg, "129 bytes"),
            ("1/2/3/4/5/6/7/8/9", "9 segments"),
            (&long_name, "the limit is 512"),
            ("a b", "' '"),
            ("a/é", "'é'"),
            (".fencepost/index", "reserved"),
            ("a\nb", "'\\n'"),
            (
                "s.jsonl.idx/x",
                "segment 1 (s.jsonl.idx) is a directory ending in '.idx'",
            ),
        ];
        for (name, needle) in cases {
            let err = ResourceName::parse(name).unwrap_err().to_string();
            assert!(err.contains(needle), "{name:?}: {err}");
        }
    }
}
