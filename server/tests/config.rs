//! The `fencepost` binary refuses bad configuration before touching anything.
//! (Being an integration test of this package, this also makes `cargo test --workspace` build the
//! binary that the end-to-end tests in the root package start.)

use std::process::Command;

fn fencepost(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fencepost"))
        .args(args)
        .current_dir(dir)
        .env_remove("FENCEPOST_LISTEN")
        .env_remove("FENCEPOST_DATA_DIR")
        .output()
        .expect("run fencepost")
}

#[test]
fn inconsistent_limits_are_refused_with_a_message_and_no_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    for (args, needle) in [
        (
            vec!["--default-ttl", "1h", "--max-ttl", "1m"],
            "--default-ttl",
        ),
        (
            vec!["--max-entry-bytes", "10", "--max-batch-bytes", "5"],
            "--max-entry-bytes",
        ),
        (vec!["--listen", "unix:"], "socket path"),
        (
            vec![
                "--default-ttl",
                "300000000000y",
                "--max-ttl",
                "300000000000y",
            ],
            "--max-ttl is",
        ),
        (
            vec!["--max-wait", "2days"],
            "--max-wait is 2days; the limit is 1day",
        ),
        (vec!["--scan-interval", "100years"], "--scan-interval is"),
        (vec!["--drain-timeout", "25h"], "--drain-timeout is"),
        (vec!["--ping-timeout", "10ms"], "at least 100ms"),
        (
            vec!["--max-leases-per-client", "0"],
            "--max-leases-per-client must",
        ),
    ] {
        let out = fencepost(&args, dir.path());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed a readiness line");
    }
    assert!(!dir.path().join("fencepost-data").exists());
}

#[test]
fn an_unparsable_duration_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = fencepost(&["--default-ttl", "soon"], dir.path());
    assert_eq!(out.status.code(), Some(2));
}
