//! W1 (64 sessions) and W2 (1 hot session): 16 clients, each on its own connection, repeat the
//! cycle acquire a random session (waiting as needed) -> append 3 lines in one batch -> release.
//! The append carries the release (append-and-release), so a cycle is two round trips.
//!
//! Where the system has one (fencepost's AppendOnce), a second line measures the same cycle done
//! in one call: the server waits for the lease, appends and releases, and answers with the token
//! and the batch's place in the session. It is marked `"cycle":"append-once"`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde_json::Value;

use super::{
    Ctx, MAX_OPS_PER_CLIENT, Tally, append_and_release_recorded, bounded, join_all, payload,
    w4_safety,
};
use crate::history::{Batch, GrantRecord, Placed, Recorder};
use crate::report::{Line, round1};
use crate::systems::Client;

/// Lines per batch.
const BATCH: usize = 3;

/// How a client does one cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cycle {
    /// Acquire, then append carrying the release: two round trips.
    TwoCalls,
    /// One call that acquires, appends and releases ([`crate::systems::Client::append_once`]).
    AppendOnce,
}

/// Runs the cycle on `sessions` sessions with `clients` clients for `--duration`.
///
/// # Errors
/// A client cannot connect.
pub async fn run(
    ctx: &Ctx,
    workload: &'static str,
    sessions: usize,
    clients: usize,
    cycle: Cycle,
) -> Result<Line> {
    let dir = match cycle {
        Cycle::TwoCalls => workload.to_ascii_lowercase(),
        Cycle::AppendOnce => format!("{}-once", workload.to_ascii_lowercase()),
    };
    let names: Arc<Vec<String>> = Arc::new(
        (0..sessions)
            .map(|i| ctx.session(&dir, &format!("s{i:02}.jsonl")))
            .collect(),
    );
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(ctx.sys.connect(ctx.hold_ttl()).await?);
    }
    let recorder = Recorder::default();
    let start = Instant::now();
    let deadline = start + ctx.opts.duration;
    let tasks = conns
        .into_iter()
        .enumerate()
        .map(|(c, conn)| {
            let (names, recorder) = (Arc::clone(&names), recorder.clone());
            tokio::spawn(cycles(conn, workload, c, cycle, names, recorder, deadline))
        })
        .collect();
    let mut total = Tally::default();
    let mut per_client = Vec::with_capacity(clients);
    for result in join_all(tasks).await {
        match result {
            Ok(tally) => {
                per_client.push(tally.ops);
                total.merge(tally);
            }
            Err(e) => {
                per_client.push(0);
                total.error(&e);
            }
        }
    }
    let elapsed = start.elapsed();
    let mut line = ctx.line(
        workload,
        (clients, sessions),
        total.ops,
        elapsed,
        &total.latency,
    );
    line.safety = w4_safety::safety(&*ctx.sys, &recorder.history()).await;
    if sessions == 1 {
        line = with_fairness(line, &per_client);
    }
    if cycle == Cycle::AppendOnce {
        line = line.with("cycle", "append-once");
    }
    Ok(total.annotate(line))
}

/// `fairness` = max/min ops per client (null when a client completed none), with the extremes.
fn with_fairness(line: Line, per_client: &[u64]) -> Line {
    let (min, max) = (
        per_client.iter().copied().min().unwrap_or(0),
        per_client.iter().copied().max().unwrap_or(0),
    );
    let fairness = if min > 0 {
        Value::from(round1(max as f64 / min as f64))
    } else {
        Value::Null
    };
    line.with("fairness", fairness)
        .with("client_ops_min", min)
        .with("client_ops_max", max)
}

/// One client's loop until the deadline; stops at its first failure.
async fn cycles(
    mut conn: Box<dyn Client>,
    workload: &'static str,
    client: usize,
    cycle: Cycle,
    names: Arc<Vec<String>>,
    recorder: Recorder,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let mut op = 0;
    while Instant::now() < deadline && op < MAX_OPS_PER_CLIENT {
        op += 1;
        let session = &names[fastrand::usize(..names.len())];
        let lines: Vec<Vec<u8>> = (0..BATCH)
            .map(|i| payload(workload, client, op, i))
            .collect();
        let t0 = Instant::now();
        let done = match cycle {
            Cycle::TwoCalls => two_calls_recorded(conn.as_mut(), &recorder, session, lines).await,
            Cycle::AppendOnce => once_recorded(conn.as_mut(), &recorder, session, lines).await,
        };
        match done {
            Ok(()) => {
                tally.latency.record(t0.elapsed());
                tally.ops += 1;
            }
            Err(e) => {
                tally.error(&e);
                break;
            }
        }
    }
    tally
}

/// Acquire, then append carrying the release; a failed append releases at best effort, so the
/// other clients are not left waiting out the TTL.
async fn two_calls_recorded(
    conn: &mut dyn Client,
    recorder: &Recorder,
    session: &str,
    lines: Vec<Vec<u8>>,
) -> Result<()> {
    let grant = bounded("acquire", conn.acquire(session)).await?;
    let appended = append_and_release_recorded(conn, recorder, session, &grant, lines).await;
    if appended.is_err() {
        let _ = bounded("release", conn.release(&grant)).await;
    }
    appended
}

/// One call that acquires, appends and releases, recorded at the batch's place in the session
/// with the real-time window of the call. A call whose outcome is unknown is recorded as such: its
/// batch may be anywhere or absent.
async fn once_recorded(
    conn: &mut dyn Client,
    recorder: &Recorder,
    session: &str,
    lines: Vec<Vec<u8>>,
) -> Result<()> {
    let sent = recorder.tick();
    let result = bounded("append-once", conn.append_once(session, &lines)).await;
    let (token, placed, acked) = match &result {
        Ok(ack) => {
            let at = Placed::At {
                first_seq: ack.first_seq,
                sent,
                replied: recorder.tick(),
            };
            (Some(ack.token), at, true)
        }
        Err(_) => (None, Placed::Unknown, false),
    };
    let batch = Batch { lines, acked };
    recorder.finish(GrantRecord::placed(session, token, placed, batch));
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::report::Latency;

    fn line() -> Line {
        Line::new(
            "W2",
            "x",
            "tcp",
            (3, 1),
            0,
            Duration::from_secs(1),
            &Latency::default(),
        )
    }

    #[test]
    fn fairness_is_max_over_min_ops_per_client() {
        let l = with_fairness(line(), &[10, 20, 15]);
        assert_eq!(l.extra("fairness"), Some(&Value::from(2.0)));
        assert_eq!(l.extra("client_ops_min"), Some(&Value::from(10)));
        assert_eq!(l.extra("client_ops_max"), Some(&Value::from(20)));
    }

    #[test]
    fn fairness_is_null_when_a_client_starved() {
        let l = with_fairness(line(), &[10, 0, 15]);
        assert_eq!(l.extra("fairness"), Some(&Value::Null));
    }
}
