//! etcd: a local `etcd` (fsync on) started on free loopback ports with a temp data dir, or
//! `--etcd-endpoint`. Lock = one etcd lease per client (the concurrency-session pattern) plus the
//! Lock API; append = a Txn that puts the entries only if the lock key still exists with our lease.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use async_trait::async_trait;
use etcd_client::{
    Client as Etcdc, Compare, CompareOp, ConnectOptions, EventType, GetOptions, KeyValue,
    LeaseKeepAliveStream, LeaseKeeper, LockOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::oneshot;

use super::process::{Server, free_port};
use super::{Client, Grant, KeepAlive, LossWatch, System};
use crate::cli::Opts;
use crate::history::Contents;

/// Keys read per Range call when reading entries back.
const PAGE: i64 = 2000;

/// The etcd the bench started, or the one it was pointed at.
pub struct Etcd {
    endpoint: String,
    /// Key prefix of this run: `fencepost-bench/<run id>`.
    root: String,
    // Field order: the server is killed before its temp dir is removed.
    server: Option<Server>,
    _dir: Option<tempfile::TempDir>,
}

impl Etcd {
    /// Starts `etcd` on free loopback ports with a temp data dir (never `--unsafe-no-fsync`) and
    /// waits until it serves; or uses `--etcd-endpoint`.
    ///
    /// # Errors
    /// etcd is missing, exits, or never becomes ready.
    pub async fn start(opts: &Opts, run_id: &str) -> Result<Self> {
        let root = format!("fencepost-bench/{run_id}");
        if let Some(endpoint) = &opts.etcd_endpoint {
            return Ok(Self {
                endpoint: endpoint.clone(),
                root,
                server: None,
                _dir: None,
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("fencepost-bench-etcd-")
            .tempdir()?;
        let (client_port, peer_port) = (free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut command = std::process::Command::new(&opts.etcd_bin);
        command
            .arg("--name=bench")
            .arg(format!("--data-dir={}", dir.path().join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=bench={peer_url}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr");
        let mut server = Server::spawn(command, "etcd", &dir.path().join("etcd.log"))
            .context("is etcd installed? (Debian: apt-get install etcd-server)")?;
        server
            .wait_for(|line| {
                // zap logging (3.4+) says the first, capnslog the second.
                let ready = line.contains("serving client traffic")
                    || line.contains("ready to serve client requests");
                ready.then_some(())
            })
            .await?;
        let etcd = Self {
            endpoint: client_url,
            root,
            server: Some(server),
            _dir: Some(dir),
        };
        etcd.client().await?.status().await.context("etcd status")?;
        Ok(etcd)
    }

    async fn client(&self) -> Result<Etcdc> {
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(10));
        Etcdc::connect([self.endpoint.as_str()], Some(options))
            .await
            .with_context(|| format!("connect to etcd at {}", self.endpoint))
    }

    fn entries_prefix(&self) -> String {
        format!("{}/entries/", self.root)
    }
}

#[async_trait]
impl System for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn transport(&self) -> &'static str {
        "tcp"
    }

    fn expires(&self) -> bool {
        true
    }

    fn server_pid(&self) -> Option<u32> {
        self.server.as_ref().map(Server::pid)
    }

    async fn connect(&self, ttl: Duration) -> Result<Box<dyn Client>> {
        let mut client = self.client().await?;
        // etcd leases count whole seconds: round up.
        let secs = i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0))?.max(1);
        let lease = client.lease_grant(secs, None).await?;
        Ok(Box::new(Conn {
            client,
            lease: lease.id(),
            ttl: Duration::from_secs(u64::try_from(lease.ttl())?),
            root: self.root.clone(),
            appends: 0,
        }))
    }

    async fn contents(&self, sessions: &[String]) -> Result<Vec<(&'static str, Contents)>> {
        let base = self.entries_prefix();
        let mut kvs: BTreeMap<String, Vec<KeyValue>> =
            sessions.iter().map(|s| (s.clone(), Vec::new())).collect();
        // One paged range over the sessions' common directory, instead of a call per session.
        let start = format!("{base}{}", common_dir(sessions));
        let end = prefix_end(&start);
        let mut client = self.client().await?;
        let mut from = start.into_bytes();
        loop {
            let options = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            let mut page = client.get(from.clone(), Some(options)).await?;
            let more = page.more();
            let got = page.take_kvs();
            let Some(last) = got.last() else { break };
            from = [last.key(), b"\0"].concat();
            for kv in got {
                let key = kv.key_str()?;
                let rest = key
                    .strip_prefix(&base)
                    .context("range outside the prefix")?;
                let (session, _) = rest
                    .rsplit_once('/')
                    .context("entry key without a session")?;
                if let Some(list) = kvs.get_mut(session) {
                    list.push(kv);
                }
            }
            if !more {
                break;
            }
        }
        // The store's commit order: by revision; entries of one Txn share it and keep key order.
        let contents = kvs
            .into_iter()
            .map(|(session, mut list)| {
                list.sort_by(|a, b| {
                    (a.create_revision(), a.key()).cmp(&(b.create_revision(), b.key()))
                });
                (session, list.iter().map(|kv| kv.value().to_vec()).collect())
            })
            .collect();
        Ok(vec![("etcd", contents)])
    }
}

/// The directory part all session names share (`a/b/` for `a/b/c` and `a/b/d`).
fn common_dir(sessions: &[String]) -> String {
    let Some(first) = sessions.first() else {
        return String::new();
    };
    let mut common = first.as_str();
    for s in sessions {
        while !s.starts_with(common) {
            common = &common[..common.len() - 1];
        }
    }
    match common.rfind('/') {
        Some(i) => common[..=i].to_owned(),
        None => String::new(),
    }
}

/// The end of the range holding every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One bench client: its own connection and its own etcd lease, under which it takes its locks.
struct Conn {
    client: Etcdc,
    lease: i64,
    ttl: Duration,
    root: String,
    /// Appends so far, to name entry keys uniquely.
    appends: u64,
}

#[async_trait]
impl Client for Conn {
    async fn acquire(&mut self, session: &str) -> Result<Grant> {
        let name = format!("{}/locks/{session}", self.root);
        let options = LockOptions::new().with_lease(self.lease);
        let reply = self.client.lock(name, Some(options)).await?;
        // The revision of the Lock reply: etcd answers each holder of a lock name only after the
        // previous holder's key is deleted, so it grows strictly from holder to holder.
        let token = reply
            .header()
            .context("Lock reply without header")?
            .revision();
        Ok(Grant {
            session: session.to_owned(),
            token: Some(u64::try_from(token)?),
            id: String::from_utf8(reply.key().to_vec())?,
            ttl: self.ttl,
        })
    }

    async fn append(&mut self, grant: &Grant, lines: &[Vec<u8>], release: bool) -> Result<()> {
        self.appends += 1;
        let token = grant.token.unwrap_or_default();
        let mut ops: Vec<TxnOp> = lines
            .iter()
            .enumerate()
            .map(|(i, line)| {
                let key = format!(
                    "{}/entries/{}/{token:020}-{:010}-{i:04}",
                    self.root, grant.session, self.appends
                );
                TxnOp::put(key, line.clone(), None)
            })
            .collect();
        if release {
            ops.push(TxnOp::delete(grant.id.clone(), None));
        }
        let fenced = Txn::new()
            .when([Compare::lease(
                grant.id.clone(),
                CompareOp::Equal,
                self.lease,
            )])
            .and_then(ops);
        if !self.client.txn(fenced).await?.succeeded() {
            bail!(
                "fenced out: lock key {} is no longer held by lease {:x}",
                grant.id,
                self.lease
            );
        }
        Ok(())
    }

    async fn release(&mut self, grant: &Grant) -> Result<()> {
        self.client.unlock(grant.id.clone()).await?;
        Ok(())
    }

    async fn keepalive(&mut self) -> Result<Box<dyn KeepAlive>> {
        let (keeper, replies) = self.client.lease_keep_alive(self.lease).await?;
        Ok(Box::new(Keeper { keeper, replies }))
    }

    async fn watch_loss(&mut self, grant: &Grant) -> Result<LossWatch> {
        // lease_keep_alive sends one keepalive and waits for its reply.
        let (_keeper, _replies) = self.client.lease_keep_alive(self.lease).await?;
        let renewed_at = Instant::now();
        let from = i64::try_from(grant.token.unwrap_or_default())?;
        let options = WatchOptions::new().with_start_revision(from);
        let mut watch = self.client.watch(grant.id.clone(), Some(options)).await?;
        let (lost_tx, lost) = oneshot::channel();
        let give_up = grant.ttl + Duration::from_secs(60);
        tokio::spawn(async move {
            let waiting = async {
                while let Ok(Some(reply)) = watch.message().await {
                    if reply
                        .events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                    {
                        return Some(Instant::now());
                    }
                }
                None
            };
            if let Ok(Some(at)) = tokio::time::timeout(give_up, waiting).await {
                let _ = lost_tx.send(at);
            }
        });
        Ok(LossWatch { renewed_at, lost })
    }
}

/// The client's lease keepalive stream: one lease covers every lock the client holds.
struct Keeper {
    keeper: LeaseKeeper,
    replies: LeaseKeepAliveStream,
}

#[async_trait]
impl KeepAlive for Keeper {
    async fn renew(&mut self, grants: &[Grant]) -> Result<Vec<String>> {
        self.keeper.keep_alive().await?;
        let reply = self
            .replies
            .message()
            .await?
            .ok_or_else(|| anyhow!("lease keepalive stream ended"))?;
        Ok(if reply.ttl() > 0 {
            Vec::new()
        } else {
            grants.iter().map(|g| g.id.clone()).collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_share_their_directory() {
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(common_dir(&names(&["r/w5/001/a", "r/w5/002/b"])), "r/w5/");
        assert_eq!(common_dir(&names(&["r/w1/s01", "r/w1/s02"])), "r/w1/");
        assert_eq!(common_dir(&names(&["r/w3/s1"])), "r/w3/");
        assert_eq!(common_dir(&names(&["a", "b"])), "");
        assert_eq!(common_dir(&[]), "");
    }

    #[test]
    fn a_prefix_range_ends_after_its_last_byte() {
        assert_eq!(prefix_end("a/b/"), b"a/b0");
        assert_eq!(prefix_end(""), b"\0");
    }
}
