//! `fencepostctl` behaviours that need no server: usage errors, local input validation and an
//! unreachable endpoint, each with its documented exit code and a one-line error.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Runs the built CLI with `args`, feeding `stdin`, against an endpoint where nothing listens.
fn fencepostctl(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fencepostctl"))
        .args(args)
        .env("FENCEPOST_ENDPOINT", "unix:/nonexistent/dir/x.sock")
        .env_remove("FENCEPOST_CLIENT_ID")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fencepostctl");
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait for fencepostctl")
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn an_unknown_subcommand_is_a_usage_error_with_exit_code_2() {
    let output = fencepostctl(&["frobnicate"], b"");
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
}

#[test]
fn release_without_lease_or_force_is_a_usage_error_with_exit_code_2() {
    let output = fencepostctl(&["release", "a/b.jsonl"], b"");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn a_malformed_duration_is_a_usage_error_with_exit_code_2() {
    let output = fencepostctl(&["acquire", "a/b.jsonl", "--ttl", "soonish"], b"");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn append_with_empty_stdin_exits_2_before_contacting_the_server() {
    let output = fencepostctl(
        &["append", "a/b.jsonl", "--lease", "l", "--token", "1"],
        b"",
    );
    assert_eq!(output.status.code(), Some(2));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("fencepostctl: INVALID_ENTRY: "),
        "{lines:?}"
    );
    assert!(lines[0].contains("no entries on stdin"), "{lines:?}");
}

#[test]
fn append_with_only_blank_lines_exits_2() {
    let output = fencepostctl(
        &["append", "a/b.jsonl", "--lease", "l", "--token", "1"],
        b"\n\r\n  \n",
    );
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn an_unreachable_endpoint_exits_1_with_one_stderr_line() {
    let output = fencepostctl(&["describe", "a/b.jsonl"], b"");
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("fencepostctl: UNAVAILABLE: "),
        "{lines:?}"
    );
    assert!(lines[0].contains("/nonexistent/dir/x.sock"), "{lines:?}");
}

#[test]
fn append_to_an_unreachable_endpoint_exits_1() {
    let output = fencepostctl(
        &["append", "a/b.jsonl", "--lease", "l", "--token", "1"],
        b"{\"a\":1}\n",
    );
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stderr_lines(&output).len(), 1);
}

#[test]
fn tls_settings_without_an_https_endpoint_or_an_unreadable_ca_are_bad_input() {
    let this_file = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cli_usage.rs");
    for (args, reason) in [
        (
            vec![
                "--endpoint",
                "http://127.0.0.1:1",
                "--ca-cert",
                this_file,
                "list",
            ],
            "fencepostctl: INVALID_ENDPOINT: ",
        ),
        (
            vec![
                "--endpoint",
                "https://example.invalid:7420",
                "--ca-cert",
                this_file,
                "list",
            ],
            "fencepostctl: INVALID_TLS: the CA certificate holds no PEM certificate",
        ),
        (
            vec![
                "--endpoint",
                "https://example.invalid:7420",
                "--ca-cert",
                "/nonexistent.pem",
                "list",
            ],
            "fencepostctl: INVALID_TLS: cannot read --ca-cert /nonexistent.pem",
        ),
    ] {
        let output = fencepostctl(&args, b"");
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].starts_with(reason), "{lines:?}");
    }
}
