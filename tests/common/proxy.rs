//! A TCP proxy between an SDK client and the real server, for failure drills: drop the replies
//! in flight, cut every open connection, or point new connections at a restarted server.
//!
//! Included with `#[path = "common/proxy.rs"] mod proxy;` by the tests that need it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A running proxy on `127.0.0.1:<ephemeral>`; stops accepting and cuts everything on drop.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: JoinHandle<()>,
}

struct Shared {
    /// `host:port` new connections go to.
    upstream: Mutex<String>,
    /// While set, bytes from the server are read and thrown away.
    drop_replies: AtomicBool,
    /// Bumped by every cut; each connection ends when it changes.
    cuts: watch::Sender<u64>,
    accepted: AtomicUsize,
}

impl Proxy {
    /// Listens (bound before this returns) and forwards to the server at `endpoint`
    /// (`http://host:port`).
    pub async fn start(endpoint: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            upstream: Mutex::new(host_port(endpoint)),
            drop_replies: AtomicBool::new(false),
            cuts: watch::Sender::new(0),
            accepted: AtomicUsize::new(0),
        });
        let state = Arc::clone(&shared);
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                state.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(pipe(client, Arc::clone(&state)));
            }
        });
        Self {
            addr,
            shared,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT`, for `Client::connect`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends new connections to the server at `endpoint` (e.g. after a restart on a new port).
    pub fn set_upstream(&self, endpoint: &str) {
        *self.shared.upstream.lock().expect("upstream lock") = host_port(endpoint);
    }

    /// From now on, whatever the server sends is thrown away (requests still get through).
    pub fn drop_replies(&self) {
        self.shared.drop_replies.store(true, Ordering::SeqCst);
    }

    /// Closes every open connection and forwards normally again.
    pub fn cut(&self) {
        // Cut first: a connection from before the cut never forwards another byte, even if the
        // reply it was dropping arrives between these two lines.
        self.shared.cuts.send_modify(|cuts| *cuts += 1);
        self.shared.drop_replies.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

fn host_port(endpoint: &str) -> String {
    endpoint
        .strip_prefix("http://")
        .unwrap_or(endpoint)
        .trim_end_matches('/')
        .to_owned()
}

/// Forwards one connection both ways until either side closes or the proxy cuts it.
async fn pipe(client: TcpStream, shared: Arc<Shared>) {
    let mut cuts = shared.cuts.subscribe();
    let born = *cuts.borrow();
    let upstream = shared.upstream.lock().expect("upstream lock").clone();
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if server_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    let down = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if shared.drop_replies.load(Ordering::SeqCst) || *shared.cuts.borrow() != born {
                        continue;
                    }
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            }
        }
    };
    tokio::select! {
        () = up => {}
        () = down => {}
        _ = cuts.changed() => {}
    }
}
