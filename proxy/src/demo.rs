//! `portcullis demo`: a throwaway PostgreSQL loaded with `fixtures/`, a non-superuser upstream
//! login, and Portcullis in front of it with demo agents, enforcing the finance example policy
//! set; and the Qdrant API over a throwaway embedded store holding the knowledge base of
//! `fixtures/knowledge_base.json`. Prints how an agent connects to each.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use connectors::postgres::fixtures::{self, DEMO_DB, UPSTREAM_USER};
use connectors::postgres::{random_token, LocalCluster, UpstreamConfig};

use crate::config::Resolved;
use crate::identity::Credential;
use crate::limits::Limits;
use crate::pg::scram::Verifier;

/// Demo agents and their secrets (demo only: real deployments keep verifiers in the config).
const AGENTS: &[(&str, &str)] = &[
    ("support-bot", "support-secret"),
    ("auditor", "auditor-secret"),
];

pub async fn run(
    listen: SocketAddr,
    fixtures: PathBuf,
    policies: PathBuf,
    vector_listen: SocketAddr,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        fixtures.join("schema.sql").is_file(),
        "fixtures not found in {} (run from the repository root or pass --fixtures)",
        fixtures.display()
    );
    let upstream_password = random_token();
    let cluster = {
        let fixtures = fixtures.clone();
        let pw = upstream_password.clone();
        tokio::task::spawn_blocking(move || setup_cluster(&fixtures, &pw)).await??
    };
    let resolved = Resolved {
        listen,
        upstream: UpstreamConfig {
            host: "127.0.0.1".into(),
            port: cluster.port(),
            user: UPSTREAM_USER.into(),
            password: Some(upstream_password),
            dbname: DEMO_DB.into(),
            // The throwaway cluster listens on 127.0.0.1 without TLS.
            tls: connectors::postgres::tls::UpstreamTls {
                mode: connectors::postgres::tls::SslMode::Disable,
                ..Default::default()
            },
        },
        tls: None,
        require_tls: false,
        audit: None,
        admin: None,
        vector: None,
        max_message_bytes: 64 << 20,
        max_query_bytes: 1 << 20,
        // Ctrl-C ends the demo at once: it deletes its throwaway database.
        drain_timeout: std::time::Duration::ZERO,
        max_connections: 0,
        strict: false,
        agent_max_connections: Default::default(),
        agents: AGENTS
            .iter()
            .map(|(id, secret)| {
                (
                    id.to_string(),
                    Credential::Secret(Verifier::from_secret(secret)),
                )
            })
            .collect(),
        limits: AGENTS
            .iter()
            .map(|(id, _)| (id.to_string(), Limits::from_ms(300_000, 300_000)))
            .collect(),
        policies: None,
        tokens: None,
        tokens_without_tls: false,
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let state = {
        let dir = policies.clone();
        tokio::task::spawn_blocking(move || crate::policy_state::PolicyState::load(dir, None))
            .await?
            .with_context(|| format!("loading the policy set {}", policies.display()))?
    };
    let state = Arc::new(state);
    let snapshot = connectors::postgres::catalog::snapshot(&resolved.upstream)
        .await
        .context("reading the demo database's catalog")?;
    let mut shared = crate::server::Shared::new(resolved)?;
    let enforcer = Arc::new(crate::enforce::Enforcer::new(snapshot, state.clone()));
    // The demo's @mask("hash") key lives as long as its throwaway database.
    let hash_key = crate::mask_key::random();
    shared.enforce(state, enforcer, &hash_key);
    let shared = Arc::new(shared);

    let store = tempfile::tempdir().context("a directory for the vector store")?;
    {
        let dir = store.path().to_path_buf();
        let kb = fixtures.join("knowledge_base.json");
        tokio::task::spawn_blocking(move || seed_vectors(&dir, &kb)).await??;
    }
    let vector_listener = tokio::net::TcpListener::bind(vector_listen)
        .await
        .with_context(|| format!("cannot listen on {vector_listen}"))?;
    let shim = crate::vector::Shim::open(
        crate::vector::VectorConfig {
            listen: vector_listen,
            store: Some(store.path().to_path_buf()),
            remote: None,
            remote_api_key_env: None,
            remote_ca_file: None,
            qdrant_version: None,
            max_body_bytes: 32 << 20,
            tls: None,
        },
        shared.clone(),
        hash_key,
    )
    .await?;
    println!(
        "Portcullis demo is running. PostgreSQL (throwaway) is on port {}.",
        cluster.port()
    );
    println!("Connect as an agent:");
    for (id, secret) in AGENTS {
        println!("  psql 'postgres://{id}:{secret}@{listen}/{DEMO_DB}'");
    }
    println!(
        "Policy: {} (support-bot sees tenant 1 with SSNs redacted and IBANs cut to the last \
         four; the auditor sees every tenant with emails hashed).",
        policies.display()
    );
    println!("Try: select * from customers;  select id, amount, iban, metadata from transfers;");
    println!();
    println!("RAG pipelines: the Qdrant API is on http://{vector_listen} (collection kb).");
    println!("  from qdrant_client import QdrantClient");
    println!(
        "  c = QdrantClient(url='http://{vector_listen}', api_key='support-bot:support-secret')"
    );
    println!("  c.query_points('kb', query=[1, 0, 0, 0.3, 0, 0, 0, 0], with_payload=True)");
    println!(
        "support-bot finds tenant 1's articles up to its clearance, without internal notes; \
         api_key='auditor:auditor-secret' finds them all."
    );
    println!("Press Ctrl-C to stop; the throwaway database and store are deleted on exit.");
    tokio::select! {
        r = crate::server::serve(listener, shared) => r?,
        r = crate::vector::serve(vector_listener, Arc::new(shim)) => r?,
        _ = crate::shutdown_signal() => {}
    }
    tokio::task::spawn_blocking(move || {
        drop(cluster);
        drop(store);
    })
    .await?;
    Ok(())
}

/// Creates the demo's collection in the embedded store at `dir` from `file` (the operator's
/// load: policy applies to agents, not to the demo's own data).
fn seed_vectors(dir: &std::path::Path, file: &std::path::Path) -> anyhow::Result<()> {
    use connectors::vector::{embedded::Embedded, Request};
    let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
    let kb: serde_json::Value = serde_json::from_str(&text)?;
    let collection = kb["collection"]
        .as_str()
        .context("no collection")?
        .to_string();
    let store = Embedded::open(dir).map_err(anyhow::Error::msg)?;
    store
        .call_blocking(Request::CreateCollection {
            collection: collection.clone(),
            body: serde_json::json!({ "vectors": kb["vectors"] }),
        })
        .map_err(anyhow::Error::msg)?;
    store
        .call_blocking(Request::Upsert {
            collection,
            body: serde_json::json!({ "points": kb["points"] }),
        })
        .map_err(anyhow::Error::msg)?;
    Ok(())
}

/// Starts a cluster and loads the fixtures into it.
fn setup_cluster(dir: &std::path::Path, upstream_password: &str) -> anyhow::Result<LocalCluster> {
    let cluster = LocalCluster::start().context("starting a throwaway PostgreSQL")?;
    fixtures::load(&cluster, dir, upstream_password).context("loading the fixtures")?;
    Ok(cluster)
}
