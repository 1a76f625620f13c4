//! The yield pattern against the real server: a runner releases its lease during slow work while
//! other processes (`fencepostctl append-once`, `acquire` + `append`) write, and gets back exactly
//! their entries with their owners; plus the `append-once` command itself.

mod common;

use std::time::Duration;

use common::ctl::{
    EXIT_TIMEOUT, assert_ctl_error, ctl, ctl_acquire, ctl_append, ctl_json, ctl_object, ctl_release,
};
use common::{Server, ServerOpts};
use fencepost_client::{Client, OwnerKind};

const R: &str = "agents/main/sessions/sdk-yield.jsonl";

async fn runner(endpoint: &str) -> Client {
    Client::builder(endpoint)
        .name("runner@test")
        .kind(OwnerKind::Runner)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn yield_for_returns_exactly_what_other_processes_appended_with_their_owners() {
    let server = Server::start(ServerOpts::default());
    let client = runner(server.endpoint()).await;
    let lease = client
        .lease(R)
        .ttl(Duration::from_secs(10))
        .wait(Duration::from_secs(15))
        .acquire()
        .await
        .unwrap();
    lease
        .append([r#"{"role":"user","text":"go"}"#])
        .await
        .unwrap();
    let first_token = lease.token();

    let endpoint = server.endpoint().to_owned();
    let (co_tenants, changes, lease) = lease
        .yield_for(async move {
            // Other processes, while the runner "waits for the model".
            tokio::task::spawn_blocking(move || {
                let heartbeat = ctl_object(&ctl(
                    &endpoint,
                    [
                        "append-once",
                        R,
                        "--wait",
                        "10s",
                        "--kind",
                        "heartbeat",
                        "--owner",
                        "heartbeat@test",
                    ],
                    Some(b"{\"type\":\"heartbeat\"}\n".as_slice()),
                ));
                let cron = ctl_acquire(
                    &endpoint,
                    R,
                    &["--wait", "10s", "--kind", "cron", "--owner", "cron@test"],
                );
                let lines = b"{\"type\":\"cron\",\"n\":1}\n{\"type\":\"cron\",\"n\":2}\n";
                ctl_json(&ctl_append(&endpoint, &cron, cron.token, lines));
                ctl_json(&ctl_release(&endpoint, &cron));
                (heartbeat, cron)
            })
            .await
            .expect("co-tenant processes")
        })
        .await
        .unwrap();
    let (heartbeat, cron) = co_tenants;

    let seen: Vec<(u64, u64, &str, OwnerKind, &[u8])> = changes
        .iter()
        .map(|c| {
            (
                c.seq,
                c.token,
                c.owner.name.as_str(),
                c.kind(),
                c.line.as_slice(),
            )
        })
        .collect();
    let heartbeat_token = heartbeat["token"]
        .as_u64()
        .expect("append-once prints a token");
    assert_eq!(
        seen,
        vec![
            (
                2,
                heartbeat_token,
                "heartbeat@test",
                OwnerKind::Heartbeat,
                br#"{"type":"heartbeat"}"#.as_slice()
            ),
            (
                3,
                cron.token,
                "cron@test",
                OwnerKind::Cron,
                br#"{"type":"cron","n":1}"#.as_slice()
            ),
            (
                4,
                cron.token,
                "cron@test",
                OwnerKind::Cron,
                br#"{"type":"cron","n":2}"#.as_slice()
            ),
        ]
    );
    let writers: Vec<&str> = changes.writers().iter().map(|w| w.name.as_str()).collect();
    assert_eq!(writers, ["heartbeat@test", "cron@test"]);
    assert_eq!(changes.since().next_seq, 2);
    assert_eq!(changes.until().next_seq, 5);

    // The new grant follows the co-tenants' and writes after their entries.
    assert!(lease.token() > cron.token && cron.token > first_token);
    assert_eq!(lease.head().next_seq, 5);
    let done = lease
        .append([r#"{"role":"assistant","text":"done"}"#])
        .await
        .unwrap();
    assert_eq!(done.first_seq, 5);
    lease.release().await.unwrap();
}

#[tokio::test]
async fn a_yield_nobody_wrote_during_returns_no_changes_and_a_newer_token() {
    let server = Server::start(ServerOpts::default());
    let client = runner(server.endpoint()).await;
    let lease = client.lease(R).acquire().await.unwrap();
    lease.append([r#"{"n":1}"#]).await.unwrap();
    let before = lease.token();

    let (answer, changes, lease) = lease.yield_for(async { 42 }).await.unwrap();

    assert_eq!(answer, 42);
    assert!(changes.is_empty());
    assert!(changes.writers().is_empty());
    assert!(lease.token() > before);
    assert_eq!(lease.head().next_seq, 2);
}

#[tokio::test]
async fn suspend_and_resume_keep_the_slow_work_apart_from_the_reacquire() {
    let server = Server::start(ServerOpts::default());
    let client = runner(server.endpoint()).await;
    let heartbeat = client
        .clone()
        .with_kind(OwnerKind::Heartbeat)
        .with_name("hb");
    let lease = client.lease(R).acquire().await.unwrap();

    let suspended = lease.suspend().await.unwrap();
    assert_eq!(suspended.head().next_seq, 1);
    assert!(client.describe(R).await.unwrap().holder.is_none());
    heartbeat.append_once(R, [r#"{"beat":1}"#]).await.unwrap();
    let (changes, lease) = suspended
        .wait(Duration::from_secs(5))
        .resume()
        .await
        .unwrap();

    assert_eq!(changes.len(), 1);
    assert_eq!(changes.entries()[0].owner.name, "hb");
    assert_eq!(changes.entries()[0].json().unwrap()["beat"], 1);
    lease.release().await.unwrap();
}

#[tokio::test]
async fn append_once_prints_where_the_batch_landed_and_its_token() {
    let server = Server::start(ServerOpts::default());
    let printed = ctl_object(&ctl(
        server.endpoint(),
        ["append-once", R],
        Some(b"{\"a\":1}\n{\"b\":2}\n".as_slice()),
    ));
    assert_eq!(printed["first_seq"], 1);
    assert_eq!(printed["last_seq"], 2);
    assert_eq!(printed["epoch"], 1);
    assert!(printed["token"].as_u64().is_some_and(|token| token >= 1));
    assert_eq!(
        server.file_bytes(R),
        common::jsonl([r#"{"a":1}"#, r#"{"b":2}"#])
    );

    // While someone holds the resource, a zero wait runs out at once.
    let client = runner(server.endpoint()).await;
    let lease = client.lease(R).acquire().await.unwrap();
    let busy = ctl(
        server.endpoint(),
        ["append-once", R],
        Some(b"{\"c\":3}\n".as_slice()),
    );
    assert_ctl_error(&busy, EXIT_TIMEOUT, "WAIT_TIMEOUT");
    lease.release().await.unwrap();
}
