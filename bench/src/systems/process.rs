//! Server processes the bench starts: spawn, wait for a readiness line, log to a file, kill on drop,
//! and read the resident memory.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::mpsc;

/// How long a started server may take to say it is ready.
const READY_WAIT: Duration = Duration::from_secs(30);

/// Output lines quoted when a server fails to start.
const TAIL: usize = 10;

/// A running child process, killed (SIGKILL) and reaped when dropped. Its stdout and stderr lines
/// go to a log file beside its data; until readiness they are also offered to [`Server::wait_for`].
pub struct Server {
    child: std::process::Child,
    name: String,
    lines: mpsc::UnboundedReceiver<String>,
}

impl Server {
    /// Spawns `command`, logging its output to `log`.
    ///
    /// # Errors
    /// The process cannot be started or the log cannot be created.
    pub fn spawn(mut command: Command, name: &str, log: &Path) -> Result<Self> {
        let file = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("start {name} ({:?})", command.get_program()))?;
        let (tx, lines) = mpsc::unbounded_channel();
        let file = Arc::new(Mutex::new(file));
        if let Some(out) = child.stdout.take() {
            forward(out, tx.clone(), Arc::clone(&file));
        }
        if let Some(err) = child.stderr.take() {
            forward(err, tx, file);
        }
        Ok(Self {
            child,
            name: name.to_owned(),
            lines,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the first output line `pick` maps to a value. Once found, later lines go to the
    /// log file only.
    ///
    /// # Errors
    /// The process exits, or says nothing matching within the readiness bound.
    pub async fn wait_for<T>(&mut self, mut pick: impl FnMut(&str) -> Option<T>) -> Result<T> {
        let mut recent = std::collections::VecDeque::new();
        let waiting = async {
            while let Some(line) = self.lines.recv().await {
                if let Some(value) = pick(&line) {
                    return Some(value);
                }
                if recent.len() == TAIL {
                    recent.pop_front();
                }
                recent.push_back(line);
            }
            None
        };
        let why = match tokio::time::timeout(READY_WAIT, waiting).await {
            Ok(Some(value)) => {
                // Nobody reads the channel after readiness: stop it from filling up.
                self.lines.close();
                while self.lines.try_recv().is_ok() {}
                return Ok(value);
            }
            Ok(None) => "exited before it was ready".to_owned(),
            Err(_) => format!("was not ready within {READY_WAIT:?}"),
        };
        let tail: Vec<String> = recent.into_iter().collect();
        bail!("{} {why}; its last output:\n{}", self.name, tail.join("\n"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Copies lines to the log file and, while anyone listens, to the channel.
fn forward(
    pipe: impl Read + Send + 'static,
    tx: mpsc::UnboundedSender<String>,
    file: Arc<Mutex<File>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if let Ok(mut f) = file.lock() {
                let _ = writeln!(f, "{line}");
            }
            let _ = tx.send(line);
        }
    });
}

/// Resident set size of a process, in MiB, from `/proc/<pid>/status` (`VmRSS`).
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<f64> {
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(crate::report::round1(kib / 1024.0))
}

/// A loopback TCP port that was free a moment ago (for servers that cannot report the port they
/// bound, like etcd).
///
/// # Errors
/// No port can be bound.
#[cfg(feature = "etcd")]
pub fn free_port() -> Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_mib() {
        let status = "Name:\tfencepost\nVmPeak:\t  999 kB\nVmRSS:\t   52224 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(51.0));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[test]
    fn our_own_rss_is_readable() {
        assert!(rss_mib(std::process::id()).is_some_and(|m| m > 0.0));
    }
}
