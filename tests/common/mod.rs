//! The one end-to-end harness: starts the real `fencepost` binary on an ephemeral port or a Unix
//! socket in a temp dir, connects raw gRPC clients, runs the real `fencepostctl`, and kills every
//! process it started on drop.
// Each test file uses a different subset of the harness.
#![allow(dead_code)]

pub mod ctl;
pub mod history;
pub mod rpc;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use fencepost::v1::fencepost_client::FencepostClient;
use tonic::transport::{Channel, Endpoint, Uri};

/// A raw gRPC client of the wire API.
pub type Client = FencepostClient<Channel>;

/// Generous bound on anything a test waits for (readiness, a grant, an event, a child process).
/// It only bounds a wait on a real signal; nothing ever sleeps for it.
pub const WAIT: Duration = Duration::from_secs(20);

/// Path of a workspace binary, built next to the test executable (`target/<profile>/<name>`).
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo test --workspace`, which builds the binaries",
        path.display()
    );
    path
}

/// A command for a workspace binary, without any `FENCEPOST_*` variable of the caller's
/// environment (they are flag fallbacks, and a stray one would change what is under test).
pub fn command(name: &str) -> Command {
    let mut command = Command::new(bin(name));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FENCEPOST_") {
            command.env_remove(key);
        }
    }
    command.env_remove("FAILPOINTS");
    command
}

/// How to start a server.
#[derive(Clone, Debug, Default)]
pub struct ServerOpts {
    unix: bool,
    data_dir: Option<PathBuf>,
    args: Vec<String>,
    /// `FAILPOINTS` for the next start only (the test build of the server honours it).
    failpoints: Option<String>,
    /// Environment variables (the harness's `--listen` and `--data-dir` flags win over theirs).
    env: Vec<(String, String)>,
}

impl ServerOpts {
    /// Listen on a Unix socket in the server's temp dir instead of `127.0.0.1:0`.
    pub fn unix(mut self) -> Self {
        self.unix = true;
        self
    }

    /// Use this data dir instead of a fresh one.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Start with these failpoints armed (e.g. `wal-synced=3*off->return`); a restart clears them.
    pub fn failpoints(mut self, spec: &str) -> Self {
        self.failpoints = Some(spec.to_owned());
        self
    }

    /// Environment variables for the server, e.g. `FENCEPOST_*` settings.
    pub fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// An extra flag with its value, e.g. `.arg("--default-ttl", "2s")`.
    pub fn arg(mut self, flag: &str, value: &str) -> Self {
        self.args.extend([flag.to_owned(), value.to_owned()]);
        self
    }
}

/// A running `fencepost` process; killed (SIGKILL) when dropped.
pub struct Server {
    child: Option<Child>,
    endpoint: String,
    /// The metrics endpoint's `host:port`, when started with `--metrics-listen`.
    metrics: Option<String>,
    data_dir: PathBuf,
    opts: ServerOpts,
    starts: u32,
    // Dropped last: holds the data dir (unless given) and the socket.
    tmp: tempfile::TempDir,
}

impl Server {
    /// Starts the server and waits for its readiness line on stdout.
    pub fn start(opts: ServerOpts) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("fp-e2e-")
            .tempdir()
            .expect("create temp dir");
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| tmp.path().join("data"));
        let mut server = Server {
            child: None,
            endpoint: String::new(),
            metrics: None,
            data_dir,
            opts,
            starts: 0,
            tmp,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let listen = if self.opts.unix {
            let sock = self.tmp.path().join(format!("fp{}.sock", self.starts));
            format!("unix:{}", sock.display())
        } else {
            "127.0.0.1:0".to_owned()
        };
        // Run inside the temp dir: a path resolved against the working directory by mistake
        // lands where the tests look, not in the source tree.
        let mut child = command("fencepost")
            .current_dir(self.tmp.path())
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.opts.args)
            .envs(self.opts.env.iter().map(|(k, v)| (k, v)))
            .envs(self.opts.failpoints.take().map(|f| ("FAILPOINTS", f)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fencepost");
        let stderr = forward_lines(child.stderr.take().expect("stderr"), "fencepost");
        let lines = stdout_lines(child.stdout.take().expect("stdout"));
        match wait_for_listening(&lines) {
            Ok((addr, metrics)) => {
                self.metrics = metrics;
                self.endpoint = if addr.starts_with("unix:") {
                    addr
                } else {
                    format!("http://{addr}")
                };
            }
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "fencepost did not become ready ({why}); stderr:\n{}",
                    stderr.lock().expect("stderr lock").join("\n")
                );
            }
        }
        self.child = Some(child);
        if self.opts.unix {
            assert_eq!(self.endpoint, listen, "the readiness line names the socket");
        }
    }

    /// The text `GET /metrics` returns (the server must run with `--metrics-listen`).
    pub fn metrics(&self) -> String {
        use std::io::Write;
        let addr = self
            .metrics
            .as_deref()
            .expect("started with --metrics-listen");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect to /metrics");
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("send the request");
        let mut reply = String::new();
        stream.read_to_string(&mut reply).expect("read the reply");
        let (head, body) = reply.split_once("\r\n\r\n").expect("an HTTP reply");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("application/openmetrics-text"), "{head}");
        body.to_owned()
    }

    /// `http://127.0.0.1:PORT` or `unix:/path/to.sock`, as `fencepostctl --endpoint` takes it.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Path of a resource's session file.
    pub fn file(&self, resource: &str) -> PathBuf {
        self.data_dir.join(resource)
    }

    /// Bytes of a resource's session file; empty if it does not exist.
    pub fn file_bytes(&self, resource: &str) -> Vec<u8> {
        std::fs::read(self.file(resource)).unwrap_or_default()
    }

    /// WAL commits the test build of the server has journaled (a line each in
    /// `.fencepost/synced.log`).
    pub fn wal_commits(&self) -> usize {
        let journal = self.data_dir.join(".fencepost/synced.log");
        std::fs::read_to_string(journal).map_or(0, |s| s.lines().count())
    }

    /// Waits until more than `before` WAL commits are journaled: a batch sent meanwhile is
    /// durable.
    pub async fn wait_for_commit(&self, before: usize) {
        let deadline = Instant::now() + WAIT;
        while self.wal_commits() <= before {
            assert!(Instant::now() < deadline, "no WAL commit within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A fresh raw gRPC connection.
    pub async fn grpc(&self) -> Client {
        connect(&self.endpoint).await
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// Arms failpoints for the next (re)start only.
    pub fn arm_failpoints(&mut self, spec: &str) {
        self.opts.failpoints = Some(spec.to_owned());
    }

    /// Waits for the server to exit on its own (e.g. an armed crash point), then reaps it.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = self.child.take().expect("server is running");
        wait_status(child, WAIT)
    }

    /// Real SIGKILL, then reap.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("server is running");
        child.kill().expect("SIGKILL fencepost");
        child.wait().expect("reap fencepost");
    }

    /// SIGTERM (graceful shutdown), then waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        let child = self.child.take().expect("server is running");
        signal(child.id(), "TERM");
        wait_status(child, WAIT)
    }

    /// Starts again on the same data dir (a new port or socket), killing it first if running.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        self.spawn();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A child process killed (SIGKILL) when dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn kill(&mut self) {
        self.0.kill().expect("kill child");
        self.0.wait().expect("reap child");
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends a signal by name with `kill(1)` (the workspace forbids `unsafe`, so no `libc::kill`).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// Runs the `fencepost` binary to completion (for servers expected to exit by themselves).
pub fn run_fencepost<S: AsRef<OsStr>>(args: impl IntoIterator<Item = S>) -> Output {
    let child = command("fencepost")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fencepost");
    wait_output(child, None, WAIT)
}

/// Starts `fencepost --listen LISTEN --data-dir DATA_DIR` and checks that it refuses to start:
/// a non-zero exit, `reason` on stderr, and no readiness line.
pub fn assert_refused_at_start(listen: &str, data_dir: &Path, reason: &str) {
    let out = run_fencepost([
        OsStr::new("--listen"),
        OsStr::new(listen),
        OsStr::new("--data-dir"),
        data_dir.as_os_str(),
    ]);
    assert!(!out.status.success(), "must exit non-zero");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(reason), "stderr names the reason: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("listening"),
        "never became ready: {stdout}"
    );
}

/// Feeds `stdin` (if piped), then waits for the child's output, killing it after `timeout`.
pub fn wait_output(mut child: Child, stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Some(mut pipe) = child.stdin.take() {
            use std::io::Write;
            // A child that exits without reading its input is not our failure to report here.
            let _ = pipe.write_all(&stdin.unwrap_or_default());
        }
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.expect("wait for child"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("child process {pid} did not exit within {timeout:?}");
        }
    }
}

fn wait_status(mut child: Child, timeout: Duration) -> ExitStatus {
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(timeout) {
        Ok(status) => status.expect("wait for child"),
        Err(_) => {
            signal(pid, "KILL");
            panic!("process {pid} did not exit within {timeout:?}");
        }
    }
}

/// Copies a child's lines to the test's stderr (captured per test) and keeps them for panics.
fn forward_lines(pipe: impl Read + Send + 'static, tag: &'static str) -> Arc<Mutex<Vec<String>>> {
    let kept = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&kept);
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("[{tag}] {line}");
            sink.lock().expect("stderr lock").push(line);
        }
    });
    kept
}

/// Reads stdout lines on a thread for the process's whole life, so the pipe never fills.
fn stdout_lines(pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            // After readiness nobody listens any more; keep draining.
            let _ = tx.send(line);
        }
    });
    rx
}

/// The readiness line's `addr`, and its `metrics` address if any.
fn wait_for_listening(lines: &mpsc::Receiver<String>) -> Result<(String, Option<String>), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => format!("no readiness line within {WAIT:?}"),
            mpsc::RecvTimeoutError::Disconnected => "exited before the readiness line".to_owned(),
        })?;
        let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if value["event"] == "listening" {
            let metrics = value["metrics"].as_str().map(str::to_owned);
            return value["addr"]
                .as_str()
                .map(|addr| (addr.to_owned(), metrics))
                .ok_or_else(|| format!("readiness line without addr: {line}"));
        }
    }
}

/// Connects to `http://host:port` or `unix:/path`.
pub async fn connect(endpoint: &str) -> Client {
    let channel = match endpoint.strip_prefix("unix:") {
        Some(path) => {
            let path = PathBuf::from(path);
            // The URI is required by the API but unused: the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                    }
                }))
                .await
        }
        None => {
            Endpoint::from_shared(endpoint.to_owned())
                .expect("endpoint URI")
                .connect()
                .await
        }
    };
    FencepostClient::new(channel.unwrap_or_else(|e| panic!("connect to {endpoint}: {e}")))
}

/// The session file a list of lines must produce: each line plus "\n".
pub fn jsonl<B: AsRef<[u8]>>(lines: impl IntoIterator<Item = B>) -> Vec<u8> {
    let mut out = Vec::new();
    for line in lines {
        out.extend_from_slice(line.as_ref());
        out.push(b'\n');
    }
    out
}
