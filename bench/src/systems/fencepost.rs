//! fencepost: the server binary started on a fresh temp data dir (or `--endpoint`), driven with the
//! raw generated gRPC client, one HTTP/2 connection per bench client.

mod keepalive;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use fencepost as proto;
use hyper_util::rt::TokioIo;
use proto::v1::fencepost_client::FencepostClient;
use proto::v1::{
    AcquireRequest, AppendOnceRequest, AppendRequest, Owner, OwnerKind, ReadRequest, ReleaseRequest,
};
use tonic::transport::{Channel, Endpoint, Uri};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::files::read_files;
use super::process::Server;
use super::{Client, Grant, KeepAlive, LossWatch, OnceAck, System};
use crate::cli::{Opts, Transport};
use crate::history::Contents;

type Rpc = FencepostClient<Channel>;

/// Longest wait asked for in one Acquire; a WAIT_TIMEOUT is simply asked again.
const ACQUIRE_WAIT_MS: u64 = 60_000;

/// Concurrent Read streams when reading every session back.
const READERS: usize = 16;

/// A fencepost server the bench started, or one it was pointed at.
pub struct Fencepost {
    endpoint: String,
    transport: &'static str,
    /// Where session files live, when known.
    data_dir: Option<PathBuf>,
    next_client: AtomicU64,
    // Field order: the server is killed before its temp dir is removed.
    server: Option<Server>,
    _dir: Option<tempfile::TempDir>,
}

impl Fencepost {
    /// Starts `fencepost` (see [`Opts::server_bin`]) on a fresh temp data dir, listening on loopback
    /// TCP port 0 or a Unix socket, and waits for its readiness line; or uses `--endpoint`.
    ///
    /// # Errors
    /// The binary is missing, exits, or never says it is listening.
    pub async fn start(opts: &Opts) -> Result<Self> {
        if let Some(endpoint) = &opts.endpoint {
            let transport = if endpoint.starts_with("unix:") {
                "uds"
            } else {
                "tcp"
            };
            return Ok(Self {
                endpoint: endpoint.clone(),
                transport,
                data_dir: opts.data_dir.clone(),
                next_client: AtomicU64::new(0),
                server: None,
                _dir: None,
            });
        }
        let bin = match &opts.server_bin {
            Some(bin) => bin.clone(),
            None => std::env::current_exe()?
                .parent()
                .context("the bench executable has no parent dir")?
                .join("fencepost"),
        };
        if !bin.is_file() {
            bail!(
                "{} not found: build it (`cargo build --release -p fencepost-server`) or pass \
                 --server-bin",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("fencepost-bench-")
            .tempdir()?;
        let data_dir = dir.path().join("data");
        let (listen, transport) = match opts.transport {
            Transport::Tcp => ("127.0.0.1:0".to_owned(), "tcp"),
            Transport::Uds => (
                format!("unix:{}", dir.path().join("fp.sock").display()),
                "uds",
            ),
        };
        let mut command = std::process::Command::new(&bin);
        command
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&data_dir);
        let mut server = Server::spawn(command, "fencepost", &dir.path().join("fencepost.log"))?;
        let addr = server
            .wait_for(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                (v["event"] == "listening").then(|| v["addr"].as_str().map(str::to_owned))?
            })
            .await?;
        let endpoint = if addr.starts_with("unix:") {
            addr
        } else {
            format!("http://{addr}")
        };
        Ok(Self {
            endpoint,
            transport,
            data_dir: Some(data_dir),
            next_client: AtomicU64::new(0),
            server: Some(server),
            _dir: Some(dir),
        })
    }

    async fn rpc(&self) -> Result<Rpc> {
        Ok(FencepostClient::new(connect_channel(&self.endpoint).await?))
    }
}

/// Opens one HTTP/2 connection to `http://host:port` or `unix:/path`.
///
/// # Errors
/// The endpoint is malformed or unreachable.
pub async fn connect_channel(endpoint: &str) -> Result<Channel> {
    let channel = match endpoint.strip_prefix("unix:") {
        Some(path) => {
            let path = PathBuf::from(path);
            // The URI only fills the :authority header; the connector dials the socket.
            Endpoint::from_static("http://localhost")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
        }
        None => {
            Endpoint::from_shared(endpoint.to_owned())?
                .tcp_nodelay(true)
                .connect()
                .await
        }
    };
    channel.with_context(|| format!("connect to {endpoint}"))
}

/// A status as `WHAT: CODE REASON: message`.
fn rpc_error(what: &str, status: &Status) -> anyhow::Error {
    let reason = status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default();
    anyhow!("{what}: {:?} {reason}: {}", status.code(), status.message())
}

#[async_trait]
impl System for Fencepost {
    fn name(&self) -> &'static str {
        "fencepost"
    }

    fn transport(&self) -> &'static str {
        self.transport
    }

    fn expires(&self) -> bool {
        true
    }

    fn has_append_once(&self) -> bool {
        true
    }

    fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Server::pid)
    }

    fn echo_endpoint(&self) -> Option<String> {
        Some(self.endpoint.clone())
    }

    async fn connect(&self, ttl: Duration) -> Result<Box<dyn Client>> {
        let n = self.next_client.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(Conn {
            rpc: self.rpc().await?,
            owner: Owner {
                client_id: format!("fencepost-bench-{}-{n}", std::process::id()),
                name: format!("fencepost-bench pid {} client {n}", std::process::id()),
                kind: OwnerKind::Other.into(),
            },
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        }))
    }

    async fn contents(&self, sessions: &[String]) -> Result<Vec<(&'static str, Contents)>> {
        let mut sources = Vec::new();
        if let Some(dir) = self.data_dir.clone() {
            let names = sessions.to_vec();
            let files = tokio::task::spawn_blocking(move || read_files(&dir, &names)).await??;
            sources.push(("file", files));
        }
        sources.push(("read-rpc", self.read_all(sessions).await?));
        Ok(sources)
    }
}

impl Fencepost {
    /// Reads every session through the Read RPC, over a few connections at once.
    async fn read_all(&self, sessions: &[String]) -> Result<Contents> {
        let mut tasks = tokio::task::JoinSet::new();
        let chunk = sessions.len().div_ceil(READERS).max(1);
        for names in sessions.chunks(chunk) {
            let mut rpc = self.rpc().await?;
            let names = names.to_vec();
            tasks.spawn(async move {
                let mut out = Contents::new();
                for name in names {
                    let lines = read_one(&mut rpc, &name).await?;
                    out.insert(name, lines);
                }
                Ok::<_, anyhow::Error>(out)
            });
        }
        let mut all = Contents::new();
        while let Some(part) = tasks.join_next().await {
            all.extend(part??);
        }
        Ok(all)
    }
}

async fn read_one(rpc: &mut Rpc, resource: &str) -> Result<Vec<Vec<u8>>> {
    let request = ReadRequest {
        resource: resource.to_owned(),
        ..Default::default()
    };
    let what = || format!("read {resource}");
    let mut stream = rpc
        .read(request)
        .await
        .map_err(|s| rpc_error(&what(), &s))?
        .into_inner();
    let mut lines = Vec::new();
    while let Some(entry) = stream.message().await.map_err(|s| rpc_error(&what(), &s))? {
        lines.push(entry.data);
    }
    Ok(lines)
}

/// One bench client: its own connection and owner.
struct Conn {
    rpc: Rpc,
    owner: Owner,
    ttl_ms: u64,
}

#[async_trait]
impl Client for Conn {
    async fn acquire(&mut self, session: &str) -> Result<Grant> {
        loop {
            let request = AcquireRequest {
                resource: session.to_owned(),
                owner: Some(self.owner.clone()),
                ttl_ms: self.ttl_ms,
                wait_ms: ACQUIRE_WAIT_MS,
                idempotency_key: String::new(),
            };
            match self.rpc.acquire(request).await {
                Ok(reply) => {
                    let lease = reply
                        .into_inner()
                        .lease
                        .context("Acquire answered without a lease")?;
                    return Ok(Grant {
                        session: session.to_owned(),
                        token: Some(lease.token),
                        id: lease.lease_id,
                        ttl: Duration::from_millis(lease.ttl_ms),
                    });
                }
                Err(status) if status.code() == Code::DeadlineExceeded => {}
                Err(status) => return Err(rpc_error(&format!("acquire {session}"), &status)),
            }
        }
    }

    async fn append(&mut self, grant: &Grant, lines: &[Vec<u8>], release: bool) -> Result<()> {
        let request = AppendRequest {
            resource: grant.session.clone(),
            lease_id: grant.id.clone(),
            token: grant.token.unwrap_or_default(),
            entries: lines.to_vec(),
            release,
            ..Default::default()
        };
        self.rpc
            .append(request)
            .await
            .map_err(|s| rpc_error(&format!("append to {}", grant.session), &s))?;
        Ok(())
    }

    async fn append_once(&mut self, session: &str, lines: &[Vec<u8>]) -> Result<OnceAck> {
        loop {
            let request = AppendOnceRequest {
                resource: session.to_owned(),
                owner: Some(self.owner.clone()),
                wait_ms: ACQUIRE_WAIT_MS,
                entries: lines.to_vec(),
                ..Default::default()
            };
            match self.rpc.append_once(request).await {
                Ok(reply) => {
                    let reply = reply.into_inner();
                    return Ok(OnceAck {
                        token: reply.token,
                        first_seq: reply.first_seq,
                    });
                }
                // The wait ran out before the lease was granted: nothing was appended.
                Err(status) if status.code() == Code::DeadlineExceeded => {}
                Err(status) => {
                    return Err(rpc_error(&format!("append-once to {session}"), &status));
                }
            }
        }
    }

    async fn release(&mut self, grant: &Grant) -> Result<()> {
        let request = ReleaseRequest {
            resource: grant.session.clone(),
            lease_id: grant.id.clone(),
            force: false,
        };
        self.rpc
            .release(request)
            .await
            .map_err(|s| rpc_error(&format!("release {}", grant.session), &s))?;
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<Box<dyn KeepAlive>> {
        Ok(Box::new(keepalive::Stream::open(&mut self.rpc).await?))
    }

    async fn watch_loss(&mut self, grant: &Grant) -> Result<LossWatch> {
        keepalive::renew_then_watch(&mut self.rpc, grant).await
    }
}
