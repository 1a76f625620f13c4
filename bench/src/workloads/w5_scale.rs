//! W5: scale. First every one of `--w5-sessions` (100,000) sessions is touched once (acquire,
//! 1 append, release) over 100 connections; then 10,000 leases are held at once and kept alive for
//! `--w5-hold` by 100 connections, each with ONE keepalive stream carrying its 100 leases and
//! renewing them every 2 s on its own schedule.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::sync::{Barrier, mpsc, watch};

use super::{Ctx, Tally, append_and_release_recorded, bounded, join_all, payload, w4_safety};
use crate::history::Recorder;
use crate::report::{Latency, Line};
use crate::systems::{Client, Grant, rss_mib};

/// Client connections in each phase.
const CONNS: usize = 100;
/// Leases held at once in the second phase.
const HELD: usize = 10_000;
/// TTL of the held leases (the server default).
const HOLD_TTL: Duration = Duration::from_secs(10);
/// How often each connection renews its leases (a fifth of the TTL).
const RENEW_EVERY: Duration = Duration::from_secs(2);

/// Runs both phases and checks every session touched.
///
/// # Errors
/// A client cannot connect.
pub async fn run(ctx: &Ctx) -> Result<Line> {
    let n = ctx.opts.w5_sessions;
    let names: Arc<Vec<String>> = Arc::new(
        (0..n)
            .map(|i| ctx.session("w5", &format!("{:03}/{i:06}.jsonl", i / 1000)))
            .collect(),
    );
    let recorder = Recorder::default();

    let start = Instant::now();
    let mut touch = touch_all(ctx, &names, &recorder).await?;
    let touch_elapsed = start.elapsed();

    let held_names = &names[..HELD.min(n)];
    let hold = hold_all(ctx, held_names, &recorder).await?;

    let mut line = ctx.line("W5", (CONNS, n), touch.ops, touch_elapsed, &touch.latency);
    line.safety = w4_safety::safety(&*ctx.sys, &recorder.history()).await;
    let line = line
        .with("rss_mib", hold.rss_mib)
        .with("keepalive_p99_us", hold.tally.latency.quantile_us(0.99))
        .with("lost_leases", hold.lost)
        .with("held_leases", hold.held)
        .with("hold_s", crate::report::round1(hold.held_for.as_secs_f64()))
        .with("touch_complete", touch.ops == n as u64);
    touch.merge_errors(&hold.tally);
    Ok(touch.annotate(line))
}

/// Phase 1: connection `c` touches sessions c, c+100, c+200, ... until done or the touch limit.
async fn touch_all(ctx: &Ctx, names: &Arc<Vec<String>>, recorder: &Recorder) -> Result<Tally> {
    let mut conns = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        conns.push(ctx.sys.connect(ctx.hold_ttl()).await?);
    }
    let deadline = Instant::now() + ctx.opts.w5_touch_limit;
    let tasks = conns
        .into_iter()
        .enumerate()
        .map(|(c, conn)| {
            let (names, recorder) = (Arc::clone(names), recorder.clone());
            tokio::spawn(touch(conn, c, names, recorder, deadline))
        })
        .collect();
    let mut total = Tally::default();
    for result in join_all(tasks).await {
        match result {
            Ok(tally) => total.merge(tally),
            Err(e) => total.error(&e),
        }
    }
    Ok(total)
}

async fn touch(
    mut conn: Box<dyn Client>,
    client: usize,
    names: Arc<Vec<String>>,
    recorder: Recorder,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::default();
    for (i, session) in names.iter().enumerate().skip(client).step_by(CONNS) {
        if Instant::now() >= deadline {
            break;
        }
        let t0 = Instant::now();
        let grant = match bounded("acquire", conn.acquire(session)).await {
            Ok(grant) => grant,
            Err(e) => {
                tally.error(&e);
                break;
            }
        };
        let lines = vec![payload("W5", client, i as u64, 0)];
        let appended =
            append_and_release_recorded(conn.as_mut(), &recorder, session, &grant, lines).await;
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
    tally
}

/// What phase 2 measured.
struct Hold {
    /// Keepalive round-trip latencies and errors.
    tally: Tally,
    held: usize,
    lost: usize,
    held_for: Duration,
    rss_mib: Option<f64>,
}

/// Phase 2: each connection acquires its 100 sessions and keeps them alive on one stream until
/// told to stop; the hold is timed from the moment every connection holds its leases.
async fn hold_all(ctx: &Ctx, names: &[String], recorder: &Recorder) -> Result<Hold> {
    let mut conns = Vec::with_capacity(CONNS);
    for _ in 0..CONNS {
        conns.push(ctx.sys.connect(HOLD_TTL).await?);
    }
    let per = names.len().div_ceil(CONNS).max(1);
    let (ready_tx, mut ready) = mpsc::channel(CONNS);
    let (stop_tx, stop) = watch::channel(false);
    let pairs: Vec<_> = conns.into_iter().zip(names.chunks(per)).collect();
    let renewed = Arc::new(Barrier::new(pairs.len()));
    let mut tasks = Vec::with_capacity(CONNS);
    for (conn, chunk) in pairs {
        let signals = Signals {
            ready: ready_tx.clone(),
            stop: stop.clone(),
            renewed: renewed.clone(),
        };
        tasks.push(tokio::spawn(keep(
            conn,
            chunk.to_vec(),
            recorder.clone(),
            signals,
        )));
    }
    drop(ready_tx);
    // Every task reports once, held or failed; a closed channel means they all have.
    let mut held = 0;
    while let Some(n) = ready.recv().await {
        held += n;
    }
    let since = Instant::now();
    tokio::time::sleep(ctx.opts.w5_hold).await;
    let rss = ctx.sys.server_pid().and_then(rss_mib);
    let held_for = since.elapsed();
    let _ = stop_tx.send(true);
    let mut tally = Tally::default();
    let mut lost = 0;
    for result in join_all(tasks).await {
        match result {
            Ok((t, l)) => {
                tally.merge(t);
                lost += l;
            }
            Err(e) => tally.error(&e),
        }
    }
    Ok(Hold {
        tally,
        held,
        lost,
        held_for,
        rss_mib: rss,
    })
}

/// How the phase-2 connections and their driver signal each other.
struct Signals {
    /// Each connection says how many leases it holds, once.
    ready: mpsc::Sender<usize>,
    /// Set when the hold is over.
    stop: watch::Receiver<bool>,
    /// Every connection has made its last renewal: only then do they release, so that no
    /// renewal is measured against the release traffic of the others.
    renewed: Arc<Barrier>,
}

/// One connection of phase 2; returns its keepalive tally and how many of its leases were lost.
async fn keep(
    mut conn: Box<dyn Client>,
    sessions: Vec<String>,
    recorder: Recorder,
    signals: Signals,
) -> (Tally, usize) {
    let Signals {
        ready,
        stop,
        renewed,
    } = signals;
    let mut tally = Tally::default();
    let mut grants: Vec<Grant> = Vec::with_capacity(sessions.len());
    for session in &sessions {
        match bounded("acquire", conn.acquire(session)).await {
            Ok(grant) => {
                recorder.finish(recorder.granted(session, grant.token));
                grants.push(grant);
            }
            Err(e) => {
                tally.error(&e);
                break;
            }
        }
    }
    let mut stream = match bounded("open keepalive", conn.keepalive()).await {
        Ok(stream) => Some(stream),
        Err(e) => {
            tally.error(&e);
            None
        }
    };
    let _ = ready.send(grants.len()).await;
    drop(ready);
    let mut lost: HashSet<String> = HashSet::new();
    let mut latency = Latency::default();
    if let Some(stream) = stream.as_mut() {
        // Each connection renews on its own fixed schedule, also once the hold is over: its next
        // renewal after the stop is its last, and counts the leases that did not survive. (Renewing
        // at the stop itself would fire all 100 connections at once, a burst the workload never
        // has, and that burst would be most of the latency tail.)
        let mut tick =
            tokio::time::interval_at(tokio::time::Instant::now() + RENEW_EVERY, RENEW_EVERY);
        // After a renewal slower than the period, the next waits a whole period (no catch-up burst).
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let stopping = *stop.borrow();
            let t0 = Instant::now();
            match bounded("keepalive", stream.renew(&grants)).await {
                Ok(gone) => {
                    latency.record(t0.elapsed());
                    lost.extend(gone);
                }
                Err(e) => {
                    tally.error(&e);
                    break;
                }
            }
            if stopping {
                break;
            }
        }
    }
    tally.latency = latency;
    // Bounded, so that a connection that never gets here (a panicked task) holds nobody up for
    // long; the leases' TTL outlasts the wait.
    let _ = tokio::time::timeout(2 * RENEW_EVERY, renewed.wait()).await;
    for grant in grants.iter().filter(|g| !lost.contains(&g.id)) {
        if let Err(e) = bounded("release", conn.release(grant)).await {
            tally.error(&e);
        }
    }
    (tally, lost.len())
}
