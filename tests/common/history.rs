//! A recorded history of acknowledged grants and appends, and the checker that holds a server's
//! final state against it: no acknowledged entry lost, moved or duplicated; no token regression.

use std::collections::{HashMap, HashSet};

use fencepost::v1::Entry;

/// One acknowledged append.
#[derive(Debug, Clone)]
pub struct Ack {
    pub resource: String,
    pub first_seq: u64,
    pub token: u64,
    pub lines: Vec<Vec<u8>>,
}

/// One acknowledged grant, with the server lifetime it was requested and acknowledged in.
#[derive(Debug, Clone, Copy)]
pub struct GrantAck {
    pub token: u64,
    pub lifetime: u64,
}

/// Everything the clients were told.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub acks: Vec<Ack>,
    pub grants: Vec<GrantAck>,
}

/// Checks `entries` (per resource, as read back after the last restart) against the history.
/// Returns the first violation found.
pub fn check(history: &History, entries: &HashMap<String, Vec<Entry>>) -> Result<(), String> {
    for ack in &history.acks {
        let stored = entries
            .get(&ack.resource)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, line) in ack.lines.iter().enumerate() {
            let seq = ack.first_seq + i as u64;
            let Some(entry) = stored.get(usize::try_from(seq - 1).unwrap_or(usize::MAX)) else {
                return Err(format!("{}: acknowledged seq {seq} is lost", ack.resource));
            };
            if entry.seq != seq || &entry.data != line || entry.token != ack.token {
                return Err(format!(
                    "{}: acknowledged seq {seq} holds {:?} (token {}), not {:?} (token {})",
                    ack.resource,
                    String::from_utf8_lossy(&entry.data),
                    entry.token,
                    String::from_utf8_lossy(line),
                    ack.token
                ));
            }
        }
    }
    let mut seen = HashSet::new();
    for (resource, stored) in entries {
        let mut last_token = 0;
        for e in stored {
            if !seen.insert(e.data.clone()) {
                return Err(format!(
                    "{resource}: entry {:?} is duplicated",
                    String::from_utf8_lossy(&e.data)
                ));
            }
            if e.token < last_token {
                return Err(format!(
                    "{resource}: seq {} has token {} after token {last_token}",
                    e.seq, e.token
                ));
            }
            last_token = e.token;
        }
    }
    let mut max_before: HashMap<u64, u64> = HashMap::new();
    for g in &history.grants {
        let m = max_before.entry(g.lifetime).or_default();
        *m = (*m).max(g.token);
    }
    for g in &history.grants {
        let earlier = max_before
            .iter()
            .filter(|(lifetime, _)| **lifetime < g.lifetime)
            .map(|(_, t)| *t)
            .max()
            .unwrap_or(0);
        if g.token <= earlier {
            return Err(format!(
                "token regression: a grant in server lifetime {} got token {} <= {earlier} issued earlier",
                g.lifetime, g.token
            ));
        }
    }
    Ok(())
}
