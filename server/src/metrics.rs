//! The `/metrics` endpoint (`--metrics-listen`): the core's metrics and the calls refused by
//! reason, in the OpenMetrics text format that Prometheus scrapes.

use std::sync::{Arc, LazyLock};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fencepost_core::Core;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

/// Calls answered with an error, by its reason. Process-wide: errors become statuses in one
/// function ([`crate::convert::status`]), which has no server at hand.
static REFUSED: LazyLock<Family<[(&'static str, &'static str); 1], Counter>> =
    LazyLock::new(Family::default);

/// Counts a call answered with the error `reason` (`STALE_TOKEN`, ...).
pub fn refused(reason: &'static str) {
    REFUSED.get_or_create(&[("reason", reason)]).inc();
}

/// Every metric of a server running `core`, named `fencepost_*`.
#[must_use]
pub fn registry(core: &Core) -> Registry {
    let mut registry = Registry::with_prefix("fencepost");
    core.register_metrics(&mut registry);
    registry.register(
        "refused_calls",
        "Calls answered with an error, by the reason clients get (ErrorInfo)",
        REFUSED.clone(),
    );
    registry
}

/// Serves `GET /metrics` on `listener` until the process ends.
///
/// # Errors
/// The listener failed.
pub async fn serve(listener: tokio::net::TcpListener, registry: Registry) -> std::io::Result<()> {
    let registry = Arc::new(registry);
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let registry = Arc::clone(&registry);
            async move { render(&registry) }
        }),
    );
    axum::serve(listener, app).await
}

fn render(registry: &Registry) -> Response {
    let mut body = String::new();
    match encode(&mut body, registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
