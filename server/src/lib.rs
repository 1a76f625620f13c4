//! fencepost-server: serves the `fencepost.v1` API, gRPC health and reflection over a [`Core`].

pub mod config;
pub mod convert;
pub mod metrics;
pub mod service;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use fencepost as proto;
use fencepost_core::Core;
use proto::v1::fencepost_server::FencepostServer;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

pub use service::Service;

/// Where the server accepts connections.
pub enum Listener {
    /// A bound TCP listener.
    Tcp(tokio::net::TcpListener),
    /// A bound Unix socket listener and its path (removed when serving ends).
    Unix(tokio::net::UnixListener, PathBuf),
}

/// Errors serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The TLS certificate, key or client CA was refused.
    #[error("TLS settings (--tls-cert, --tls-key, --tls-client-ca): {0}")]
    Tls(tonic::transport::Error),
    /// Reflection could not be built from the descriptor set.
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// How connections are secured, kept and closed.
#[derive(Debug, Clone)]
pub struct ConnOpts {
    /// TLS for TCP connections (with client certificates when it names a client CA).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// How long a shutdown waits for in-flight calls and open connections.
    pub drain_timeout: Duration,
    /// How often each connection is pinged (HTTP/2 PING).
    pub ping_interval: Duration,
    /// How long a ping may go unanswered before the connection is closed.
    pub ping_timeout: Duration,
}

/// Serves `core` on `listener` until `shutdown` resolves, then drains: new Acquires are refused,
/// long-lived streams end, in-flight calls finish, and the store is made durable.
///
/// Every connection is pinged, so a client that vanished without closing its connection (host
/// down, network cut) is noticed: its connection closes, and its queued acquires leave the queue.
///
/// # Errors
/// A transport failure.
pub async fn serve(
    listener: Listener,
    core: Core,
    opts: ConnOpts,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let drain_timeout = opts.drain_timeout;
    let limits = core.limits().clone();
    let streams_done = CancellationToken::new();
    let api = FencepostServer::new(Service::new(core.clone(), streams_done.clone()))
        .max_decoding_message_size(
            // The largest batch with its framing, or a KeepAlive message naming the most leases
            // (ids of up to 64 bytes), whichever is larger.
            (limits.max_batch_bytes + limits.max_batch_entries * 16)
                .max(proto::MAX_KEEPALIVE_IDS * 66)
                + 64 * 1024,
        );
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<FencepostServer<Service>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let store_watch = tokio::spawn(watch_store(core.clone(), health_reporter.clone()));

    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let stopping = {
        let core = core.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: refusing new leases, draining in-flight calls");
            core.stop();
            let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
            not_serving(&health_reporter).await;
            streams_done.cancel();
            let _ = stopped_tx.send(());
        }
    };
    // Clients that never close their idle connections must not hold the server up forever.
    let drain_deadline = async move {
        if stopped_rx.await.is_ok() {
            tokio::time::sleep(drain_timeout).await;
            tracing::warn!(
                ?drain_timeout,
                "drain timed out; closing remaining connections"
            );
        } else {
            std::future::pending::<()>().await;
        }
    };
    let mut builder = Server::builder();
    if let Some(tls) = opts.tls {
        builder = builder.tls_config(tls).map_err(ServeError::Tls)?;
    }
    let router = builder
        .http2_keepalive_interval(Some(opts.ping_interval))
        .http2_keepalive_timeout(Some(opts.ping_timeout))
        .add_service(health)
        .add_service(reflection)
        .add_service(api);
    let result = match listener {
        Listener::Tcp(l) => {
            let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
            tokio::select! {
                r = router.serve_with_incoming_shutdown(incoming, stopping) => r,
                () = drain_deadline => Ok(()),
            }
        }
        Listener::Unix(l, path) => {
            let result = tokio::select! {
                r = router.serve_with_incoming_shutdown(UnixListenerStream::new(l), stopping) => r,
                () = drain_deadline => Ok(()),
            };
            let _ = std::fs::remove_file(path);
            result
        }
    };
    store_watch.abort();
    core.shutdown().await;
    tracing::info!("stopped");
    Ok(result?)
}

/// How often the store is looked at (and, under a systemd watchdog, at least twice per period).
const STORE_CHECK: Duration = Duration::from_secs(1);

/// Marks the API, and the server as a whole (the empty service name that probes ask by
/// default), NOT_SERVING.
async fn not_serving(health: &tonic_health::server::HealthReporter) {
    health.set_not_serving::<FencepostServer<Service>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// Watches whether the store still accepts writes. While it does, pets systemd's watchdog (when
/// the unit sets `WatchdogSec=`). Once it stops (a failed write, fsync or checkpoint), turns
/// health NOT_SERVING and triggers the watchdog, so that a probe (`fencepostctl health`,
/// Kubernetes) or systemd restarts the server, whose start recovers from the write-ahead log.
/// Reads keep working meanwhile.
async fn watch_store(core: Core, health: tonic_health::server::HealthReporter) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map_or(STORE_CHECK, |limit| STORE_CHECK.min(limit / 2));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let Some(detail) = core.store_failure() else {
            if watchdog.is_some() {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            continue;
        };
        tracing::error!(
            %detail,
            "the store stopped accepting writes; health reports NOT_SERVING until a restart recovers it"
        );
        not_serving(&health).await;
        let status = format!("the store stopped accepting writes: {detail}");
        let mut states = vec![sd_notify::NotifyState::Status(&status)];
        if watchdog.is_some() {
            states.push(sd_notify::NotifyState::WatchdogTrigger);
        }
        let _ = sd_notify::notify(&states);
        return;
    }
}
