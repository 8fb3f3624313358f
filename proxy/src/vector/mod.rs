//! The vector shim (`[vector] listen`): Qdrant's REST API for RAG pipelines, under the same
//! Cedar policies and audit log as SQL. A client points its Qdrant URL here and authenticates
//! as an agent; each request is parsed, restricted to what the agent's policy allows (the
//! `search` filter ANDed into every filter and prefetch, points named by id turned into
//! filters, writes checked against the `upsert` and `delete` policies), forwarded to the
//! backend as freshly serialized JSON, and its answer projected to the payload fields the
//! agent may read. What the shim does not understand is refused, never forwarded.
//!
//! - `auth`: who is asking (an `api-key` of `agent:secret`, or an agent's JWT);
//! - `routes`: the endpoints, Qdrant's reply envelope, and 403 for every other path;
//! - `policy`: what one agent may do with one collection, derived once per policy version;
//! - `ops`: each operation's restriction, backend call and projection;
//! - `record`: the audit record of each request;
//! - `replay`: deciding a recorded request's basis again (`audit replay`).

mod auth;
mod ops;
mod policy;
mod record;
pub mod replay;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use connectors::vector::{Request, VectorBackend, VectorError};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::info;

use crate::server::{Shared, Shutdown};

pub use routes::router;

/// `[vector]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorConfig {
    /// Where Qdrant clients connect (HTTP).
    pub listen: SocketAddr,
    /// The embedded store's directory (one subdirectory per collection).
    pub store: Option<PathBuf>,
    /// Instead of the embedded store: a Qdrant server's or cluster's REST URL.
    pub remote: Option<String>,
    /// An environment variable holding the remote Qdrant's API key.
    pub remote_api_key_env: Option<String>,
    /// CA certificates (PEM) for an `https` remote; the system bundle by default.
    pub remote_ca_file: Option<PathBuf>,
    /// The Qdrant version `GET /` reports (clients warn when it is far from theirs); by
    /// default the engine's, or the remote's.
    pub qdrant_version: Option<String>,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// TLS toward clients (certificate and key, PEM); when set, the listener serves HTTPS only.
    pub tls: Option<crate::config::TlsConfig>,
}

/// The Qdrant release the embedded engine (qdrant-edge 0.7.2) was cut from.
const EMBEDDED_VERSION: &str = "1.18.2";

fn default_max_body_bytes() -> usize {
    32 << 20
}

/// Where rewritten requests go.
pub enum Backend {
    Embedded(Arc<connectors::vector::embedded::Embedded>),
    Remote(connectors::vector::remote::Remote),
}

impl Backend {
    pub async fn call(&self, request: Request) -> Result<Value, VectorError> {
        match self {
            Backend::Embedded(store) => store.call(request).await,
            Backend::Remote(remote) => remote.call(request).await,
        }
    }
}

/// The shim's state.
pub struct Shim {
    pub shared: Arc<Shared>,
    pub backend: Backend,
    pub config: VectorConfig,
    /// What `GET /` reports.
    pub version: String,
    /// The key of `@mask("hash")` (the same as SQL's, so equal values hash alike).
    pub hash_key: Vec<u8>,
    /// `vector.tls`, ready to accept.
    tls: Option<tokio_rustls::TlsAcceptor>,
    policies: Arc<policy::PolicyCache>,
    keys: auth::KeyCache,
}

impl Shim {
    /// Opens the backend named by `config` (the embedded store loads its shards; a remote
    /// Qdrant is asked its version).
    pub async fn open(
        config: VectorConfig,
        shared: Arc<Shared>,
        hash_key: Vec<u8>,
    ) -> anyhow::Result<Shim> {
        anyhow::ensure!(
            shared.policies.is_some(),
            "[vector] needs [policies]: the shim always enforces policy"
        );
        let (backend, version) = match (&config.store, &config.remote) {
            (Some(dir), None) => {
                let dir = dir.clone();
                let store = tokio::task::spawn_blocking(move || {
                    connectors::vector::embedded::Embedded::open(&dir)
                        .map_err(|e| anyhow::anyhow!("vector.store {}: {e}", dir.display()))
                })
                .await??;
                (
                    Backend::Embedded(Arc::new(store)),
                    EMBEDDED_VERSION.to_string(),
                )
            }
            (None, Some(url)) => {
                let key = match &config.remote_api_key_env {
                    Some(var) => Some(std::env::var(var).map_err(|_| {
                        anyhow::anyhow!("vector.remote_api_key_env: {var} is not set")
                    })?),
                    None => None,
                };
                let remote = connectors::vector::remote::Remote::new(
                    url,
                    key,
                    config.remote_ca_file.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!("vector.remote: {e}"))?;
                let version = match remote.version().await {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!("vector.remote: cannot read its version yet: {e}");
                        EMBEDDED_VERSION.to_string()
                    }
                };
                (Backend::Remote(remote), version)
            }
            _ => anyhow::bail!("[vector] needs exactly one of `store` and `remote`"),
        };
        let tls = config
            .tls
            .as_ref()
            .map(crate::tls::acceptor)
            .transpose()
            .map_err(|e| anyhow::anyhow!("vector.tls: {e}"))?;
        if tls.is_none() && !config.listen.ip().is_loopback() {
            tracing::warn!(
                "vector.listen {} is not loopback and [vector.tls] is not set: agents' API keys cross the network in clear",
                config.listen
            );
        }
        Ok(Shim {
            shared,
            backend,
            tls,
            version: config.qdrant_version.clone().unwrap_or(version),
            config,
            hash_key,
            policies: Arc::new(policy::PolicyCache::new(4096)),
            keys: auth::KeyCache::new(1024),
        })
    }
}

/// Marks a request that came over TLS.
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

/// Serves the shim (plain HTTP, or HTTPS only with `vector.tls`) until shutdown. Once the
/// proxy drains (see [`crate::server::drain`]) it accepts no new connection, lets each request
/// in flight finish (and its audit record be written before the log's last checkpoint), and
/// closes idle keep-alive connections. It holds a shutdown receiver until then, so the drain
/// waits for it; when the drain times out it stops waiting.
pub async fn serve(listener: TcpListener, shim: Arc<Shim>) -> std::io::Result<()> {
    let held = shim.shared.shutdown.subscribe();
    let result = tokio::select! {
        r = serve_until_drained(listener, shim, held.clone()) => r,
        _ = reached(held.clone(), Shutdown::Now) => Ok(()),
    };
    drop(held);
    result
}

/// Resolves once shutdown has reached `at` (draining, or now).
async fn reached(mut shutdown: watch::Receiver<Shutdown>, at: Shutdown) {
    let _ = shutdown.wait_for(|s| *s == at || *s == Shutdown::Now).await;
}

async fn serve_until_drained(
    listener: TcpListener,
    shim: Arc<Shim>,
    shutdown: watch::Receiver<Shutdown>,
) -> std::io::Result<()> {
    let scheme = if shim.tls.is_some() { "https" } else { "http" };
    info!(
        "Qdrant API for agents on {scheme}://{}",
        listener.local_addr()?
    );
    let app = router(shim.clone());
    let Some(acceptor) = shim.tls.clone() else {
        return axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(reached(shutdown, Shutdown::Draining))
        .await;
    };
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = reached(shutdown.clone(), Shutdown::Draining) => return Ok(()),
        };
        let (tcp, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        // Each connection holds a receiver until it ends, so the drain waits for it.
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let handshake =
                tokio::time::timeout(std::time::Duration::from_secs(30), acceptor.accept(tcp));
            let Ok(Ok(stream)) = handshake.await else {
                return;
            };
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let mut request = request.map(axum::body::Body::new);
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    request.extensions_mut().insert(OverTls);
                    tower::ServiceExt::oneshot(app.clone(), request)
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = reached(shutdown.clone(), Shutdown::Draining) => {
                    // The request in flight is answered; an idle connection closes now.
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(shutdown);
        });
    }
}
