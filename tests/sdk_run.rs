//! `fencepostctl run` against the real server: the command gets the lease in its environment,
//! `run` exits with its code, and a lost lease (forced release, server restart) stops the
//! command at once, escalating to SIGKILL, with exit code 3.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::ctl::{EXIT_STALE, EXIT_TIMEOUT, ctl, ctl_json};
use common::{Server, ServerOpts, WAIT, bin, command};
use fencepost_client::Client;

const R: &str = "agents/main/sessions/sdk-run.jsonl";

/// A running `fencepostctl run`: its stdout lines as they come, its stderr once it closes.
struct Run {
    child: Option<Child>,
    lines: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
}

impl Run {
    fn start(endpoint: &str, options: &[&str], script: &str) -> Self {
        let mut child = command("fencepostctl")
            .arg("--endpoint")
            .arg(endpoint)
            .arg("run")
            .arg(R)
            .args(options)
            .args(["--", "sh", "-c", script])
            .env("CTL", bin("fencepostctl"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fencepostctl run");
        let (line_tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = line_tx.send(line);
            }
        });
        let (stderr_tx, stderr) = mpsc::channel();
        let mut pipe = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = stderr_tx.send(text);
        });
        Self {
            child: Some(child),
            lines,
            stderr,
        }
    }

    /// The command's next stdout line (its readiness signal).
    fn line(&self) -> String {
        self.lines
            .recv_timeout(WAIT)
            .expect("a line from the command in time")
    }

    /// Waits (bounded by [`WAIT`]) for `run` to exit; returns its status and stderr.
    fn exit(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("not waited yet");
        let pid = child.id();
        let (tx, exited) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        let Ok(status) = exited.recv_timeout(WAIT) else {
            common::signal(pid, "KILL");
            panic!("run did not exit within {WAIT:?}");
        };
        let stderr = self
            .stderr
            .recv_timeout(WAIT)
            .expect("stderr closed once run and its command are gone");
        (status.expect("wait for run"), stderr)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn alive(pid: &str) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn run_gives_the_command_its_lease_and_exits_with_its_code() {
    let server = Server::start(ServerOpts::default());
    let script = r#"echo "$FENCEPOST_RESOURCE $FENCEPOST_LEASE_ID $FENCEPOST_TOKEN $FENCEPOST_ENDPOINT"
printf '{"by":"child"}\n' | "$CTL" append "$FENCEPOST_RESOURCE" --lease "$FENCEPOST_LEASE_ID" --token "$FENCEPOST_TOKEN" >/dev/null || exit 99
exit 7"#;
    let run = Run::start(server.endpoint(), &["--ttl", "5s"], script);
    let env = run.line();
    let (status, stderr) = run.exit();

    assert_eq!(status.code(), Some(7), "stderr: {stderr}");
    let fields: Vec<&str> = env.split(' ').collect();
    assert_eq!(fields.len(), 4, "{env}");
    assert_eq!(fields[0], R);
    assert!(!fields[1].is_empty());
    assert!(fields[2].parse::<u64>().is_ok_and(|token| token >= 1));
    assert_eq!(fields[3], server.endpoint());
    assert_eq!(server.file_bytes(R), common::jsonl([r#"{"by":"child"}"#]));
    let client = Client::connect(server.endpoint()).await.unwrap();
    assert!(
        client.describe(R).await.unwrap().holder.is_none(),
        "released after the command"
    );
}

#[tokio::test]
async fn run_exits_128_plus_the_signal_that_killed_its_command() {
    let server = Server::start(ServerOpts::default());
    let run = Run::start(server.endpoint(), &[], "kill -KILL $$");
    let (status, stderr) = run.exit();
    assert_eq!(status.code(), Some(128 + 9), "stderr: {stderr}");
}

#[tokio::test]
async fn run_stops_its_command_and_exits_3_after_a_forced_release() {
    let server = Server::start(ServerOpts::default());
    let run = Run::start(
        server.endpoint(),
        &["--ttl", "30s"],
        "echo $$; exec sleep 600",
    );
    let pid = run.line();
    assert!(alive(&pid));

    let forced_at = Instant::now();
    ctl_json(&ctl(server.endpoint(), ["release", R, "--force"], None));
    let (status, stderr) = run.exit();
    eprintln!(
        "MEASURED run: forced release -> command stopped, run exited: {:?}",
        forced_at.elapsed()
    );

    assert_eq!(status.code(), Some(EXIT_STALE), "stderr: {stderr}");
    assert!(stderr.contains("LEASE_LOST"), "{stderr}");
    assert!(!alive(&pid), "the command {pid} is gone");
}

#[tokio::test]
async fn run_kills_a_command_that_ignores_sigterm_after_the_grace_period() {
    let server = Server::start(ServerOpts::default());
    // TTL 2s: the grace period is 1s.
    let run = Run::start(
        server.endpoint(),
        &["--ttl", "2s"],
        "trap '' TERM; echo $$; exec sleep 600",
    );
    let pid = run.line();

    let forced_at = Instant::now();
    ctl_json(&ctl(server.endpoint(), ["release", R, "--force"], None));
    let (status, stderr) = run.exit();
    let took = forced_at.elapsed();
    eprintln!("MEASURED run: forced release -> SIGTERM ignored -> SIGKILL, exited: {took:?}");

    assert_eq!(status.code(), Some(EXIT_STALE), "stderr: {stderr}");
    assert!(!alive(&pid), "the command {pid} is gone");
    assert!(
        took >= Duration::from_millis(900),
        "SIGKILL came before the grace period: {took:?}"
    );
}

#[tokio::test]
async fn run_stops_its_command_once_the_ttl_elapses_after_a_server_restart() {
    let mut server = Server::start(ServerOpts::default());
    let ttl = Duration::from_secs(2);
    let run = Run::start(
        server.endpoint(),
        &["--ttl", "2s"],
        "echo $$; exec sleep 600",
    );
    let pid = run.line();

    let restarted_at = Instant::now();
    // The restarted server listens elsewhere and has forgotten every lease; `run` can no longer
    // renew, so it must give the lease up by its own deadline.
    server.restart();
    let (status, stderr) = run.exit();
    let took = restarted_at.elapsed();
    eprintln!(
        "MEASURED run: server kill -9 + restart -> run exited 3 after {took:?} (TTL {ttl:?})"
    );

    assert_eq!(status.code(), Some(EXIT_STALE), "stderr: {stderr}");
    assert!(stderr.contains("LEASE_LOST"), "{stderr}");
    assert!(!alive(&pid), "the command {pid} is gone");
    assert!(took < ttl + Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn run_exits_4_without_starting_the_command_when_the_wait_runs_out() {
    let server = Server::start(ServerOpts::default());
    let holder = Client::connect(server.endpoint()).await.unwrap();
    let lease = holder.lease(R).acquire().await.unwrap();

    let run = Run::start(server.endpoint(), &["--wait", "200ms"], "echo started");
    let (status, stderr) = run.exit();

    assert_eq!(status.code(), Some(EXIT_TIMEOUT), "stderr: {stderr}");
    assert!(stderr.contains("WAIT_TIMEOUT"), "{stderr}");
    lease.release().await.unwrap();
}
