//! `portcullis`: the command line. Parses arguments, loads configuration, and runs the chosen
//! subcommand; `anyhow` errors stop here with a readable message.

mod admin;
mod audit_cli;
mod audit_export;
mod audit_log;
mod audit_record;
mod audit_replay;
mod config;
mod demo;
mod enforce;
mod explain;
mod identity;
mod limits;
mod mask_key;
mod metrics;
mod pg;
mod policy_state;
mod server;
mod tls;
mod vector;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Portcullis: a data-layer authorization gate for AI agents, speaking the PostgreSQL protocol.
#[derive(Parser)]
#[command(name = "portcullis", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// Parsed once per run: the size of the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a configuration file
    Serve {
        /// Path to the TOML configuration (see portcullis.example.toml)
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a throwaway PostgreSQL with the demo fixtures plus Portcullis in front of it
    Demo {
        /// Address for agents to connect to
        #[arg(long, default_value = "127.0.0.1:6432")]
        listen: std::net::SocketAddr,
        /// Directory holding schema.sql, data.sql and roles.sql
        #[arg(long, default_value = "fixtures")]
        fixtures: PathBuf,
        /// The Cedar policy set the demo enforces
        #[arg(long, default_value = "policies/examples/finance")]
        policies: PathBuf,
        /// Address of the Qdrant API (RAG pipelines), serving the knowledge base of
        /// `fixtures/knowledge_base.json`
        #[arg(long, default_value = "127.0.0.1:6333")]
        vector_listen: std::net::SocketAddr,
    },
    /// Check a configuration file and exit (non-zero, naming the key, when it is invalid)
    CheckConfig {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Show what Portcullis would do with a statement for an agent, without running it: the
    /// decision, the determining policies, the filters and masks, and the rewritten SQL
    Explain {
        /// The configuration whose upstream (catalog) and [policies] to use
        #[arg(long, short)]
        config: PathBuf,
        /// The agent id
        #[arg(long)]
        agent: String,
        /// The human the agent acts for (a User id)
        #[arg(long)]
        on_behalf_of: Option<String>,
        /// The SQL, as the agent would send it (simple protocol)
        sql: String,
    },
    /// Read a secret from standard input and print its SCRAM-SHA-256 verifier for the config
    HashSecret,
    /// Work with Cedar policy sets (validate, test)
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Generate Cedar schemas from the database
    #[command(subcommand)]
    Schema(SchemaCommand),
    /// The audit log: make a key; verify a log, prove an entry, check a proof
    #[command(subcommand)]
    Audit(audit_cli::AuditCommand),
}

#[derive(Subcommand)]
enum SchemaCommand {
    /// Read the catalog and write Cedar entity types for its tables, plus the standard actions;
    /// or, with --qdrant or --vector-store, entity types for vector collections
    Import {
        /// Database URL (postgres://user:pass@host:port/db); any login that can read the catalog
        #[arg(long, required_unless_present_any = ["qdrant", "vector_store"])]
        upstream: Option<String>,
        /// Schema to import (repeatable; default: public)
        #[arg(long = "schema", default_value = "public")]
        schemas: Vec<String>,
        /// A Qdrant's REST URL: import its collections (payload indexes and sampled points)
        #[arg(long, conflicts_with_all = ["upstream", "vector_store"])]
        qdrant: Option<String>,
        /// Environment variable holding that Qdrant's API key
        #[arg(long, requires = "qdrant")]
        qdrant_api_key_env: Option<String>,
        /// An embedded store's directory (`vector.store`): import its collections
        #[arg(long, conflicts_with = "upstream")]
        vector_store: Option<PathBuf>,
        /// Collection to import (repeatable; default: all)
        #[arg(long = "collection")]
        collections: Vec<String>,
        /// Points sampled per collection
        #[arg(long, default_value_t = 100)]
        sample: usize,
        /// Write here instead of standard output
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Load a policy-set directory, validate it strictly against its schema, print its version
    Validate {
        /// Directory with one *.cedarschema, *.cedar policy files and entities.json
        dir: PathBuf,
        /// Also keep the validated set in this version store (content-addressed by version)
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Run the set's *.test.toml cases against the derived filters and Cedar's own decisions
    Test {
        /// Policy-set directory (its *.test.toml files hold the cases)
        dir: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let resolved = config::Config::load(&config)?.resolve()?;
            runtime()?.block_on(serve(resolved))
        }
        Command::Demo {
            listen,
            fixtures,
            policies,
            vector_listen,
        } => runtime()?.block_on(demo::run(listen, fixtures, policies, vector_listen)),
        Command::CheckConfig { config } => {
            let resolved = config::Config::load(&config)?.resolve()?;
            server::Shared::new(resolved)?;
            println!("{}: OK", config.display());
            Ok(())
        }
        Command::Policy(PolicyCommand::Validate { dir, store }) => {
            policy_validate(&dir, store.as_deref())
        }
        Command::Policy(PolicyCommand::Test { dir }) => policy_test(&dir),
        Command::Schema(SchemaCommand::Import {
            upstream,
            schemas,
            qdrant,
            qdrant_api_key_env,
            vector_store,
            collections,
            sample,
            out,
        }) => match (upstream, qdrant, vector_store) {
            (Some(upstream), None, None) => {
                runtime()?.block_on(schema_import(&upstream, &schemas, out.as_deref()))
            }
            (None, Some(url), None) => {
                let key = qdrant_api_key_env
                    .map(|var| std::env::var(&var).with_context(|| format!("{var} is not set")))
                    .transpose()?;
                let remote = connectors::vector::remote::Remote::new(&url, key, None)
                    .map_err(anyhow::Error::msg)?;
                runtime()?.block_on(collection_import(
                    &remote,
                    &collections,
                    sample,
                    out.as_deref(),
                ))
            }
            (None, None, Some(dir)) => {
                let store = std::sync::Arc::new(
                    connectors::vector::embedded::Embedded::open(&dir)
                        .map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?,
                );
                runtime()?.block_on(collection_import(
                    &store,
                    &collections,
                    sample,
                    out.as_deref(),
                ))
            }
            _ => anyhow::bail!("give one of --upstream, --qdrant and --vector-store"),
        },
        Command::Explain {
            config,
            agent,
            on_behalf_of,
            sql,
        } => {
            let resolved = config::Config::load(&config)?.resolve()?;
            let refused = runtime()?.block_on(explain::run(
                resolved,
                &agent,
                on_behalf_of.as_deref(),
                &sql,
            ))?;
            // A refusal is an answer, but scripts should be able to tell.
            if refused {
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Audit(command) => audit_cli::run(command),
        Command::HashSecret => {
            let mut secret = String::new();
            std::io::stdin().read_line(&mut secret)?;
            let secret = secret.trim_end_matches(['\r', '\n']);
            anyhow::ensure!(!secret.is_empty(), "no secret on standard input");
            println!(
                "{}",
                postgres_protocol::password::scram_sha_256(secret.as_bytes())
            );
            Ok(())
        }
    }
}

fn policy_validate(dir: &std::path::Path, store: Option<&std::path::Path>) -> anyhow::Result<()> {
    let bundle = policies::load_dir(dir)?;
    for w in &bundle.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "{}: valid ({} policies), version {}",
        dir.display(),
        bundle.policies.num_of_policies(),
        bundle.version
    );
    if let Some(root) = store {
        let path = policies::VersionStore::open(root)?.save(&bundle)?;
        println!("stored in {}", path.display());
    }
    Ok(())
}

fn policy_test(dir: &std::path::Path) -> anyhow::Result<()> {
    let bundle = policies::load_dir(dir)?;
    let report = policies::policy_tests::run_dir(&bundle, dir).map_err(anyhow::Error::msg)?;
    for failure in &report.failures {
        println!("FAIL {failure}");
    }
    println!(
        "policy tests: {} passed, {} failed (version {})",
        report.passed,
        report.failures.len(),
        bundle.version.short()
    );
    anyhow::ensure!(
        report.passed + report.failures.len() > 0,
        "no test rows found in {}/*.test.toml",
        dir.display()
    );
    anyhow::ensure!(
        report.failures.is_empty(),
        "{} policy test row(s) failed",
        report.failures.len()
    );
    Ok(())
}

/// `schema import --qdrant/--vector-store`: each collection's payload indexes and a sample of
/// its points, as Cedar entity types.
async fn collection_import(
    backend: &impl connectors::vector::VectorBackend,
    only: &[String],
    sample: usize,
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use connectors::vector::Request;
    let names: Vec<String> = if only.is_empty() {
        backend.call(Request::ListCollections).await?["collections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    } else {
        only.to_vec()
    };
    anyhow::ensure!(!names.is_empty(), "no collections to import");
    let mut samples = Vec::new();
    for name in names {
        let info = backend
            .call(Request::GetCollection {
                collection: name.clone(),
            })
            .await?;
        let points = backend
            .call(Request::Scroll {
                collection: name.clone(),
                body: serde_json::json!({ "limit": sample.max(1), "with_payload": true, "with_vector": false }),
            })
            .await?;
        samples.push(policies::collection_import::CollectionSample {
            name,
            indexes: info["payload_schema"]
                .as_object()
                .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            payloads: points["points"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| p["payload"].clone())
                .collect(),
        });
    }
    let text = policies::collection_import::render(&samples);
    match out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

async fn schema_import(
    upstream: &str,
    schemas: &[String],
    out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let config = connectors::postgres::UpstreamConfig::from_url(upstream)?;
    let columns = connectors::postgres::catalog::table_columns(upstream, schemas).await?;
    anyhow::ensure!(
        !columns.is_empty(),
        "no tables found in schema(s) {}",
        schemas.join(", ")
    );
    let columns: Vec<policies::schema_import::Column> = columns
        .into_iter()
        .map(|c| policies::schema_import::Column {
            schema: c.schema,
            table: c.table,
            name: c.name,
            type_name: c.type_name,
            element_type: c.element_type,
            nullable: c.nullable,
        })
        .collect();
    let text = policies::schema_import::render(&config.dbname, &columns);
    match out {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn serve(mut resolved: config::Resolved) -> anyhow::Result<()> {
    let listen = resolved.listen;
    let drain_timeout = resolved.drain_timeout;
    check_upstream_login(&resolved.upstream, resolved.strict).await?;
    let resolved_admin = resolved.admin.take();
    if resolved.tokens.is_some() && resolved.tokens_without_tls {
        tracing::warn!(
            "jwt.allow_plaintext: agents may send their tokens without TLS (development only)"
        );
    }
    // The audit log first: policy versions and catalog snapshots are kept for it from the
    // start (replay loads them by hash).
    let audit_config = resolved.audit.clone();
    let audit = match &audit_config {
        Some(config) => Some(Arc::new(
            audit_log::AuditLog::start(config).context("opening the audit log")?,
        )),
        None => None,
    };
    if let Some(config) = &audit_config {
        if let Some(export) = &config.export {
            tokio::spawn(audit_export::run(
                config.dir.clone(),
                format!("portcullis/{}", config.node_id),
                export.clone(),
            ));
        }
    }
    let mut policies = None;
    let mut hash_key = None;
    if let Some(mut p) = resolved.policies.take() {
        if p.store.is_none() {
            p.store = audit_config
                .as_ref()
                .map(|a| a.dir.join(audit_log::POLICY_VERSIONS));
        }
        hash_key = Some(match &p.hash_key_file {
            Some(path) => mask_key::read(path)?,
            None => {
                tracing::warn!(
                    "no policies.hash_key_file: @mask(\"hash\") is keyed by a random key made now, \
                     so hashed values change at each restart"
                );
                mask_key::random()
            }
        });
        let interval = std::time::Duration::from_millis(p.reload_interval_ms);
        let state =
            tokio::task::spawn_blocking(move || policy_state::PolicyState::load(p.dir, p.store))
                .await?
                .context("loading the policy set")?;
        let state = Arc::new(state);
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("listening for SIGHUP")?;
        tokio::spawn(policy_state::watch(state.clone(), interval, hup));
        policies = Some(state);
    }
    let mut captured = None;
    let enforcer = match &policies {
        Some(state) => {
            let snapshot = connectors::postgres::catalog::snapshot(&resolved.upstream)
                .await
                .context("reading the upstream catalog")?;
            tracing::info!(
                relations = snapshot.relations.len(),
                search_path = ?snapshot.search_path,
                "policy enforcement on"
            );
            let enforcer = Arc::new(enforce::Enforcer::new(snapshot, state.clone()));
            if let Some(audit) = &audit {
                keep_catalog(audit, &enforcer).await?;
            }
            let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .context("listening for SIGHUP")?;
            if let Some(names) = audit_config
                .as_ref()
                .map(|c| &c.capture_keys)
                .filter(|n| !n.is_empty())
            {
                captured = Some(Arc::new(
                    pg::captured_keys::CapturedKeys::new(names, &enforcer.catalog().primary_keys)
                        .map_err(anyhow::Error::msg)?,
                ));
            }
            tokio::spawn(refresh_catalog_on_hup(
                enforcer.clone(),
                resolved.upstream.clone(),
                hup,
                audit.clone(),
                captured.clone(),
            ));
            Some(enforcer)
        }
        None => {
            tracing::warn!(
                "no [policies] configured: statements pass the gate but no row or column policy \
                 is enforced"
            );
            None
        }
    };
    let vector_config = resolved.vector.take();
    let vector_hash_key = hash_key.clone().unwrap_or_default();
    let mut shared = server::Shared::new(resolved)?;
    if let (Some(policies), Some(enforcer), Some(key)) = (policies, enforcer, hash_key) {
        shared.enforce(policies, enforcer, &key);
    }
    shared.audit = audit.clone();
    if audit_config
        .as_ref()
        .is_some_and(|c| !c.capture_keys.is_empty())
        && captured.is_none()
    {
        anyhow::bail!("audit.capture_keys needs [policies] (the catalog is read then)");
    }
    shared.captured = captured;
    let admin = resolved_admin;
    let shared = Arc::new(shared);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    if let Some(admin) = admin {
        let admin_listener = tokio::net::TcpListener::bind(admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin.listen)", admin.listen))?;
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = admin::serve(admin_listener, shared).await {
                tracing::error!("admin listener failed: {e}");
            }
        });
    }
    if let Some(config) = vector_config {
        let listen = config.listen;
        let vector_listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen} (vector.listen)"))?;
        let shared = shared.clone();
        let shim = vector::Shim::open(config, shared, vector_hash_key).await?;
        tokio::spawn(async move {
            if let Err(e) = vector::serve(vector_listener, Arc::new(shim)).await {
                tracing::error!("vector listener failed: {e}");
            }
        });
    }
    let result = tokio::select! {
        r = server::serve(listener, shared.clone()) => r.context("listener failed"),
        _ = shutdown_signal() => Ok(()),
    };
    // The listener is closed: no new sessions. Those open finish what they are doing.
    let ended = server::drain(&shared, drain_timeout).await;
    tracing::info!(ended_busy = ended, "all sessions ended");
    // The last records, and a checkpoint that covers them.
    if let Some(audit) = audit {
        tokio::task::spawn_blocking(move || audit.shutdown()).await?;
    }
    result
}

/// Warns of each thing the upstream login may do beyond what agents need (see
/// `connectors::postgres::login_checks`); under `postgres.strict`, refuses to start instead.
async fn check_upstream_login(
    upstream: &connectors::postgres::UpstreamConfig,
    strict: bool,
) -> anyhow::Result<()> {
    let mut config = upstream.tokio_config();
    config.connect_timeout(std::time::Duration::from_secs(10));
    match connectors::postgres::login_checks::check(upstream, &config).await {
        Ok(risks) => {
            let findings = risks.findings();
            if strict && !findings.is_empty() {
                anyhow::bail!("postgres.strict is set and {}", findings.join("; and "));
            }
            for finding in findings {
                tracing::warn!("{finding}");
            }
            Ok(())
        }
        Err(e) if strict => {
            anyhow::bail!("postgres.strict is set and the upstream login cannot be checked: {e}")
        }
        // The operator asked for TLS: a server that fails it (an untrusted certificate, a
        // name the certificate does not hold, no TLS at all) is a start-up error.
        Err(e) if upstream.tls.mode.needs_tls() => {
            anyhow::bail!(
                "cannot connect to the upstream database over TLS (sslmode={}): {}",
                upstream.tls.mode.name(),
                error_chain(&e)
            )
        }
        Err(e) => {
            tracing::warn!("cannot check what the upstream login may do: {e}");
            Ok(())
        }
    }
}

/// `e` and its sources, as one line (tokio-postgres puts the TLS reason in a source).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// SIGHUP re-reads the upstream catalog (as it reloads the policy set): relations created or
/// altered since start become known. A failed read keeps the previous catalog.
/// Keeps the enforcer's current catalog snapshot in the audit log's directory (by hash).
async fn keep_catalog(
    audit: &Arc<audit_log::AuditLog>,
    enforcer: &enforce::Enforcer,
) -> anyhow::Result<()> {
    let view = enforcer.catalog();
    let audit = audit.clone();
    tokio::task::spawn_blocking(move || audit.keep_catalog(&view.hash, &view.snapshot))
        .await?
        .context("keeping the catalog snapshot for the audit log")
}

async fn refresh_catalog_on_hup(
    enforcer: Arc<enforce::Enforcer>,
    upstream: connectors::postgres::UpstreamConfig,
    mut hup: tokio::signal::unix::Signal,
    audit: Option<Arc<audit_log::AuditLog>>,
    captured: Option<Arc<pg::captured_keys::CapturedKeys>>,
) {
    while hup.recv().await.is_some() {
        match connectors::postgres::catalog::snapshot(&upstream).await {
            Ok(snapshot) => {
                let relations = snapshot.relations.len();
                enforcer.refresh_catalog(snapshot);
                if let Some(captured) = &captured {
                    for name in captured.refresh(&enforcer.catalog().primary_keys) {
                        tracing::error!(
                            "audit.capture_keys: {name} is no longer a table with a primary key; \
                             the keys of its rows are not captured until it is back"
                        );
                    }
                }
                if let Some(audit) = &audit {
                    if let Err(e) = keep_catalog(audit, &enforcer).await {
                        tracing::error!("{e:#}");
                    }
                }
                tracing::info!(relations, "upstream catalog refreshed");
            }
            Err(e) => tracing::error!("catalog refresh failed, the previous catalog stays: {e}"),
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
