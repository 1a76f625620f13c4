//! Server configuration: one typed struct, flags with `FENCEPOST_*` environment fallbacks.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use fencepost_core::Limits;
use fencepost_core::store::embedded::Fsync;

/// Longest duration any setting takes (a day).
const LONGEST: Duration = Duration::from_secs(24 * 60 * 60);

/// `fencepost`: lease-and-fence coordination for append-only session files.
#[derive(Debug, Clone, Parser)]
#[command(name = "fencepost", version, about)]
pub struct Config {
    /// Listen address: `host:port` (port 0 picks one) or `unix:/path/to.sock`.
    #[arg(long, env = "FENCEPOST_LISTEN", default_value = "127.0.0.1:7420")]
    pub listen: String,

    /// Data directory of the embedded store (session files live here).
    #[arg(long, env = "FENCEPOST_DATA_DIR", default_value = "./fencepost-data")]
    pub data_dir: PathBuf,

    /// When appends reach stable storage. `always`: every acknowledged batch is on disk (one
    /// group-committed fdatasync of the write-ahead log per round of appends). `never`: a batch
    /// is acknowledged once the OS has it; a crash of fencepost loses nothing, a power loss or
    /// kernel crash can lose acknowledged entries. `never` is for scratch data (tests, CI, tmpfs).
    #[arg(long, env = "FENCEPOST_FSYNC", value_enum, default_value_t = FsyncPolicy::Always)]
    pub fsync: FsyncPolicy,

    /// Lease TTL when a client asks for none.
    #[arg(long, env = "FENCEPOST_DEFAULT_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub default_ttl: Duration,

    /// Largest TTL a client may ask for.
    #[arg(long, env = "FENCEPOST_MAX_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub max_ttl: Duration,

    /// Largest Acquire wait a client may ask for.
    #[arg(long, env = "FENCEPOST_MAX_WAIT", default_value = "1h", value_parser = humantime::parse_duration)]
    pub max_wait: Duration,

    /// Largest single entry, in bytes.
    #[arg(long, env = "FENCEPOST_MAX_ENTRY_BYTES", default_value_t = 1 << 20)]
    pub max_entry_bytes: usize,

    /// Largest batch, in bytes (entries plus newlines).
    #[arg(long, env = "FENCEPOST_MAX_BATCH_BYTES", default_value_t = 4 << 20)]
    pub max_batch_bytes: usize,

    /// Most leases the server holds plus Acquire calls waiting for one, in all; past it, Acquire
    /// fails with RESOURCE_EXHAUSTED / TOO_MANY_LEASES.
    #[arg(long, env = "FENCEPOST_MAX_LEASES", default_value_t = 1_000_000)]
    pub max_leases: usize,

    /// Most leases held plus Acquire calls waiting for one by a single client id, so that one
    /// client that leaks leases cannot use up the server's --max-leases.
    #[arg(
        long,
        env = "FENCEPOST_MAX_LEASES_PER_CLIENT",
        default_value_t = 100_000
    )]
    pub max_leases_per_client: usize,

    /// How often session files in use are checked for changes made behind the server's back.
    #[arg(long, env = "FENCEPOST_SCAN_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub scan_interval: Duration,

    /// How long a shutdown waits for in-flight calls and open connections before closing them.
    #[arg(long, env = "FENCEPOST_DRAIN_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,

    /// How often the server pings each connection (HTTP/2 PING) to find clients that vanished
    /// without closing it (host down, network cut).
    #[arg(long, env = "FENCEPOST_PING_INTERVAL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ping_interval: Duration,

    /// How long a ping may go unanswered before its connection is closed: the client's calls end,
    /// and its queued acquires leave their queues.
    #[arg(long, env = "FENCEPOST_PING_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ping_timeout: Duration,

    /// Serve metrics (Prometheus/OpenMetrics text, `GET /metrics`) on this TCP `host:port`
    /// (port 0 picks one; the readiness line names it). Off unless given.
    #[arg(long, env = "FENCEPOST_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// TLS: the server's certificate chain (PEM). With --tls-key, TCP connections use TLS only.
    #[arg(
        long,
        env = "FENCEPOST_TLS_CERT",
        value_name = "PEM",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// TLS: the private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "FENCEPOST_TLS_KEY",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// TLS: require client certificates issued by this CA (PEM): mutual TLS.
    #[arg(
        long,
        env = "FENCEPOST_TLS_CLIENT_CA",
        value_name = "PEM",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,

    /// Log format on stderr.
    #[arg(long, env = "FENCEPOST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Log formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `--fsync` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FsyncPolicy {
    /// Sync before acknowledging.
    Always,
    /// Never sync a commit (unsafe on power loss).
    Never,
}

impl From<FsyncPolicy> for Fsync {
    fn from(policy: FsyncPolicy) -> Self {
        match policy {
            FsyncPolicy::Always => Self::Always,
            FsyncPolicy::Never => Self::Never,
        }
    }
}

/// A parsed `--listen` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// TCP `host:port`.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl Config {
    /// The listen address.
    ///
    /// # Errors
    /// An empty Unix socket path.
    pub fn listen_addr(&self) -> Result<ListenAddr, String> {
        match self.listen.strip_prefix("unix:") {
            Some("") => {
                Err("--listen unix: needs a socket path, e.g. unix:/run/fencepost.sock".into())
            }
            Some(path) => Ok(ListenAddr::Unix(PathBuf::from(path))),
            None => Ok(ListenAddr::Tcp(self.listen.clone())),
        }
    }

    /// The TLS settings, read from their files and checked (certificate and key parse and match),
    /// so that bad ones are refused before anything is bound, opened or announced; `None` without
    /// --tls-cert.
    ///
    /// # Errors
    /// An unreadable or unusable file, or TLS asked for on a Unix socket.
    pub fn tls(&self) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        if matches!(self.listen_addr()?, ListenAddr::Unix(_)) {
            return Err(
                "--tls-cert applies to TCP listeners; a Unix socket is protected by its file mode"
                    .into(),
            );
        }
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
        };
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
            read("--tls-cert", cert)?,
            read("--tls-key", key)?,
        ));
        if let Some(ca) = &self.tls_client_ca {
            tls = tls.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
        }
        tonic::transport::Server::builder()
            .tls_config(tls.clone())
            .map_err(|e| format!("TLS settings (--tls-cert, --tls-key, --tls-client-ca): {e}"))?;
        Ok(Some(tls))
    }

    /// The core limits.
    ///
    /// # Errors
    /// Inconsistent limits, named.
    pub fn limits(&self) -> Result<Limits, String> {
        let defaults = Limits::default();
        let limits = Limits {
            default_ttl: self.default_ttl,
            max_ttl: self.max_ttl,
            max_wait: self.max_wait,
            max_entry_bytes: self.max_entry_bytes,
            max_batch_bytes: self.max_batch_bytes,
            scan_interval: self.scan_interval,
            max_leases: self.max_leases,
            max_leases_per_client: self.max_leases_per_client,
            ..defaults
        };
        // Deadlines are `now + duration`: bounded, so no client request can overflow them.
        for (flag, value) in [
            ("--max-ttl", limits.max_ttl),
            ("--max-wait", limits.max_wait),
            ("--scan-interval", limits.scan_interval),
            ("--drain-timeout", self.drain_timeout),
            ("--ping-interval", self.ping_interval),
            ("--ping-timeout", self.ping_timeout),
        ] {
            if value > LONGEST {
                return Err(format!(
                    "{flag} is {}; the limit is {}",
                    humantime::format_duration(value),
                    humantime::format_duration(LONGEST)
                ));
            }
        }
        if limits.default_ttl > limits.max_ttl || limits.default_ttl < limits.min_ttl {
            return Err(format!(
                "--default-ttl must be between {:?} and --max-ttl ({:?})",
                limits.min_ttl, limits.max_ttl
            ));
        }
        if self.ping_interval < Duration::from_millis(100)
            || self.ping_timeout < Duration::from_millis(100)
        {
            return Err("--ping-interval and --ping-timeout must be at least 100ms".into());
        }
        if limits.scan_interval < Duration::from_millis(100) {
            return Err("--scan-interval must be at least 100ms".into());
        }
        if limits.max_entry_bytes == 0 || limits.max_entry_bytes > limits.max_batch_bytes {
            return Err(
                "--max-entry-bytes must be at least 1 and at most --max-batch-bytes".into(),
            );
        }
        if limits.max_leases == 0 || limits.max_leases_per_client == 0 {
            return Err("--max-leases and --max-leases-per-client must be at least 1".into());
        }
        if limits.max_batch_bytes > 64 << 20 {
            return Err("--max-batch-bytes is capped at 64 MiB".into());
        }
        Ok(limits)
    }
}
