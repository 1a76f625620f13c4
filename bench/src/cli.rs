//! Command-line options: which systems and workloads, for how long, against what.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// `fencepost-bench`: runs the workloads of BENCH.md and prints one JSON object per line.
#[derive(Debug, Clone, Parser)]
#[command(name = "fencepost-bench", version, about)]
pub struct Opts {
    /// Which system to measure; `all` runs every one and adds ratio lines.
    #[arg(long, value_enum, default_value_t = SystemChoice::Fencepost)]
    pub system: SystemChoice,

    /// Workloads to run, comma-separated (W1..W6). W4, the safety check, runs after every other
    /// workload whether listed or not.
    #[arg(long, value_delimiter = ',', default_value = "W1,W2,W3,W5,W6")]
    pub workload: Vec<Workload>,

    /// How long each timed workload runs (W1, W2 and each W3 line).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// How a started fencepost server listens: loopback TCP or a Unix socket.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,

    /// Use this running fencepost server (`http://host:port` or `unix:/path`) instead of starting one.
    #[arg(long)]
    pub endpoint: Option<String>,

    /// Data dir of the `--endpoint` server, so W4 can read its session files too.
    #[arg(long, requires = "endpoint")]
    pub data_dir: Option<PathBuf>,

    /// The `fencepost` binary to start (default: the one next to this executable).
    #[arg(long)]
    pub server_bin: Option<PathBuf>,

    /// Use this running etcd (`http://host:port`) instead of starting one.
    #[arg(long)]
    pub etcd_endpoint: Option<String>,

    /// The `etcd` binary to start.
    #[arg(long, default_value = "etcd")]
    pub etcd_bin: PathBuf,

    /// W5: sessions touched once each.
    #[arg(long, default_value_t = 100_000)]
    pub w5_sessions: usize,

    /// W5: upper bound on the time spent touching sessions.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    pub w5_touch_limit: Duration,

    /// W5: how long the 10,000 leases are held and kept alive.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub w5_hold: Duration,

    /// W6: repetitions of the loss and hand-over.
    #[arg(long, default_value_t = 50)]
    pub w6_reps: usize,
}

/// Which systems to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SystemChoice {
    /// The fencepost server.
    Fencepost,
    /// `<file>.lock` files with O_CREAT|O_EXCL, O_APPEND writes and fdatasync.
    Lockfile,
    /// etcd's lease and lock API with a fenced transaction per append.
    Etcd,
    /// Every system, then the ratio lines.
    All,
}

impl SystemChoice {
    /// The systems this choice stands for, in run order.
    pub fn systems(self) -> Vec<SystemChoice> {
        match self {
            Self::All => vec![Self::Fencepost, Self::Lockfile, Self::Etcd],
            one => vec![one],
        }
    }
}

/// How the client reaches a started fencepost server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// Loopback TCP on a free port.
    Tcp,
    /// A Unix socket in the run's temp dir.
    Uds,
}

/// The workloads of BENCH.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    W1,
    W2,
    W3,
    W4,
    W5,
    W6,
}

impl FromStr for Workload {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_uppercase().as_str() {
            "W1" => Ok(Self::W1),
            "W2" => Ok(Self::W2),
            "W3" => Ok(Self::W3),
            "W4" => Ok(Self::W4),
            "W5" => Ok(Self::W5),
            "W6" => Ok(Self::W6),
            _ => Err(format!("unknown workload {s:?}: expected W1..W6")),
        }
    }
}

impl std::fmt::Display for Workload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// Parses `10s`, `500ms`, `2m`; refuses zero.
///
/// # Errors
/// Not a duration, or zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration: {e}"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: the duration must be above zero"));
    }
    Ok(d)
}

impl Opts {
    /// The workloads to run, in order, without duplicates and without W4 (which always runs).
    pub fn workloads(&self) -> Vec<Workload> {
        let mut w: Vec<Workload> = self
            .workload
            .iter()
            .copied()
            .filter(|w| *w != Workload::W4)
            .collect();
        w.sort();
        w.dedup();
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Opts, clap::Error> {
        Opts::try_parse_from(std::iter::once("fencepost-bench").chain(args.iter().copied()))
    }

    #[test]
    fn durations_take_units() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn bad_or_zero_durations_are_refused() {
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("0s").unwrap_err().contains("above zero"));
        assert!(parse(&["--duration", "fast"]).is_err());
    }

    #[test]
    fn defaults_run_every_workload_for_ten_seconds_on_fencepost() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.duration, Duration::from_secs(10));
        assert_eq!(o.system, SystemChoice::Fencepost);
        assert_eq!(o.transport, Transport::Tcp);
        use Workload::*;
        assert_eq!(o.workloads(), [W1, W2, W3, W5, W6]);
        assert_eq!(
            (o.w5_sessions, o.w5_hold),
            (100_000, Duration::from_secs(30))
        );
        assert_eq!(o.w6_reps, 50);
    }

    #[test]
    fn workloads_are_a_comma_list_in_any_case() {
        let o = parse(&["--workload", "w3,W1,W4,W1", "--duration", "3s"]).unwrap();
        assert_eq!(o.workloads(), [Workload::W1, Workload::W3]);
        assert_eq!(o.duration, Duration::from_secs(3));
        let err = parse(&["--workload", "W1,W9"]).unwrap_err().to_string();
        assert!(err.contains("unknown workload"), "{err}");
    }

    #[test]
    fn systems_and_transports_parse() {
        let o = parse(&["--system", "all", "--transport", "uds", "--w5-hold", "10s"]).unwrap();
        assert_eq!(
            o.system.systems(),
            [
                SystemChoice::Fencepost,
                SystemChoice::Lockfile,
                SystemChoice::Etcd
            ]
        );
        assert_eq!(o.transport, Transport::Uds);
        assert_eq!(o.w5_hold, Duration::from_secs(10));
        assert_eq!(SystemChoice::Etcd.systems(), [SystemChoice::Etcd]);
        assert!(parse(&["--system", "redis"]).is_err());
    }

    #[test]
    fn a_data_dir_needs_an_endpoint() {
        assert!(parse(&["--data-dir", "/tmp/x"]).is_err());
        let o = parse(&["--endpoint", "unix:/tmp/fp.sock", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(o.endpoint.as_deref(), Some("unix:/tmp/fp.sock"));
    }
}
