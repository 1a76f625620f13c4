//! `run`: hold a lease while a command runs, keeping it alive, and stop the command at once if
//! the lease is lost.
//!
//! The command runs in its own process group (like `timeout(1)`), so that a lost lease stops
//! everything it started: SIGTERM to the group at once, SIGKILL to the group after a grace
//! period shorter than the TTL. SIGINT and SIGTERM sent to `run` are forwarded to the group.

use std::ffi::OsString;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use clap::Args;
use fencepost_client::Lease;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::exit::{FAILURE, Failure};
use crate::signals::Interrupt;
use crate::{Connection, KindArg, parse_duration};

/// The longest grace period between SIGTERM and SIGKILL after a loss.
const MAX_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for the command to be reaped after SIGKILL.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The resource to hold while the command runs.
    resource: String,
    /// Lease TTL, e.g. 10s (default: the server's default TTL).
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    ttl: Option<Duration>,
    /// How long to wait while the resource is held (0 = try once).
    #[arg(long, value_name = "DUR", value_parser = parse_duration, default_value = "0s")]
    wait: Duration,
    /// Owner name recorded with the lease (default: fencepostctl@<host> pid <pid>).
    #[arg(long, value_name = "NAME")]
    owner: Option<String>,
    /// Owner kind recorded with the lease.
    #[arg(long, value_enum, default_value_t = KindArg::Runner)]
    kind: KindArg,
    /// The command and its arguments, after `--`.
    #[arg(required = true, last = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Exits with the command's code (128 + signal if a signal killed it), 3 if the lease was lost,
/// 4 if the wait ran out, 2 for bad input, 1 otherwise.
pub async fn run(conn: &Connection, args: RunArgs) -> ExitCode {
    match hold(conn, args).await {
        Ok(code) => ExitCode::from(code),
        Err(failure) => failure.report(),
    }
}

async fn hold(conn: &Connection, args: RunArgs) -> Result<u8, Failure> {
    let mut interrupt = Interrupt::install()?;
    let client = conn.client(args.owner, args.kind.into()).await?;
    let mut builder = client.lease(&args.resource).wait(args.wait);
    if let Some(ttl) = args.ttl {
        builder = builder.ttl(ttl);
    }
    // Still waiting in the queue: an interrupt ends the wait, as it would without `run`.
    let lease = tokio::select! {
        lease = builder.acquire() => lease?,
        signal = interrupt.recv_which() => return Ok(signal_exit_code(signal as i32)),
    };
    let mut child = match spawn(conn, &lease, &args.command) {
        Ok(child) => child,
        Err(failure) => {
            release(lease).await;
            return Err(failure);
        }
    };
    // The child is its own process group leader: its pid is the group id.
    let group = child
        .id()
        .and_then(|pid| i32::try_from(pid).ok())
        .map(Pid::from_raw);
    let lost = lease.lost();
    tokio::pin!(lost);
    loop {
        tokio::select! {
            biased;
            status = child.wait() => {
                release(lease).await;
                let status = status.map_err(|err| {
                    Failure::other("WAIT", &format!("cannot wait for the command: {err}"))
                })?;
                return Ok(exit_code(status));
            }
            reason = &mut lost => {
                let grace = (lease.ttl() / 2).min(MAX_GRACE);
                stop(&mut child, group, grace).await;
                return Err(Failure::fenced(
                    "LEASE_LOST",
                    &format!(
                        "lease {} on {} was lost ({reason}); the command was stopped",
                        lease.lease_id(),
                        lease.resource()
                    ),
                ));
            }
            signal = interrupt.recv_which() => {
                if let Some(group) = group {
                    send(group, signal);
                }
            }
        }
    }
}

/// Starts the command in its own process group with the lease in its environment.
fn spawn(conn: &Connection, lease: &Lease, command: &[OsString]) -> Result<Child, Failure> {
    let (program, rest) = command
        .split_first()
        .ok_or_else(|| Failure::bad_input("INVALID_ARGUMENT", "no command given after --"))?;
    let mut child = Command::new(program);
    // The TLS settings this run was given, so that a fencepostctl in CMD reaches the server too.
    for (var, path) in conn.tls_env() {
        child.env(var, path);
    }
    child
        .args(rest)
        .env("FENCEPOST_ENDPOINT", &conn.endpoint)
        .env("FENCEPOST_RESOURCE", lease.resource())
        .env("FENCEPOST_LEASE_ID", lease.lease_id())
        .env("FENCEPOST_TOKEN", lease.token().to_string())
        .process_group(0)
        .spawn()
        .map_err(|err| {
            Failure::other(
                "SPAWN",
                &format!("cannot start {}: {err}", program.to_string_lossy()),
            )
        })
}

/// SIGTERM to the group, up to `grace` for the command to exit, then SIGKILL to the group (which
/// also ends anything the command left behind) and reaps the command.
async fn stop(child: &mut Child, group: Option<Pid>, grace: Duration) {
    let Some(group) = group else {
        return;
    };
    send(group, Signal::SIGTERM);
    let exited = tokio::time::timeout(grace, child.wait()).await.is_ok();
    send(group, Signal::SIGKILL);
    if !exited
        && tokio::time::timeout(REAP_TIMEOUT, child.wait())
            .await
            .is_err()
    {
        eprintln!("fencepostctl: the command did not exit {REAP_TIMEOUT:?} after SIGKILL");
    }
}

fn send(group: Pid, signal: Signal) {
    // ESRCH: the whole group is already gone, which is what was wanted.
    if let Err(err) = killpg(group, signal)
        && err != nix::errno::Errno::ESRCH
    {
        eprintln!("fencepostctl: cannot send {signal} to the command: {err}");
    }
}

/// Releases after the command ended; a failure only warns (the lease expires by itself).
async fn release(lease: Lease) {
    if let Err(err) = lease.release().await {
        eprintln!("fencepostctl: warning: releasing the lease failed ({err}); it will expire");
    }
}

/// The command's exit code, or 128 + the signal that killed it.
fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code & 0xff).unwrap_or(FAILURE),
        (None, Some(signal)) => signal_exit_code(signal),
        (None, None) => FAILURE,
    }
}

/// 128 + the signal number, as shells report a death by signal.
fn signal_exit_code(signal: i32) -> u8 {
    u8::try_from(128 + signal).unwrap_or(FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_death_exits_128_plus_the_signal() {
        assert_eq!(exit_code(ExitStatus::from_raw(7 << 8)), 7);
        assert_eq!(exit_code(ExitStatus::from_raw(15)), 143);
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
    }
}
