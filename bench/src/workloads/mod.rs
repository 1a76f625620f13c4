//! The workloads of BENCH.md, written once against the [`System`] trait, plus what they share:
//! session names, payload lines, per-op time bounds and the per-client tally.

mod echo;
mod w1_cycle;
mod w3_append;
mod w4_safety;
mod w5_scale;
mod w6_handover;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow};

use crate::cli::{Opts, Workload};
use crate::report::{Latency, Line};
use crate::systems::System;
use w1_cycle::Cycle;

/// Upper bound on any single operation; an op that takes longer counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(60);

/// Hard cap on ops per client in a timed loop, so every workload is bounded in count too.
const MAX_OPS_PER_CLIENT: u64 = 10_000_000;

/// Size of one payload line, in bytes.
const LINE_BYTES: usize = 300;

/// What every workload needs.
pub struct Ctx {
    pub sys: Arc<dyn System>,
    pub opts: Opts,
    /// Names this run's sessions apart from any earlier run's on a shared server.
    pub run_id: String,
}

impl Ctx {
    /// The resource name of session `name` of `workload`.
    pub fn session(&self, workload: &str, name: &str) -> String {
        format!("bench-{}/{workload}/{name}", self.run_id)
    }

    /// TTL of leases held for a whole timed phase: the phase plus a margin, within the server's
    /// default maximum TTL (10 minutes).
    pub fn hold_ttl(&self) -> Duration {
        (self.opts.duration + Duration::from_secs(60)).min(Duration::from_secs(600))
    }

    /// An empty result line for this system.
    pub fn line(
        &self,
        workload: &str,
        shape: (usize, usize),
        ops: u64,
        elapsed: Duration,
        latency: &Latency,
    ) -> Line {
        Line::new(
            workload,
            self.sys.name(),
            self.sys.transport(),
            shape,
            ops,
            elapsed,
            latency,
        )
    }
}

/// Runs one workload; W3 gives more than one line.
///
/// # Errors
/// The workload could not run at all (e.g. no client could connect).
pub async fn run(ctx: &Ctx, workload: Workload) -> Result<Vec<Line>> {
    settle().await;
    match workload {
        Workload::W1 => cycle_lines(ctx, "W1", 64).await,
        Workload::W2 => cycle_lines(ctx, "W2", 1).await,
        Workload::W3 => {
            let mut lines = vec![w3_append::run(ctx, 1).await?];
            settle().await;
            lines.push(w3_append::run(ctx, 16).await?);
            if let Some(endpoint) = ctx.sys.echo_endpoint() {
                lines.push(echo::run(ctx, &endpoint, 16).await?);
            }
            Ok(lines)
        }
        // W4 is the safety field of every other workload's line.
        Workload::W4 => Ok(Vec::new()),
        Workload::W5 => Ok(vec![w5_scale::run(ctx).await?]),
        Workload::W6 => Ok(vec![w6_handover::run(ctx).await?]),
    }
}

/// Writes every dirty page back before a workload starts, so that none pays for the write-back of
/// what ran before it (a build, an earlier workload, another system's files).
async fn settle() {
    let _ = tokio::task::spawn_blocking(rustix::fs::sync).await;
}

/// W1 or W2 with 16 clients: the two-call cycle, then the one-call cycle where the system has it.
async fn cycle_lines(ctx: &Ctx, workload: &'static str, sessions: usize) -> Result<Vec<Line>> {
    let mut lines = vec![w1_cycle::run(ctx, workload, sessions, 16, Cycle::TwoCalls).await?];
    if ctx.sys.has_append_once() {
        settle().await;
        lines.push(w1_cycle::run(ctx, workload, sessions, 16, Cycle::AppendOnce).await?);
    }
    Ok(lines)
}

/// A ~300-byte JSON line, unique to (workload, client, op, index) so the safety check can tell
/// every line apart.
pub fn payload(workload: &str, client: usize, op: u64, index: usize) -> Vec<u8> {
    let head = format!(
        r#"{{"type":"message","bench":"{workload}","client":{client},"op":{op},"line":{index},"text":""#
    );
    let fill = LINE_BYTES.saturating_sub(head.len() + 2);
    let mut line = head.into_bytes();
    line.extend(std::iter::repeat_n(b'x', fill));
    line.extend_from_slice(b"\"}");
    line
}

/// Runs `op`, turning a timeout into an error.
///
/// # Errors
/// The op's own error, or taking longer than [`OP_TIMEOUT`].
pub async fn bounded<T>(what: &str, op: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(OP_TIMEOUT, op)
        .await
        .map_err(|_| anyhow!("{what}: no answer within {OP_TIMEOUT:?}"))?
}

/// What one client of a timed loop did.
#[derive(Default)]
pub struct Tally {
    pub ops: u64,
    pub latency: Latency,
    pub errors: u64,
    pub first_error: Option<String>,
}

impl Tally {
    /// Counts a failed op, keeping the first message.
    pub fn error(&mut self, err: &anyhow::Error) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(format!("{err:#}"));
        }
    }

    /// Adds another client's tally.
    pub fn merge(&mut self, other: Tally) {
        self.ops += other.ops;
        self.latency.merge(&other.latency);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    /// Adds another tally's errors only.
    pub fn merge_errors(&mut self, other: &Tally) {
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
    }

    /// Adds `errors` and `error` to a line when anything failed.
    pub fn annotate(&self, line: Line) -> Line {
        match &self.first_error {
            Some(first) => line
                .with("errors", self.errors)
                .with("error", first.clone()),
            None => line,
        }
    }
}

/// Joins client tasks, turning a panicked task into an error tally.
pub async fn join_all<T: Send + 'static>(tasks: Vec<tokio::task::JoinHandle<T>>) -> Vec<Result<T>> {
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.map_err(|e| anyhow!("client task failed: {e}")));
    }
    out
}

/// Appends `lines` under `grant` and releases in the same call, recording the grant and the batch
/// (acknowledged or of unknown outcome) for the W4 check.
pub async fn append_and_release_recorded(
    conn: &mut dyn crate::systems::Client,
    recorder: &crate::history::Recorder,
    session: &str,
    grant: &crate::systems::Grant,
    lines: Vec<Vec<u8>>,
) -> Result<()> {
    let mut record = recorder.granted(session, grant.token);
    let appended = bounded("append", conn.append(grant, &lines, true)).await;
    record.batches.push(crate::history::Batch {
        lines,
        acked: appended.is_ok(),
    });
    recorder.finish(record);
    appended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_lines_are_300_byte_json_objects_and_unique() {
        let a = payload("W1", 3, 12345, 2);
        assert_eq!(a.len(), LINE_BYTES);
        let v: serde_json::Value = serde_json::from_slice(&a).unwrap();
        assert_eq!(
            (v["client"].as_u64(), v["op"].as_u64()),
            (Some(3), Some(12345))
        );
        assert!(!a.contains(&b'\n'));
        assert_ne!(a, payload("W1", 3, 12345, 1));
        assert_ne!(a, payload("W2", 3, 12345, 2));
    }
}
