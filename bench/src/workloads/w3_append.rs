//! W3: appends under a held lease. Each client takes a lease on its own session once, then appends
//! single ~300-byte lines back to back until the deadline; the unit is one append.

use std::time::Instant;

use anyhow::Result;

use super::{Ctx, MAX_OPS_PER_CLIENT, Tally, bounded, join_all, payload, w4_safety};
use crate::history::{Batch, Recorder};
use crate::report::Line;
use crate::systems::Client;

/// Runs W3 with `clients` clients (1 or 16) for `--duration`.
///
/// # Errors
/// A client cannot connect.
pub async fn run(ctx: &Ctx, clients: usize) -> Result<Line> {
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
            let session = ctx.session(&format!("w3-{clients}"), &format!("s{c:02}.jsonl"));
            tokio::spawn(appends(conn, c, session, recorder.clone(), deadline))
        })
        .collect();
    let mut total = Tally::default();
    for result in join_all(tasks).await {
        match result {
            Ok(tally) => total.merge(tally),
            Err(e) => total.error(&e),
        }
    }
    let elapsed = start.elapsed();
    let mut line = ctx.line("W3", (clients, clients), total.ops, elapsed, &total.latency);
    line.safety = w4_safety::safety(&*ctx.sys, &recorder.history()).await;
    Ok(total.annotate(line))
}

/// One client: acquire, append until the deadline, release (acquire and release are not timed).
async fn appends(
    mut conn: Box<dyn Client>,
    client: usize,
    session: String,
    recorder: Recorder,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    let grant = match bounded("acquire", conn.acquire(&session)).await {
        Ok(grant) => grant,
        Err(e) => {
            tally.error(&e);
            return tally;
        }
    };
    let mut record = recorder.granted(&session, grant.token);
    let mut op = 0;
    while Instant::now() < deadline && op < MAX_OPS_PER_CLIENT {
        op += 1;
        let lines = vec![payload("W3", client, op, 0)];
        let t0 = Instant::now();
        let appended = bounded("append", conn.append(&grant, &lines, false)).await;
        record.batches.push(Batch {
            lines,
            acked: appended.is_ok(),
        });
        match appended {
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
    recorder.finish(record);
    if let Err(e) = bounded("release", conn.release(&grant)).await {
        tally.error(&e);
    }
    tally
}
