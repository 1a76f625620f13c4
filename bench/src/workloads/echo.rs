//! The machine's limit beside W3: a bare gRPC unary round trip on the same transport, measured as
//! `grpc.health.v1.Health/Check` against the fencepost server (no lease, no disk), one connection
//! per client. Printed as system `grpc-echo`.

use std::time::Instant;

use anyhow::{Result, anyhow};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::{Ctx, MAX_OPS_PER_CLIENT, Tally, bounded, join_all};
use crate::report::Line;
use crate::systems::fencepost::connect_channel;

/// Runs the unary baseline with `clients` connections for `--duration`.
///
/// # Errors
/// A client cannot connect.
pub async fn run(ctx: &Ctx, endpoint: &str, clients: usize) -> Result<Line> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(HealthClient::new(connect_channel(endpoint).await?));
    }
    let start = Instant::now();
    let deadline = start + ctx.opts.duration;
    let tasks = conns
        .into_iter()
        .map(|conn| tokio::spawn(checks(conn, deadline)))
        .collect();
    let mut total = Tally::default();
    for result in join_all(tasks).await {
        match result {
            Ok(tally) => total.merge(tally),
            Err(e) => total.error(&e),
        }
    }
    let elapsed = start.elapsed();
    let mut line = Line::new(
        "W3",
        "grpc-echo",
        ctx.sys.transport(),
        (clients, 0),
        total.ops,
        elapsed,
        &total.latency,
    )
    .with("rpc", "grpc.health.v1.Health/Check");
    // Nothing is written, so there is nothing to check.
    line.safety = "n/a".to_owned();
    Ok(total.annotate(line))
}

async fn checks(mut conn: HealthClient<Channel>, deadline: Instant) -> Tally {
    let mut tally = Tally::default();
    while Instant::now() < deadline && tally.ops < MAX_OPS_PER_CLIENT {
        let t0 = Instant::now();
        let call = async {
            conn.check(HealthCheckRequest::default())
                .await
                .map_err(|s| anyhow!("health check: {s}"))
        };
        match bounded("health check", call).await {
            Ok(_) => {
                tally.latency.record(t0.elapsed());
                tally.ops += 1;
            }
            Err(e) => {
                tally.error(&e);
                break;
            }
        }
    }
    tally
}
