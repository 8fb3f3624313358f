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
//! - `record`: the audit record of each request.

mod auth;
mod ops;
mod policy;
mod record;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use connectors::vector::{Request, VectorBackend, VectorError};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tracing::info;

use crate::server::Shared;

pub use routes::router;

/// `[vector]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorConfig {
    /// Where Qdrant clients connect (HTTP).
    pub listen: SocketAddr,
    /// The embedded store's directory (one subdirectory per collection).
    pub store: Option<PathBuf>,
    /// The Qdrant version `GET /` reports (clients warn when it is far from theirs).
    #[serde(default = "default_version")]
    pub qdrant_version: String,
    /// Largest request body accepted, in bytes.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

fn default_version() -> String {
    // The Qdrant release the embedded engine (qdrant-edge 0.7.2) was cut from.
    "1.18.2".into()
}

fn default_max_body_bytes() -> usize {
    32 << 20
}

/// Where rewritten requests go.
pub enum Backend {
    Embedded(Arc<connectors::vector::embedded::Embedded>),
}

impl Backend {
    pub async fn call(&self, request: Request) -> Result<Value, VectorError> {
        match self {
            Backend::Embedded(store) => store.call(request).await,
        }
    }
}

/// The shim's state.
pub struct Shim {
    pub shared: Arc<Shared>,
    pub backend: Backend,
    pub config: VectorConfig,
    /// The key of `@mask("hash")` (the same as SQL's, so equal values hash alike).
    pub hash_key: Vec<u8>,
    policies: Arc<policy::PolicyCache>,
    keys: auth::KeyCache,
}

impl Shim {
    /// Opens the backend named by `config`. Blocking (the embedded store loads its shards).
    pub fn open(
        config: VectorConfig,
        shared: Arc<Shared>,
        hash_key: Vec<u8>,
    ) -> anyhow::Result<Shim> {
        anyhow::ensure!(
            shared.policies.is_some(),
            "[vector] needs [policies]: the shim always enforces policy"
        );
        let backend = match &config.store {
            Some(dir) => Backend::Embedded(Arc::new(
                connectors::vector::embedded::Embedded::open(dir)
                    .map_err(|e| anyhow::anyhow!("vector.store {}: {e}", dir.display()))?,
            )),
            None => anyhow::bail!("[vector] needs `store` (the embedded store's directory)"),
        };
        Ok(Shim {
            shared,
            backend,
            config,
            hash_key,
            policies: Arc::new(policy::PolicyCache::new(4096)),
            keys: auth::KeyCache::new(1024),
        })
    }
}

/// Serves the shim until the listener fails.
pub async fn serve(listener: TcpListener, shim: Arc<Shim>) -> std::io::Result<()> {
    info!("Qdrant API for agents on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        router(shim).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}
