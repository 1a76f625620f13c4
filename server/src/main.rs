//! The `fencepost` server binary: reads config, starts tracing, opens the store, binds, serves.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use fencepost_core::Core;
use fencepost_core::store::embedded::{EmbeddedStore, Fsync};
use fencepost_server::config::{Config, ListenAddr, LogFormat};
use fencepost_server::{ConnOpts, Listener, serve};
use tokio::signal::unix::{SignalKind, signal};

// Every request allocates (frames, messages, records); glibc's malloc spent ~9% of the server's
// CPU in W3 (16 clients) on arena bookkeeping (consolidation, unlinking free chunks).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = Config::parse();
    // Test builds only: FAILPOINTS=name=action configures the store's failpoints.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    init_tracing(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => fail(&msg),
    }
}

fn fail(msg: &str) -> ExitCode {
    tracing::error!("{msg}");
    eprintln!("fencepost: {msg}");
    ExitCode::FAILURE
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(config: Config) -> Result<(), String> {
    let limits = config.limits()?;
    let addr = config.listen_addr()?;
    let tls = config.tls()?;
    // Refuse busy addresses before opening (and so creating) the data dir; metrics first, so that
    // a refusal there leaves no socket behind.
    let metrics = match &config.metrics_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot serve metrics on {a}: {e}"))?,
        ),
        None => None,
    };
    let (listener, shown) = bind(&addr).await?;
    let (data_dir, fsync) = (config.data_dir.clone(), config.fsync.into());
    let store = tokio::task::spawn_blocking(move || EmbeddedStore::open_with(&data_dir, fsync))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            if let ListenAddr::Unix(path) = &addr {
                let _ = std::fs::remove_file(path);
            }
            format!("cannot open data dir {}: {e}", config.data_dir.display())
        })?;
    let report = store.replay_report();
    tracing::info!(
        data_dir = %store.root().display(),
        replayed_records = report.records,
        replayed_resources = report.resources,
        wal_generation = report.generation,
        held_back = report.held_back.len(),
        "store open"
    );
    if fsync == Fsync::Never {
        tracing::warn!(
            "--fsync never: appends are acknowledged before they are on stable storage; a power \
             loss or kernel crash can lose acknowledged entries"
        );
    }
    let core = Core::new(Arc::new(store), limits);
    let mut ready = serde_json::json!({"event": "listening", "addr": shown, "tls": tls.is_some()});
    if let Some(listener) = metrics {
        let at = listener
            .local_addr()
            .map_err(|e| e.to_string())?
            .to_string();
        tracing::info!(addr = %at, "serving metrics at /metrics");
        ready["metrics"] = at.into();
        let registry = fencepost_server::metrics::registry(&core);
        tokio::spawn(async move {
            if let Err(e) = fencepost_server::metrics::serve(listener, registry).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
    }
    // The readiness signal: one JSON line on stdout once the sockets are bound (and READY=1 to
    // systemd under Type=notify).
    println!("{ready}");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(addr = %shown, "listening");
    let opts = ConnOpts {
        tls,
        drain_timeout: config.drain_timeout,
        ping_interval: config.ping_interval,
        ping_timeout: config.ping_timeout,
    };
    serve(listener, core, opts, shutdown_signal())
        .await
        .map_err(|e| e.to_string())
}

async fn bind(addr: &ListenAddr) -> Result<(Listener, String), String> {
    match addr {
        ListenAddr::Tcp(a) => {
            let l = tokio::net::TcpListener::bind(a)
                .await
                .map_err(|e| format!("cannot listen on {a}: {e}"))?;
            let local = l.local_addr().map_err(|e| e.to_string())?;
            Ok((Listener::Tcp(l), local.to_string()))
        }
        ListenAddr::Unix(path) => {
            match std::fs::symlink_metadata(path) {
                Ok(meta) if meta.file_type().is_socket() => {
                    if std::os::unix::net::UnixStream::connect(path).is_ok() {
                        return Err(format!("{} is in use by a running server", path.display()));
                    }
                    // A socket left behind by a crashed server.
                    std::fs::remove_file(path)
                        .map_err(|e| format!("cannot remove stale {}: {e}", path.display()))?;
                }
                // Only a socket is ever replaced: anything else there may be someone's data.
                Ok(_) => {
                    return Err(format!(
                        "{} exists and is not a socket; choose another --listen path or move it",
                        path.display()
                    ));
                }
                Err(_) => {}
            }
            let l = tokio::net::UnixListener::bind(path)
                .map_err(|e| format!("cannot listen on unix:{}: {e}", path.display()))?;
            // Read-write for the owner and the group (connecting takes write permission), whatever
            // the umask: agents in the server's group connect, others do not.
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
                .map_err(|e| format!("cannot set the mode of {}: {e}", path.display()))?;
            Ok((
                Listener::Unix(l, path.clone()),
                format!("unix:{}", path.display()),
            ))
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_signal() {
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => {}
        _ = term.recv() => {}
    }
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        eprintln!("fencepost: second signal, exiting now");
        std::process::exit(130);
    });
}
