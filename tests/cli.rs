//! `fencepostctl` against a real server: JSON output, and one stderr line naming the reason with
//! a distinct exit code for bad input (2), a stale token or lost lease (3), a wait that ran out
//! (4) and anything else, such as an unreachable server (1).

mod common;

use common::ctl::*;
use common::*;
use serde_json::{Value, json};

#[test]
fn acquire_append_read_describe_and_release_print_json() {
    const R: &str = "cli/round-trip.jsonl";
    let input = b"{\"n\":1}\n{\"n\":2,\"s\":\"\xc3\xa9\"}\n";
    let server = Server::start(ServerOpts::default());
    let endpoint = server.endpoint();

    let lease = ctl_acquire(endpoint, R, &[]);
    assert_eq!(lease.resource, R);
    assert!(!lease.lease_id.is_empty() && lease.token >= 1);
    assert!(
        lease.json["ttl_ms"].as_u64().is_some_and(|ttl| ttl > 0),
        "{}",
        lease.json
    );
    assert_eq!(lease.json["epoch"].as_u64(), Some(0));

    let appended = ctl_object(&ctl_append(endpoint, &lease, lease.token, input));
    let seqs = (
        appended["first_seq"].as_u64(),
        appended["last_seq"].as_u64(),
    );
    assert_eq!(seqs, (Some(1), Some(2)));
    assert_eq!(appended["epoch"].as_u64(), Some(1));
    assert_eq!(
        server.file_bytes(R),
        input,
        "stdin lines stored byte for byte"
    );

    let records = ctl_json(&ctl(endpoint, ["read", R], None));
    assert_eq!(records.len(), 2, "{records:?}");
    let expected = [json!({"n": 1}), json!({"n": 2, "s": "é"})];
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record["seq"].as_u64(), Some(i as u64 + 1), "{record}");
        assert_eq!(record["epoch"].as_u64(), Some(1), "{record}");
        assert_eq!(record["token"].as_u64(), Some(lease.token), "{record}");
        assert!(!record["owner"].is_null(), "{record}");
        assert_eq!(entry_of(record), expected[i]);
    }

    let held = ctl_object(&ctl(endpoint, ["describe", R], None));
    assert_eq!(
        held["holder"]["lease_id"].as_str(),
        Some(lease.lease_id.as_str()),
        "{held}"
    );
    assert!(ctl_release(endpoint, &lease).status.success());
    let free = ctl_object(&ctl(endpoint, ["describe", R], None));
    assert_eq!(free["holder"], Value::Null, "{free}");
}

#[test]
fn bad_input_exits_2_naming_the_reason_and_changes_nothing() {
    const R: &str = "cli/bad-input.jsonl";
    let server = Server::start(ServerOpts::default());
    let endpoint = server.endpoint();

    let bad_name = ctl(endpoint, ["acquire", "../escape.jsonl"], None);
    assert_ctl_error(&bad_name, EXIT_BAD_INPUT, "INVALID_RESOURCE");

    let lease = ctl_acquire(endpoint, R, &[]);
    let bad_line = ctl_append(endpoint, &lease, lease.token, b"{\"n\":1}\nnot json\n");
    assert_ctl_error(&bad_line, EXIT_BAD_INPUT, "INVALID_ENTRY");
    assert!(
        server.file_bytes(R).is_empty(),
        "the whole batch was refused"
    );
    // Five valid entries of almost 1 MiB each: over the batch limit, and over what the server's
    // transport takes at all, which refuses it before the server sees it.
    let line = format!("{{\"pad\":\"{}\"}}\n", "x".repeat(1_000_000));
    let huge = ctl_append(endpoint, &lease, lease.token, line.repeat(5).as_bytes());
    assert_ctl_error(&huge, EXIT_BAD_INPUT, "BATCH_TOO_LARGE");
    assert!(server.file_bytes(R).is_empty());
    let state = ctl_object(&ctl(endpoint, ["describe", R], None));
    assert_eq!(
        state["holder"]["lease_id"].as_str(),
        Some(lease.lease_id.as_str())
    );
}

#[test]
fn a_stale_token_or_a_released_lease_exits_3_naming_the_reason() {
    const R: &str = "cli/stale.jsonl";
    let server = Server::start(ServerOpts::default());
    let endpoint = server.endpoint();
    let old = ctl_acquire(endpoint, R, &[]);
    assert!(ctl_release(endpoint, &old).status.success());
    let lease = ctl_acquire(endpoint, R, &[]);
    assert!(lease.token > old.token);

    let stale = ctl_append(endpoint, &lease, old.token, b"{\"n\":1}\n");
    assert_ctl_error(&stale, EXIT_STALE, "STALE_TOKEN");
    let released = ctl_append(endpoint, &old, old.token, b"{\"n\":2}\n");
    assert_ctl_error(&released, EXIT_STALE, "LEASE_RELEASED");
    assert!(server.file_bytes(R).is_empty());
}

#[test]
fn leases_past_the_server_limits_are_refused_naming_the_limit_and_others_keep_theirs() {
    let server = Server::start(
        ServerOpts::default()
            .arg("--max-leases", "3")
            .arg("--max-leases-per-client", "2"),
    );
    let endpoint = server.endpoint();
    let as_client =
        |id: &'static str| move |r: &str| ["acquire", r, "--client-id", id].map(String::from);
    let (leaky, other) = (as_client("leaky"), as_client("other"));
    let first = ctl_object(&ctl(endpoint, leaky("limits/a1.jsonl"), None));
    ctl_object(&ctl(endpoint, leaky("limits/a2.jsonl"), None));
    let refused = ctl(endpoint, leaky("limits/a3.jsonl"), None);
    let line = assert_ctl_error(&refused, EXIT_FAILURE, "TOO_MANY_LEASES");
    assert!(line.contains("--max-leases-per-client (2)"), "{line}");
    // Another client still gets a lease, up to the server-wide limit.
    let held = ctl_acquire(endpoint, "limits/b1.jsonl", &[]);
    let refused = ctl(endpoint, other("limits/b2.jsonl"), None);
    let line = assert_ctl_error(&refused, EXIT_FAILURE, "TOO_MANY_LEASES");
    assert!(
        line.contains("the server") && line.contains("--max-leases (3)"),
        "{line}"
    );
    // Refusals changed nothing: the held leases still append, and a release makes room.
    let appended = ctl_append(endpoint, &held, held.token, b"{\"n\":1}\n");
    assert!(appended.status.success(), "{appended:?}");
    let released = ctl(
        endpoint,
        [
            "release",
            "limits/a1.jsonl",
            "--lease",
            first["lease_id"].as_str().unwrap(),
        ],
        None,
    );
    assert!(released.status.success(), "{released:?}");
    ctl_object(&ctl(endpoint, leaky("limits/a3.jsonl"), None));
}

#[test]
fn acquire_that_runs_out_of_wait_exits_4_naming_the_reason() {
    const R: &str = "cli/busy.jsonl";
    let server = Server::start(ServerOpts::default());
    let endpoint = server.endpoint();
    let holder = ctl_acquire(endpoint, R, &[]);

    let waited = ctl(endpoint, ["acquire", R, "--wait", "200ms"], None);
    assert_ctl_error(&waited, EXIT_TIMEOUT, "WAIT_TIMEOUT");
    let state = ctl_object(&ctl(endpoint, ["describe", R], None));
    assert_eq!(
        state["holder"]["lease_id"].as_str(),
        Some(holder.lease_id.as_str())
    );
}

#[test]
fn an_unreachable_server_exits_1_with_one_error_line() {
    // A port that was free a moment ago: nothing listens on it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let out = ctl(&endpoint, ["describe", "cli/nowhere.jsonl"], None);
    assert_ctl_error(&out, EXIT_FAILURE, "");
    assert!(out.stdout.is_empty(), "nothing on stdout");
    // The health probe says so too, within its timeout.
    let out = ctl(&endpoint, ["health", "--timeout", "2s"], None);
    assert_ctl_error(&out, EXIT_FAILURE, "UNAVAILABLE");
    assert!(out.stdout.is_empty(), "nothing on stdout");
}

#[test]
fn append_with_release_appends_and_frees_the_resource_in_one_call() {
    const R: &str = "cli/append-release.jsonl";
    let server = Server::start(ServerOpts::default());
    let endpoint = server.endpoint();
    let lease = ctl_acquire(endpoint, R, &[]);
    let released = ctl_append_with(
        endpoint,
        &lease,
        lease.token,
        &["--release"],
        b"{\"n\":1}\n{\"n\":2}\n",
    );
    let appended = ctl_object(&released);
    assert_eq!(
        (
            appended["first_seq"].as_u64(),
            appended["last_seq"].as_u64()
        ),
        (Some(1), Some(2))
    );
    let late = ctl_append(endpoint, &lease, lease.token, b"{\"n\":3}\n");
    assert_ctl_error(&late, EXIT_STALE, "LEASE_RELEASED");
    // Free at once: a new lease without waiting.
    let next = ctl_acquire(endpoint, R, &[]);
    assert!(next.token > lease.token);
    assert_eq!(server.file_bytes(R), b"{\"n\":1}\n{\"n\":2}\n");
}

#[test]
fn an_append_rerun_with_the_same_request_id_appends_once() {
    const R: &str = "cli/rerun.jsonl";
    let server = Server::start(ServerOpts::default());
    let endpoint = server.endpoint();
    let lease = ctl_acquire(endpoint, R, &[]);
    let run = || {
        ctl_object(&ctl_append_with(
            endpoint,
            &lease,
            lease.token,
            &["--request-id", "turn-7"],
            b"{\"n\":1}\n",
        ))
    };
    let first = run();
    // A script that did not see the first answer runs the command again.
    let again = run();
    assert_eq!(first["first_seq"], again["first_seq"]);
    assert_eq!(first["head"], again["head"]);
    assert_eq!(server.file_bytes(R), b"{\"n\":1}\n", "appended once");
}
