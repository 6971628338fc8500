//! `/metrics` (Prometheus text format) and `/healthz` over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::kinesis::get_records::ReadBuffers;
use crate::ops::health::Health;
use crate::ops::metrics::Metrics;

/// What the endpoints read.
#[derive(Clone)]
pub struct Watched {
    /// `/healthz` and the time-based gauges.
    pub health: Arc<Health>,
    /// The registry `/metrics` renders.
    pub metrics: Arc<Metrics>,
    /// The read buffers, for their gauge.
    pub read_buffers: ReadBuffers,
}

/// Binds `address` and serves until `cancel` fires; returns the bound
/// address (port 0 picks one).
pub async fn serve(
    watched: Arc<Watched>,
    address: SocketAddr,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.address {address}: cannot listen: {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(watched);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(watched): State<Arc<Watched>>) -> String {
    // Ages and lag as of now, not as of the last call that returned.
    watched.metrics.set_shard_gauges(&watched.health.gauges());
    watched.metrics.set_health_problems(watched.health.problems().len());
    watched.metrics.set_read_buffer_bytes(watched.read_buffers.in_use());
    watched.metrics.render()
}

/// 200 `ok`, or 503 with one line per stalled shard or failing dependency.
async fn healthz(State(watched): State<Arc<Watched>>) -> (StatusCode, String) {
    let problems = watched.health.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}
