//! The admin listener (`[admin] listen`): `/metrics` in the Prometheus (OpenMetrics) text
//! format, `/healthz` (the process answers) and `/readyz` (agents can be served: not while the
//! audit log cannot be written). Meant for a private network or loopback: it takes no
//! credentials and shows agent names and counts, never statements or data.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tracing::info;

use crate::metrics::metrics;
use crate::server::Shared;

/// Serves the admin endpoints until the listener fails.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    info!("admin endpoints on http://{}", listener.local_addr()?);
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(shared);
    axum::serve(listener, app).await
}

async fn metrics_text(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    if let Some(audit) = &shared.audit {
        metrics().audit_writable.set(i64::from(audit.healthy()));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics().encode(),
    )
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, &'static str) {
    match &shared.audit {
        Some(audit) if !audit.healthy() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the audit log cannot be written\n",
        ),
        _ => (StatusCode::OK, "ready\n"),
    }
}
