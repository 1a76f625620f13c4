//! W4, the safety check: a pure function over a recorded history and the session contents read
//! back, naming the first difference.

use std::collections::HashMap;

use crate::history::{Batch, Contents, GrantRecord, History};

/// Checks that every session holds exactly its acknowledged lines in acknowledgement order (none
/// lost, duplicated or reordered; a batch of unknown outcome may be wholly present or absent) in
/// every source, and that each grant's token is higher than every earlier grant's on its session.
///
/// # Errors
/// The first difference, in words.
pub fn check(history: &History, sources: &[(&str, &Contents)]) -> Result<(), String> {
    let sessions = history.by_session();
    for (session, grants) in &sessions {
        check_tokens(session, grants)?;
    }
    for (source, contents) in sources {
        for (session, grants) in &sessions {
            let actual = contents.get(*session).map_or(&[][..], Vec::as_slice);
            let batches: Vec<&Batch> = grants.iter().flat_map(|g| &g.batches).collect();
            check_lines(&batches, actual)
                .map_err(|diff| format!("{session} ({source}): {diff}"))?;
        }
    }
    Ok(())
}

fn check_tokens(session: &str, grants: &[&GrantRecord]) -> Result<(), String> {
    let mut highest: Option<u64> = None;
    for g in grants {
        let Some(token) = g.token else { continue };
        if let Some(prev) = highest
            && token <= prev
        {
            return Err(format!(
                "{session}: token regression: grant #{} got token {token}, an earlier grant got {prev}",
                g.order
            ));
        }
        highest = Some(token);
    }
    Ok(())
}

/// Walks the expected batches against the lines read back.
fn check_lines(batches: &[&Batch], actual: &[Vec<u8>]) -> Result<(), String> {
    let expected: Vec<&[u8]> = batches
        .iter()
        .flat_map(|b| b.lines.iter().map(Vec::as_slice))
        .collect();
    let mut pos = 0;
    let mut consumed = 0;
    for batch in batches {
        let n = batch.lines.len();
        let present = actual.len() >= pos + n && actual[pos..pos + n] == batch.lines[..];
        if present {
            pos += n;
        } else if batch.acked {
            let at = (0..n)
                .find(|&i| actual.get(pos + i) != Some(&batch.lines[i]))
                .unwrap_or(0);
            return Err(describe(&expected, consumed + at, actual, pos + at));
        }
        consumed += n;
    }
    if let Some(extra) = actual.get(pos) {
        let what = if expected.contains(&extra.as_slice()) {
            "duplicated"
        } else {
            "unexpected"
        };
        return Err(format!("line {}: {what} line {}", pos + 1, show(extra)));
    }
    Ok(())
}

/// Names the difference between the expected line `e` and what line `a` of the file holds.
fn describe(expected: &[&[u8]], e: usize, actual: &[Vec<u8>], a: usize) -> String {
    let want = expected[e];
    let Some(found) = actual.get(a) else {
        return format!(
            "line {}: lost: expected {}, found the end",
            a + 1,
            show(want)
        );
    };
    let index: HashMap<&[u8], usize> = expected.iter().enumerate().map(|(i, l)| (*l, i)).collect();
    let want_later = actual[a..].iter().any(|l| l.as_slice() == want);
    match index.get(found.as_slice()) {
        Some(&i) if i < e => format!("line {}: duplicated line {}", a + 1, show(found)),
        Some(_) if want_later => format!(
            "line {}: reordered: found {} before {}",
            a + 1,
            show(found),
            show(want)
        ),
        Some(_) => format!("line {}: lost: expected {}", a + 1, show(want)),
        None => format!(
            "line {}: unexpected line {}, expected {}",
            a + 1,
            show(found),
            show(want)
        ),
    }
}

/// A line, shortened for a message.
fn show(line: &[u8]) -> String {
    const KEEP: usize = 64;
    let text = String::from_utf8_lossy(line);
    if text.chars().count() <= KEEP {
        format!("{text:?}")
    } else {
        let head: String = text.chars().take(KEEP).collect();
        format!("{head:?}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: u32) -> Vec<u8> {
        format!(r#"{{"n":{n}}}"#).into_bytes()
    }

    fn grant(session: &str, order: u64, token: Option<u64>, batches: &[&[u32]]) -> GrantRecord {
        GrantRecord {
            session: session.to_owned(),
            order,
            token,
            batches: batches
                .iter()
                .map(|b| Batch {
                    lines: b.iter().copied().map(line).collect(),
                    acked: true,
                })
                .collect(),
        }
    }

    /// Two sessions, grants recorded out of order across clients: a: [1,2,3] [4] then [5,6];
    /// b: [10] [11].
    fn history() -> History {
        History {
            grants: vec![
                grant("a", 2, Some(7), &[&[5, 6]]),
                grant("b", 1, Some(3), &[&[10]]),
                grant("a", 0, Some(5), &[&[1, 2, 3], &[4]]),
                grant("b", 3, Some(4), &[&[11]]),
            ],
        }
    }

    fn contents(a: &[u32], b: &[u32]) -> Contents {
        Contents::from([
            ("a".to_owned(), a.iter().copied().map(line).collect()),
            ("b".to_owned(), b.iter().copied().map(line).collect()),
        ])
    }

    fn run(history: &History, c: &Contents) -> Result<(), String> {
        check(history, &[("file", c)])
    }

    #[test]
    fn a_correct_history_passes() {
        let c = contents(&[1, 2, 3, 4, 5, 6], &[10, 11]);
        assert_eq!(run(&history(), &c), Ok(()));
    }

    #[test]
    fn a_lost_line_fails() {
        let err = run(&history(), &contents(&[1, 2, 4, 5, 6], &[10, 11])).unwrap_err();
        assert!(err.starts_with("a (file): line 3: lost"), "{err}");
    }

    #[test]
    fn a_lost_tail_fails() {
        let err = run(&history(), &contents(&[1, 2, 3, 4, 5, 6], &[10])).unwrap_err();
        assert!(err.starts_with("b (file): line 2: lost"), "{err}");
        assert!(err.contains("found the end"), "{err}");
    }

    #[test]
    fn a_duplicated_line_fails() {
        let err = run(&history(), &contents(&[1, 2, 3, 3, 4, 5, 6], &[10, 11])).unwrap_err();
        assert!(err.starts_with("a (file): line 4: duplicated"), "{err}");
        let err = run(&history(), &contents(&[1, 2, 3, 4, 5, 6], &[10, 11, 11])).unwrap_err();
        assert!(err.starts_with("b (file): line 3: duplicated"), "{err}");
    }

    #[test]
    fn reordered_lines_fail() {
        let err = run(&history(), &contents(&[1, 2, 3, 5, 6, 4], &[10, 11])).unwrap_err();
        assert!(err.starts_with("a (file): line 4: reordered"), "{err}");
        let err = run(&history(), &contents(&[1, 2, 3, 4, 5, 6], &[11, 10])).unwrap_err();
        assert!(err.starts_with("b (file): line 1: reordered"), "{err}");
    }

    #[test]
    fn a_foreign_line_fails() {
        let err = run(&history(), &contents(&[1, 2, 3, 4, 5, 6, 99], &[10, 11])).unwrap_err();
        assert!(err.starts_with("a (file): line 7: unexpected"), "{err}");
    }

    #[test]
    fn a_token_regression_fails() {
        let mut h = history();
        h.grants[3].token = Some(2);
        let err = run(&h, &contents(&[1, 2, 3, 4, 5, 6], &[10, 11])).unwrap_err();
        assert!(err.starts_with("b: token regression"), "{err}");
    }

    #[test]
    fn a_repeated_token_fails() {
        let mut h = history();
        h.grants[0].token = Some(5);
        let err = run(&h, &contents(&[1, 2, 3, 4, 5, 6], &[10, 11])).unwrap_err();
        assert!(err.contains("token regression"), "{err}");
    }

    #[test]
    fn grants_without_tokens_check_lines_only() {
        let mut h = history();
        for g in &mut h.grants {
            g.token = None;
        }
        assert_eq!(run(&h, &contents(&[1, 2, 3, 4, 5, 6], &[10, 11])), Ok(()));
        assert!(run(&h, &contents(&[1, 2, 3, 4, 6], &[10, 11])).is_err());
    }

    #[test]
    fn a_batch_of_unknown_outcome_may_be_present_or_absent_but_never_torn() {
        let mut h = history();
        h.grants[2].batches[1].acked = false; // [4]
        h.grants[0].batches[0].acked = false; // [5, 6]
        for a in [
            &[1, 2, 3, 4, 5, 6][..],
            &[1, 2, 3, 5, 6],
            &[1, 2, 3, 4],
            &[1, 2, 3],
        ] {
            assert_eq!(run(&h, &contents(a, &[10, 11])), Ok(()), "{a:?}");
        }
        assert!(run(&h, &contents(&[1, 2, 3, 5], &[10, 11])).is_err());
    }

    /// One-call cycles, recorded as the client saw the replies (not in session order): each is
    /// placed at its first seq, so the check follows the server's order, tokens included.
    #[test]
    fn one_call_records_are_checked_in_the_order_of_their_place_in_the_session() {
        let once = |token, first_seq, lines: &[u32], acked| {
            GrantRecord::placed(
                "a",
                token,
                first_seq,
                Batch {
                    lines: lines.iter().copied().map(line).collect(),
                    acked,
                },
            )
        };
        let mut h = History {
            grants: vec![
                once(Some(9), 3, &[3, 4], true),
                once(Some(8), 1, &[1, 2], true),
                once(None, u64::MAX, &[5], false),
            ],
        };
        let c = |a: &[u32]| contents(a, &[]);
        assert_eq!(run(&h, &c(&[1, 2, 3, 4])), Ok(()));
        assert_eq!(
            run(&h, &c(&[1, 2, 3, 4, 5])),
            Ok(()),
            "unknown outcome, stored"
        );
        let err = run(&h, &c(&[1, 2, 4])).unwrap_err();
        assert!(err.starts_with("a (file): line 3: lost"), "{err}");
        h.grants[0].token = Some(7);
        let err = run(&h, &c(&[1, 2, 3, 4])).unwrap_err();
        assert!(err.starts_with("a: token regression"), "{err}");
    }

    #[test]
    fn every_source_is_checked() {
        let good = contents(&[1, 2, 3, 4, 5, 6], &[10, 11]);
        let bad = contents(&[1, 2, 3, 4, 5], &[10, 11]);
        let err = check(&history(), &[("file", &good), ("read-rpc", &bad)]).unwrap_err();
        assert!(err.starts_with("a (read-rpc): line 6: lost"), "{err}");
    }

    #[test]
    fn a_session_missing_from_a_source_has_no_lines() {
        let h = History {
            grants: vec![grant("c", 0, Some(1), &[])],
        };
        assert_eq!(run(&h, &Contents::new()), Ok(()));
        let h = History {
            grants: vec![grant("c", 0, Some(1), &[&[1]])],
        };
        assert!(run(&h, &Contents::new()).unwrap_err().contains("lost"));
    }
}
