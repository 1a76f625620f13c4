//! The files in `deploy/` against the real binaries: the sample settings name every server setting
//! and nothing else, a server started with them serves, and the unit, image and manifest name only
//! settings that exist.

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::ctl::*;
use common::*;

fn deploy(path: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `KEY=value` lines of the sample settings, comments and blank lines skipped.
fn sample_settings() -> Vec<(String, String)> {
    deploy("fencepost.env")
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("KEY=value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

/// The variables a binary's `--help` lists (`[env: NAME=`).
fn env_vars_of(binary: &str) -> BTreeSet<String> {
    let out = command(binary).arg("--help").output().expect("run --help");
    let help = String::from_utf8(out.stdout).expect("utf-8 help");
    help.match_indices("[env: ")
        .map(|(at, tag)| {
            let rest = &help[at + tag.len()..];
            rest[..rest.find('=').expect("[env: NAME=...]")].to_owned()
        })
        .collect()
}

#[test]
fn the_sample_settings_name_every_server_setting_and_nothing_else() {
    let server = env_vars_of("fencepost");
    assert!(server.contains("FENCEPOST_MAX_TTL"), "{server:?}");
    // Settings that are off are shown commented out, as `#FENCEPOST_NAME=example`.
    let off = deploy("fencepost.env")
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .filter(|line| line.starts_with("FENCEPOST_"))
        .map(|line| line.split_once('=').expect("#KEY=value").0.to_owned())
        .collect::<Vec<_>>();
    let sample: BTreeSet<String> = sample_settings()
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| key.starts_with("FENCEPOST_"))
        .chain(off)
        .collect();
    assert_eq!(sample, server);
}

#[test]
fn the_unit_image_and_manifest_name_only_settings_that_exist() {
    let known: BTreeSet<String> = env_vars_of("fencepost")
        .into_iter()
        .chain(env_vars_of("fencepostctl"))
        .collect();
    for file in [
        "systemd/fencepost.service",
        "container/Containerfile",
        "kubernetes/sidecar.yaml",
    ] {
        let text = deploy(file);
        let named: BTreeSet<&str> = text
            .match_indices("FENCEPOST_")
            .map(|(at, _)| {
                let rest = &text[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_uppercase() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            })
            .collect();
        for name in named {
            assert!(
                known.contains(name),
                "{file} names {name}, which nothing reads"
            );
        }
    }
    let unit = deploy("systemd/fencepost.service");
    assert!(unit.contains("EnvironmentFile=/etc/fencepost/fencepost.env"));
    assert!(unit.contains("ExecStart=/usr/local/bin/fencepost\n"));
}

#[test]
fn a_server_started_with_the_sample_settings_serves() {
    // The harness's --listen and --data-dir flags move the socket and the data into a temp dir,
    // and a flag moves metrics to a free port; every other sample setting applies as written.
    let server = Server::start(
        ServerOpts::default()
            .unix()
            .envs(sample_settings())
            .arg("--metrics-listen", "127.0.0.1:0"),
    );
    let endpoint = server.endpoint();
    let health = ctl(endpoint, ["health"], None);
    assert_eq!(ctl_object(&health)["status"], "serving");
    let lease = ctl_acquire(endpoint, "deploy/s.jsonl", &[]);
    let appended = ctl_append(endpoint, &lease, lease.token, b"{\"n\":1}\n");
    assert!(appended.status.success(), "{appended:?}");
    assert_eq!(server.file_bytes("deploy/s.jsonl"), b"{\"n\":1}\n");
    assert!(
        server
            .metrics()
            .contains("fencepost_appended_batches_total 1\n")
    );
}

#[tokio::test]
async fn under_systemd_it_reports_ready_pets_the_watchdog_and_triggers_it_when_writes_stop() {
    use std::os::unix::net::UnixDatagram;
    // systemd's side of the protocol: a datagram socket named by NOTIFY_SOCKET.
    let dir = tempfile::tempdir().expect("temp dir");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
    notify.set_read_timeout(Some(WAIT)).expect("timeout");
    let next = || {
        let mut buf = [0u8; 4096];
        let n = notify.recv(&mut buf).expect("a notification within WAIT");
        String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
    };
    let server = Server::start(
        ServerOpts::default()
            .envs([
                (
                    "NOTIFY_SOCKET".to_owned(),
                    notify_path.display().to_string(),
                ),
                ("WATCHDOG_USEC".to_owned(), "400000".to_owned()),
            ])
            // Every WAL fsync fails: the first append stops the store.
            .failpoints("wal-sync=return(enospc)"),
    );
    assert_eq!(next(), "READY=1");
    assert_eq!(next(), "WATCHDOG=1");
    let mut c = server.grpc().await;
    let lease = common::rpc::acquire(&mut c, "deploy/watchdog.jsonl", 30_000).await;
    let failed = common::rpc::append(&mut c, &lease, &[r#"{"n":1}"#]).await;
    common::rpc::assert_rejected(failed, tonic::Code::Internal, "STORAGE_FAILED");
    let last = loop {
        let message = next();
        if message != "WATCHDOG=1" {
            break message;
        }
    };
    assert!(last.contains("WATCHDOG=trigger"), "{last:?}");
    assert!(
        last.contains("STATUS=the store stopped accepting writes"),
        "{last:?}"
    );
    // The server as a whole is NOT_SERVING too, for probes that ask about no service in particular.
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(server.endpoint().to_owned())
            .expect("endpoint")
            .connect()
            .await
            .expect("connect"),
    );
    let overall = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        overall.status,
        tonic_health::pb::health_check_response::ServingStatus::NotServing as i32
    );
}
