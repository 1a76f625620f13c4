//! W6: loss and hand-over. A holder takes a lease with a 1 s TTL, renews it once on a keepalive
//! stream and then stops, while a waiter queues for the same session. Measured per repetition:
//! handover = waiter's grant - server expiry, notify = holder observes the loss - server expiry.
//!
//! The server's expiry instant is not visible to a client, so it is estimated as the arrival of
//! the holder's last renewal reply plus the granted TTL. The server restarted the TTL when it
//! handled that renewal, slightly before the reply arrived, so the estimate is late by up to one
//! one-way trip and both measures read short by as much; a sample observed before the estimate is
//! clamped to 0 and counted in `early_samples`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Ctx, Tally, bounded, payload, w4_safety};
use crate::history::{Batch, Recorder};
use crate::report::{Latency, Line};

/// TTL the holder asks for.
const HOLDER_TTL: Duration = Duration::from_secs(1);
/// How long after the estimated expiry a loss or grant may still come before the repetition fails.
const LATE: Duration = Duration::from_secs(30);
/// Upper bound on the whole workload.
const LIMIT: Duration = Duration::from_secs(600);

/// Runs `--w6-reps` repetitions, one after the other, each on its own session.
///
/// # Errors
/// Never for a failed repetition (counted in `errors`); only for setup failures.
pub async fn run(ctx: &Ctx) -> Result<Line> {
    if !ctx.sys.expires() {
        let mut line = ctx
            .line("W6", (2, 0), 0, Duration::ZERO, &Latency::default())
            .with(
                "skipped",
                "no lease expiry: a lock file whose holder stops stays held forever",
            );
        line.safety = "n/a".to_owned();
        return Ok(line);
    }
    let recorder = Recorder::default();
    let (mut handover, mut notify) = (Latency::default(), Latency::default());
    let (mut early, mut stale_accepted, mut ttl) = (0, 0, Duration::ZERO);
    let mut tally = Tally::default();
    let start = Instant::now();
    for rep in 0..ctx.opts.w6_reps {
        if start.elapsed() > LIMIT {
            break;
        }
        match once(ctx, rep, &recorder).await {
            Ok(sample) => {
                for (latency, us) in [
                    (&mut handover, sample.handover_us),
                    (&mut notify, sample.notify_us),
                ] {
                    early += u64::from(us < 0);
                    latency.record(Duration::from_micros(us.max(0).unsigned_abs()));
                }
                stale_accepted += u64::from(sample.stale_accepted);
                ttl = sample.ttl;
                tally.ops += 1;
            }
            Err(e) => tally.error(&e),
        }
    }
    let elapsed = start.elapsed();
    let mut line = ctx.line("W6", (2, ctx.opts.w6_reps), tally.ops, elapsed, &handover);
    line.safety = w4_safety::safety(&*ctx.sys, &recorder.history()).await;
    if stale_accepted > 0 {
        line.safety =
            format!("fail: {stale_accepted} appends under a lost lease's token were accepted");
    }
    let line = line
        .with("handover_p50_us", handover.quantile_us(0.5))
        .with("handover_p99_us", handover.quantile_us(0.99))
        .with("notify_p99_us", notify.quantile_us(0.99))
        .with("ttl_ms", u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        .with("early_samples", early);
    Ok(tally.annotate(line))
}

/// One repetition's measures, in signed microseconds from the estimated expiry.
struct Sample {
    handover_us: i64,
    notify_us: i64,
    stale_accepted: bool,
    ttl: Duration,
}

async fn once(ctx: &Ctx, rep: usize, recorder: &Recorder) -> Result<Sample> {
    let session = ctx.session("w6", &format!("s{rep:02}.jsonl"));
    let mut holder = ctx.sys.connect(HOLDER_TTL).await?;
    let mut waiter = ctx.sys.connect(ctx.hold_ttl()).await?;
    let grant = bounded("holder acquire", holder.acquire(&session)).await?;
    recorder.finish(recorder.granted(&session, grant.token));
    let watch = bounded("holder renewal", holder.watch_loss(&grant)).await?;
    let expiry = watch.renewed_at + grant.ttl;

    let queued = {
        let (session, recorder) = (session.clone(), recorder.clone());
        tokio::spawn(async move {
            let waiting = waiter.acquire(&session);
            let granted = tokio::time::timeout(HOLDER_TTL * 10 + LATE, waiting)
                .await
                .context("the waiter was never granted")??;
            let at = Instant::now();
            let record = recorder.granted(&session, granted.token);
            Ok::<_, anyhow::Error>((waiter, granted, at, record))
        })
    };
    let lost_at = match tokio::time::timeout(grant.ttl + LATE, watch.lost).await {
        Ok(Ok(at)) => at,
        Ok(Err(_)) => bail!("the holder's loss watch ended without a loss"),
        Err(_) => bail!("the holder was not told of the loss within {LATE:?} of expiry"),
    };
    let (mut waiter, granted, granted_at, mut record) = queued.await??;

    // The old holder's token is stale now: its append must be refused.
    let stale = vec![payload("W6", 0, rep as u64, 0)];
    let stale_accepted = bounded("stale append", holder.append(&grant, &stale, false))
        .await
        .is_ok();

    let lines = vec![payload("W6", 1, rep as u64, 0)];
    let appended = bounded("waiter append", waiter.append(&granted, &lines, true)).await;
    record.batches.push(Batch {
        lines,
        acked: appended.is_ok(),
    });
    recorder.finish(record);
    appended?;
    Ok(Sample {
        handover_us: signed_us(granted_at, expiry),
        notify_us: signed_us(lost_at, expiry),
        stale_accepted,
        ttl: grant.ttl,
    })
}

/// `at - reference` in microseconds, negative when `at` came first.
fn signed_us(at: Instant, reference: Instant) -> i64 {
    let us = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    if at >= reference {
        us(at - reference)
    } else {
        -us(reference - at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_us_is_negative_before_the_reference() {
        let t = Instant::now();
        let later = t + Duration::from_micros(1500);
        assert_eq!(signed_us(later, t), 1500);
        assert_eq!(signed_us(t, later), -1500);
        assert_eq!(signed_us(t, t), 0);
    }
}
