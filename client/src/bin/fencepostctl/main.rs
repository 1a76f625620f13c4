//! `fencepostctl`, the fencepost command-line client: clap wiring and dispatch. Each command
//! lives in its own module; `output` defines the JSON, `exit` the exit codes.

mod commands;
mod exit;
mod inspect;
mod keepalive;
mod output;
mod run;
mod signals;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use fencepost_client::{Client, OwnerKind};

use crate::exit::Failure;

#[derive(Debug, Parser)]
#[command(
    name = "fencepostctl",
    version,
    about = "Acquire fencepost leases and append fenced entries from scripts. Output is JSON, \
             one object per line.",
    after_help = "Exit codes: 0 success, 1 other failure (e.g. server unreachable), 2 bad input \
                  or usage, 3 fencing rejection (stale token, lease lost, head mismatch, external \
                  modification), 4 timed out waiting for a lease. `run` exits with its command's \
                  code (128 + signal if a signal killed it) unless one of these applies."
)]
struct Cli {
    /// Server endpoint: http://host:port or unix:/path/to.sock.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FENCEPOST_ENDPOINT",
        value_name = "URI",
        default_value = "http://127.0.0.1:7420"
    )]
    endpoint: String,
    /// Owner client id (default: a fresh UUID per run). Keep it stable across runs to make
    /// `acquire --idempotency-key` retries return the same lease.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FENCEPOST_CLIENT_ID",
        value_name = "ID"
    )]
    client_id: Option<String>,
    /// For an https:// endpoint: the CA certificate (PEM) that issued the server's certificate
    /// (default: the public CAs).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FENCEPOST_CA_CERT",
        value_name = "PEM"
    )]
    ca_cert: Option<PathBuf>,
    /// For a server that requires client certificates: this client's certificate (PEM).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FENCEPOST_CLIENT_CERT",
        value_name = "PEM"
    )]
    client_cert: Option<PathBuf>,
    /// The private key of --client-cert (PEM).
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        env = "FENCEPOST_CLIENT_KEY",
        value_name = "PEM"
    )]
    client_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Acquire an exclusive lease and print it (lease_id, token, ttl_ms, epoch, head).
    Acquire(commands::AcquireArgs),
    /// Append the JSON lines on stdin as one atomic batch under a lease and its token.
    Append(commands::AppendArgs),
    /// Wait for the lease, append the JSON lines on stdin as one batch, and release, in one call
    /// (for co-tenant writers: heartbeat, cron, channel ingress).
    AppendOnce(commands::AppendOnceArgs),
    /// Release a lease (--lease ID), or force-release whatever holds the resource (--force).
    Release(commands::ReleaseArgs),
    /// Renew a lease once and print the remaining TTL.
    Renew(commands::RenewArgs),
    /// Operator: accept a session file changed outside fencepost as a new head (new epoch).
    Adopt(commands::AdoptArgs),
    /// Keep a lease alive until interrupted; exits 3 when the lease is lost.
    Keepalive(keepalive::KeepaliveArgs),
    /// Print the entries of a resource, one JSON line each.
    Read(inspect::ReadArgs),
    /// Print the holder, token, epoch, waiters and head of a resource.
    Describe(inspect::DescribeArgs),
    /// Print the live leases, one JSON line each.
    List(inspect::ListArgs),
    /// Print lease and append events for a resource or prefix until interrupted.
    Watch(inspect::WatchArgs),
    /// Check that the server serves the fencepost API (gRPC health); exits 1 if it does not.
    Health(inspect::HealthArgs),
    /// Hold a lease while CMD runs (kept alive; FENCEPOST_ENDPOINT, FENCEPOST_RESOURCE,
    /// FENCEPOST_LEASE_ID and FENCEPOST_TOKEN in its environment), release it after, and exit
    /// with CMD's code. If the lease is lost, CMD's process group gets SIGTERM at once, SIGKILL
    /// after min(TTL/2, 5s), and run exits 3.
    Run(run::RunArgs),
}

/// The owner kinds, as accepted by --kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KindArg {
    Runner,
    Heartbeat,
    Cron,
    Channel,
    Cli,
    Other,
}

impl From<KindArg> for OwnerKind {
    fn from(kind: KindArg) -> Self {
        match kind {
            KindArg::Runner => Self::Runner,
            KindArg::Heartbeat => Self::Heartbeat,
            KindArg::Cron => Self::Cron,
            KindArg::Channel => Self::Channel,
            KindArg::Cli => Self::Cli,
            KindArg::Other => Self::Other,
        }
    }
}

/// `250ms`, `10s`, `2m`, `1h 30m`.
fn parse_duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Where to connect and as which client id; each command connects with its own owner.
#[derive(Debug)]
struct Connection {
    endpoint: String,
    client_id: Option<String>,
    ca_cert: Option<PathBuf>,
    client_identity: Option<(PathBuf, PathBuf)>,
}

impl Connection {
    /// Connects with the given owner name (default `fencepostctl@<host> pid <pid>`) and kind.
    async fn client(&self, name: Option<String>, kind: OwnerKind) -> Result<Client, Failure> {
        let name =
            name.unwrap_or_else(|| format!("fencepostctl@{}", fencepost_client::default_name()));
        let mut builder = Client::builder(self.endpoint.as_str())
            .name(name)
            .kind(kind);
        if let Some(client_id) = &self.client_id {
            builder = builder.client_id(client_id.as_str());
        }
        if let Some(ca) = &self.ca_cert {
            builder = builder.tls_ca_certificate(read_pem("--ca-cert", ca)?);
        }
        if let Some((cert, key)) = &self.client_identity {
            builder = builder.tls_client_identity(
                read_pem("--client-cert", cert)?,
                read_pem("--client-key", key)?,
            );
        }
        Ok(builder.connect().await?)
    }
}

impl Connection {
    /// The TLS settings as the environment variables fencepostctl reads, with absolute paths.
    fn tls_env(&self) -> Vec<(&'static str, PathBuf)> {
        let absolute = |path: &PathBuf| std::path::absolute(path).unwrap_or_else(|_| path.clone());
        let mut vars = Vec::new();
        if let Some(ca) = &self.ca_cert {
            vars.push(("FENCEPOST_CA_CERT", absolute(ca)));
        }
        if let Some((cert, key)) = &self.client_identity {
            vars.push(("FENCEPOST_CLIENT_CERT", absolute(cert)));
            vars.push(("FENCEPOST_CLIENT_KEY", absolute(key)));
        }
        vars
    }
}

/// The contents of a PEM file named by `flag`.
fn read_pem(flag: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path).map_err(|err| {
        Failure::bad_input(
            "INVALID_TLS",
            &format!("cannot read {flag} {}: {err}", path.display()),
        )
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let client_identity = match (cli.client_cert, cli.client_key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        _ => {
            return Failure::bad_input(
                "INVALID_TLS",
                "--client-cert and --client-key (FENCEPOST_CLIENT_CERT, FENCEPOST_CLIENT_KEY) go \
                 together",
            )
            .report();
        }
    };
    let conn = Connection {
        endpoint: cli.endpoint,
        client_id: cli.client_id,
        ca_cert: cli.ca_cert,
        client_identity,
    };
    let result = match cli.command {
        Command::Acquire(args) => commands::acquire(&conn, args).await,
        Command::Append(args) => commands::append(&conn, args).await,
        Command::AppendOnce(args) => commands::append_once(&conn, args).await,
        Command::Release(args) => commands::release(&conn, args).await,
        Command::Renew(args) => commands::renew(&conn, args).await,
        Command::Adopt(args) => commands::adopt(&conn, args).await,
        Command::Keepalive(args) => keepalive::keepalive(&conn, args).await,
        Command::Read(args) => inspect::read(&conn, args).await,
        Command::Describe(args) => inspect::describe(&conn, args).await,
        Command::List(args) => inspect::list(&conn, args).await,
        Command::Watch(args) => inspect::watch(&conn, args).await,
        Command::Health(args) => inspect::health(&conn, args).await,
        Command::Run(args) => return run::run(&conn, args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => failure.report(),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn release_needs_exactly_one_of_lease_and_force() {
        assert!(Cli::try_parse_from(["fencepostctl", "release", "a.jsonl"]).is_err());
        assert!(
            Cli::try_parse_from([
                "fencepostctl",
                "release",
                "a.jsonl",
                "--lease",
                "l",
                "--force"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["fencepostctl", "release", "a.jsonl", "--force"]).is_ok());
    }

    #[test]
    fn durations_and_kinds_parse() {
        let cli = Cli::try_parse_from([
            "fencepostctl",
            "acquire",
            "a.jsonl",
            "--ttl",
            "250ms",
            "--wait",
            "2m",
            "--kind",
            "heartbeat",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Acquire(_)));
        assert!(Cli::try_parse_from(["fencepostctl", "acquire", "a", "--kind", "robot"]).is_err());
        assert!(Cli::try_parse_from(["fencepostctl", "acquire", "a", "--ttl", "soon"]).is_err());
    }

    #[test]
    fn lease_id_is_accepted_as_an_alias_of_lease() {
        for command in ["append", "renew", "keepalive"] {
            let mut args = vec!["fencepostctl", command, "a.jsonl", "--lease-id", "l"];
            if command == "append" {
                args.extend(["--token", "1"]);
            }
            assert!(Cli::try_parse_from(&args).is_ok(), "{command}");
        }
        assert!(Cli::try_parse_from(["fencepostctl", "release", "a", "--lease-id", "l"]).is_ok());
    }

    #[test]
    fn run_needs_a_command_after_the_double_dash() {
        assert!(Cli::try_parse_from(["fencepostctl", "run", "a.jsonl"]).is_err());
        assert!(Cli::try_parse_from(["fencepostctl", "run", "a.jsonl", "sh"]).is_err());
        let cli = Cli::try_parse_from([
            "fencepostctl",
            "run",
            "a.jsonl",
            "--ttl",
            "2s",
            "--",
            "sh",
            "-c",
            "exit 3",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Run(_)));
    }

    #[test]
    fn append_once_takes_a_wait_and_a_kind() {
        let cli = Cli::try_parse_from([
            "fencepostctl",
            "append-once",
            "a.jsonl",
            "--wait",
            "2s",
            "--kind",
            "heartbeat",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::AppendOnce(_)));
    }

    #[test]
    fn watch_takes_a_resource_or_a_prefix_but_not_both() {
        assert!(Cli::try_parse_from(["fencepostctl", "watch"]).is_err());
        assert!(Cli::try_parse_from(["fencepostctl", "watch", "a", "--prefix", "b"]).is_err());
        assert!(Cli::try_parse_from(["fencepostctl", "watch", "--prefix", "agents/"]).is_ok());
    }
}
