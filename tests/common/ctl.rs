//! Running the real `fencepostctl` and reading its JSON output.
//!
//! Every command line the tests use is built here, so the CLI's flag names live in one place:
//! `fencepostctl --endpoint E acquire RESOURCE [--wait DUR]`,
//! `append RESOURCE --lease ID --token N` (entries on stdin, one per line),
//! `release RESOURCE --lease ID`, `read RESOURCE`, `describe RESOURCE`.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::{KillOnDrop, WAIT, command, wait_output};

/// Exit code of `fencepostctl` for an unreachable server or another failure.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for bad input (resource name, entry, arguments).
pub const EXIT_BAD_INPUT: i32 = 2;
/// Exit code for a stale token or a lost lease.
pub const EXIT_STALE: i32 = 3;
/// Exit code for running out of time waiting for a lease.
pub const EXIT_TIMEOUT: i32 = 4;

fn ctl_command<S: AsRef<OsStr>>(endpoint: &str, args: impl IntoIterator<Item = S>) -> Command {
    let mut command = command("fencepostctl");
    command.arg("--endpoint").arg(endpoint).args(args);
    command
}

/// Runs `fencepostctl --endpoint ENDPOINT ARGS...`, feeding `stdin`, bounded by [`WAIT`] x 3.
pub fn ctl<S: AsRef<OsStr>>(
    endpoint: &str,
    args: impl IntoIterator<Item = S>,
    stdin: Option<&[u8]>,
) -> Output {
    let child = ctl_command(endpoint, args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fencepostctl");
    wait_output(child, stdin.map(<[u8]>::to_vec), WAIT * 3)
}

/// Starts `fencepostctl` in the background (e.g. a waiter to kill later).
pub fn spawn_ctl<S: AsRef<OsStr>>(endpoint: &str, args: impl IntoIterator<Item = S>) -> KillOnDrop {
    let child = ctl_command(endpoint, args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fencepostctl");
    KillOnDrop(child)
}

/// Asserts success and returns the JSON values printed on stdout (a JSON array is flattened;
/// one value per line or pretty-printed values both work).
#[track_caller]
pub fn ctl_json(output: &Output) -> Vec<Value> {
    assert!(
        output.status.success(),
        "fencepostctl failed with {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let mut values = Vec::new();
    for value in serde_json::Deserializer::from_slice(&output.stdout).into_iter::<Value>() {
        match value.expect("fencepostctl prints JSON on stdout") {
            Value::Array(items) => values.extend(items),
            other => values.push(other),
        }
    }
    values
}

/// Asserts success and returns the one JSON object printed on stdout.
#[track_caller]
pub fn ctl_object(output: &Output) -> Value {
    let mut values = ctl_json(output);
    assert_eq!(values.len(), 1, "expected one JSON value: {values:?}");
    values.remove(0)
}

/// Asserts the exit code and that stderr is one line naming `reason`; returns that line.
#[track_caller]
pub fn assert_ctl_error(output: &Output, code: i32, reason: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "exit code; stdout {:?}, stderr {stderr:?}",
        String::from_utf8_lossy(&output.stdout)
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one stderr line expected: {stderr:?}");
    assert!(
        lines[0].contains(reason),
        "stderr should name {reason}: {stderr:?}"
    );
    lines[0].to_owned()
}

/// A lease printed by `fencepostctl acquire`.
#[derive(Clone, Debug)]
pub struct CtlLease {
    pub resource: String,
    pub lease_id: String,
    pub token: u64,
    pub json: Value,
}

/// `acquire RESOURCE EXTRA...`; asserts success.
#[track_caller]
pub fn ctl_acquire(endpoint: &str, resource: &str, extra: &[&str]) -> CtlLease {
    let mut args = vec!["acquire", resource];
    args.extend_from_slice(extra);
    let json = ctl_object(&ctl(endpoint, args, None));
    CtlLease {
        resource: json["resource"].as_str().expect("resource").to_owned(),
        lease_id: json["lease_id"].as_str().expect("lease_id").to_owned(),
        token: json["token"].as_u64().expect("token"),
        json,
    }
}

/// `append RESOURCE --lease ID --token N` with `lines` on stdin.
pub fn ctl_append(endpoint: &str, lease: &CtlLease, token: u64, stdin: &[u8]) -> Output {
    ctl_append_with(endpoint, lease, token, &[], stdin)
}

/// [`ctl_append`] with extra flags, e.g. `--release`.
pub fn ctl_append_with(
    endpoint: &str,
    lease: &CtlLease,
    token: u64,
    extra: &[&str],
    stdin: &[u8],
) -> Output {
    let token = token.to_string();
    let mut args = vec![
        "append",
        &lease.resource,
        "--lease",
        &lease.lease_id,
        "--token",
        &token,
    ];
    args.extend_from_slice(extra);
    ctl(endpoint, args, Some(stdin))
}

/// `release RESOURCE --lease ID`.
pub fn ctl_release(endpoint: &str, lease: &CtlLease) -> Output {
    ctl(
        endpoint,
        ["release", &lease.resource, "--lease", &lease.lease_id],
        None,
    )
}

/// The entry object of a `read` output record, whether printed as JSON or as a JSON string.
pub fn entry_of(record: &Value) -> Value {
    match &record["entry"] {
        Value::String(text) => serde_json::from_str(text).expect("entry string holds JSON"),
        other => other.clone(),
    }
}
