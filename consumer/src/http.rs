//! `/metrics` (Prometheus text format) and `/healthz` over HTTP.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio_util::sync::CancellationToken;

use crate::worker::Context;

/// Binds `address` and serves until `cancel` fires; returns the bound
/// address (port 0 picks one).
pub async fn serve(ctx: Arc<Context>, address: SocketAddr, cancel: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("metrics.address {address}: cannot listen: {e}"))?;
    let bound = listener.local_addr()?;
    let app = Router::new().route("/metrics", get(metrics)).route("/healthz", get(healthz)).with_state(ctx);
    tokio::spawn(async move {
        let served = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

async fn metrics(State(ctx): State<Arc<Context>>) -> String {
    // Ages and lag as of now, not as of the last call that returned.
    ctx.metrics.set_shard_gauges(&ctx.health.gauges());
    ctx.metrics.set_health_problems(ctx.health.problems().len());
    ctx.metrics.set_read_buffer_bytes(ctx.read_buffers.in_use());
    ctx.metrics.render()
}

/// 200 `ok`, or 503 with one line per stalled shard or failing dependency.
async fn healthz(State(ctx): State<Arc<Context>>) -> (StatusCode, String) {
    let problems = ctx.health.problems();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}
