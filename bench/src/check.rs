//! W4, the safety check: a pure function over a recorded history and the session contents read
//! back, naming the first difference.

use std::collections::HashMap;

use crate::history::{Batch, Contents, GrantRecord, History, Placed};

/// Checks that every session holds exactly its acknowledged lines in acknowledgement order (none
/// lost, duplicated or reordered; a batch of unknown outcome may be wholly present or absent) in
/// every source, and that each grant's token is higher than every earlier grant's on its session.
/// One-call cycles ([`Placed`]) are also checked against real time (a call answered before another
/// was sent sits before it) and against the seq the server reported (the batch is at that line).
///
/// # Errors
/// The first difference, in words.
pub fn check(history: &History, sources: &[(&str, &Contents)]) -> Result<(), String> {
    let sessions = history.by_session();
    for (session, grants) in &sessions {
        check_tokens(session, grants)?;
        check_real_time(session, grants)?;
    }
    for (source, contents) in sources {
        for (session, grants) in &sessions {
            let actual = contents.get(*session).map_or(&[][..], Vec::as_slice);
            let mut ordered: Vec<(&Batch, Option<u64>)> = Vec::new();
            let mut floating: Vec<&Batch> = Vec::new();
            for g in grants {
                for b in &g.batches {
                    match g.placed {
                        Some(Placed::Unknown) => floating.push(b),
                        Some(Placed::At { first_seq, .. }) => ordered.push((b, Some(first_seq))),
                        None => ordered.push((b, None)),
                    }
                }
            }
            check_lines(&ordered, &floating, actual)
                .map_err(|diff| format!("{session} ({source}): {diff}"))?;
        }
    }
    Ok(())
}

/// One-call cycles in session order: none may come after a call that was answered before it was
/// sent.
fn check_real_time(session: &str, grants: &[&GrantRecord]) -> Result<(), String> {
    let mut latest_sent: Option<(u64, u64)> = None; // (sent, first_seq) of an earlier batch
    for g in grants {
        let Some(Placed::At {
            first_seq,
            sent,
            replied,
        }) = g.placed
        else {
            continue;
        };
        if let Some((earlier_sent, earlier_seq)) = latest_sent
            && replied < earlier_sent
        {
            return Err(format!(
                "{session}: real-time order broken: the batch at seq {first_seq} was acknowledged \
                 before the one at seq {earlier_seq} was sent"
            ));
        }
        if latest_sent.is_none_or(|(s, _)| sent > s) {
            latest_sent = Some((sent, first_seq));
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

/// Walks the expected batches against the lines read back. A batch with a reported seq must start
/// at that line. Floating batches (outcome and place unknown) may sit anywhere, once, or nowhere.
fn check_lines(
    batches: &[(&Batch, Option<u64>)],
    floating: &[&Batch],
    actual: &[Vec<u8>],
) -> Result<(), String> {
    let expected: Vec<&[u8]> = batches
        .iter()
        .flat_map(|(b, _)| b.lines.iter().map(Vec::as_slice))
        .collect();
    let mut used = vec![false; floating.len()];
    let mut pos = 0;
    let mut consumed = 0;
    for (batch, seq) in batches {
        let n = batch.lines.len();
        loop {
            let present = actual.len() >= pos + n && actual[pos..pos + n] == batch.lines[..];
            if present {
                if let Some(seq) = seq
                    && *seq != pos as u64 + 1
                {
                    return Err(format!(
                        "line {}: a batch the server acknowledged at seq {seq} is here",
                        pos + 1
                    ));
                }
                pos += n;
            } else if let Some(m) = take_floating(floating, &mut used, actual, pos) {
                pos += m;
                continue;
            } else if batch.acked {
                let at = (0..n)
                    .find(|&i| actual.get(pos + i) != Some(&batch.lines[i]))
                    .unwrap_or(0);
                return Err(describe(&expected, consumed + at, actual, pos + at));
            }
            break;
        }
        consumed += n;
    }
    while let Some(m) = take_floating(floating, &mut used, actual, pos) {
        pos += m;
    }
    if let Some(extra) = actual.get(pos) {
        let known = expected.contains(&extra.as_slice())
            || floating.iter().any(|b| b.lines.contains(extra));
        let what = if known { "duplicated" } else { "unexpected" };
        return Err(format!("line {}: {what} line {}", pos + 1, show(extra)));
    }
    Ok(())
}

/// Takes an unused floating batch that the lines at `pos` hold whole; its length.
fn take_floating(
    floating: &[&Batch],
    used: &mut [bool],
    actual: &[Vec<u8>],
    pos: usize,
) -> Option<usize> {
    let i = floating.iter().zip(used.iter()).position(|(b, used)| {
        !used
            && actual.len() >= pos + b.lines.len()
            && actual[pos..pos + b.lines.len()] == b.lines[..]
    })?;
    used[i] = true;
    Some(floating[i].lines.len())
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
            placed: None,
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
    /// placed at its reported seq, and checked against it, against real time and for tokens.
    #[test]
    fn one_call_records_are_checked_at_their_reported_place() {
        let at = |first_seq, sent, replied| Placed::At {
            first_seq,
            sent,
            replied,
        };
        let once = |token, placed, lines: &[u32]| {
            let acked = placed != Placed::Unknown;
            let lines = lines.iter().copied().map(line).collect();
            GrantRecord::placed("a", token, placed, Batch { lines, acked })
        };
        let h = History {
            grants: vec![
                once(Some(9), at(3, 2, 5), &[3, 4]),
                once(Some(8), at(1, 1, 3), &[1, 2]),
                once(None, Placed::Unknown, &[5]),
            ],
        };
        let c = |a: &[u32]| contents(a, &[]);
        assert_eq!(run(&h, &c(&[1, 2, 3, 4])), Ok(()));
        assert_eq!(
            run(&h, &c(&[1, 2, 5, 3, 4])).map_err(|e| e.contains("seq 3")),
            Err(true)
        );
        assert_eq!(
            run(&h, &c(&[1, 2, 3, 4, 5])),
            Ok(()),
            "unknown outcome, stored"
        );
        let err = run(&h, &c(&[1, 2, 4])).unwrap_err();
        assert!(err.starts_with("a (file): line 3: lost"), "{err}");
        let err = run(&h, &c(&[1, 2, 3, 4, 5, 5])).unwrap_err();
        assert!(err.contains("duplicated"), "{err}");

        // The unknown batch may sit between acknowledged ones if their seqs leave room for it.
        let mut gap = h.clone();
        gap.grants[0] = once(Some(9), at(4, 2, 5), &[3, 4]);
        assert_eq!(run(&gap, &c(&[1, 2, 5, 3, 4])), Ok(()));

        let mut tokens = h.clone();
        tokens.grants[0].token = Some(7);
        let err = run(&tokens, &c(&[1, 2, 3, 4])).unwrap_err();
        assert!(err.starts_with("a: token regression"), "{err}");

        // Seq 1 sent at tick 6, after seq 3 was answered at tick 5, cannot come first.
        let mut late = h.clone();
        late.grants[1] = once(Some(8), at(1, 6, 7), &[1, 2]);
        let err = run(&late, &c(&[1, 2, 3, 4])).unwrap_err();
        assert!(err.contains("real-time order broken"), "{err}");
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
