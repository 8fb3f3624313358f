//! `portcullis demo`: a throwaway PostgreSQL loaded with `fixtures/`, a non-superuser upstream
//! login, and Portcullis in front of it with demo agents, enforcing the finance example policy
//! set; prints the URL an agent uses.

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

pub async fn run(listen: SocketAddr, fixtures: PathBuf, policies: PathBuf) -> anyhow::Result<()> {
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
        },
        tls: None,
        require_tls: false,
        audit: None,
        admin: None,
        vector: None,
        max_message_bytes: 64 << 20,
        max_query_bytes: 1 << 20,
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
    let snapshot = connectors::postgres::catalog::snapshot(&resolved.upstream.tokio_config())
        .await
        .context("reading the demo database's catalog")?;
    let mut shared = crate::server::Shared::new(resolved)?;
    let enforcer = Arc::new(crate::enforce::Enforcer::new(snapshot, state.clone()));
    // The demo's @mask("hash") key lives as long as its throwaway database.
    shared.enforce(state, enforcer, &crate::mask_key::random());
    let shared = Arc::new(shared);
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
    println!("Press Ctrl-C to stop; the throwaway database is deleted on exit.");
    tokio::select! {
        r = crate::server::serve(listener, shared) => r?,
        _ = crate::shutdown_signal() => {}
    }
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}

/// Starts a cluster and loads the fixtures into it.
fn setup_cluster(dir: &std::path::Path, upstream_password: &str) -> anyhow::Result<LocalCluster> {
    let cluster = LocalCluster::start().context("starting a throwaway PostgreSQL")?;
    fixtures::load(&cluster, dir, upstream_password).context("loading the fixtures")?;
    Ok(cluster)
}
