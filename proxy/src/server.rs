//! The listener: accepts agent connections and runs each session on its own task. A failing
//! session never affects the others.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use connectors::postgres::UpstreamConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::Resolved;
use crate::enforce::{Enforcer, Principal};
use crate::identity::{Credential, TokenVerifier};
use crate::limits::Limits;
use crate::pg::cancel::{CancelRegistry, CancelTarget};
use crate::pg::gate_cache::GateCache;
use crate::pg::handshake::{self, HandshakeError};
use crate::pg::session::Session;
use crate::policy_state::PolicyState;

/// How long a client may take from connecting to being authenticated.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// State shared by all sessions.
pub struct Shared {
    pub upstream: UpstreamConfig,
    pub agents: HashMap<String, Credential>,
    /// Checks the tokens of agents that log in with one.
    pub tokens: Option<TokenVerifier>,
    /// Token logins are accepted without TLS (`jwt.allow_plaintext`).
    pub tokens_without_tls: bool,
    /// Keys decoy SCRAM salts for unknown agents; random per process.
    pub decoy_key: [u8; 32],
    pub tls: Option<TlsAcceptor>,
    pub require_tls: bool,
    pub max_message_bytes: usize,
    pub max_query_bytes: usize,
    /// Each agent's time limits (see `limits`).
    pub limits: HashMap<String, Limits>,
    pub cancels: Arc<CancelRegistry>,
    pub gate: GateCache,
    /// The active Cedar policy set, hot-reloaded (none when the config has no `[policies]`).
    pub policies: Option<Arc<PolicyState>>,
    /// Policy enforcement (with `[policies]`); without it, sessions only pass the gate.
    pub enforcer: Option<Arc<Enforcer>>,
    /// The value of the `portcullis.mask_key` setting upstream sessions get under enforcement
    /// (see `mask_key`).
    pub mask_key: Option<String>,
    /// The audit log, when `[audit]` is configured (started by `serve`).
    pub audit: Option<Arc<crate::audit_log::AuditLog>>,
    /// The tables whose returned keys outcome records capture (`audit.capture_keys`).
    pub captured: Option<Arc<crate::pg::captured_keys::CapturedKeys>>,
    /// `postgres.max_connections`: a permit per session (from before authentication).
    pub connections: Option<Arc<tokio::sync::Semaphore>>,
    /// Each agent's own cap on its sessions (`[[agents]] max_connections`).
    pub agent_connections: HashMap<String, Arc<tokio::sync::Semaphore>>,
    /// Shutdown as sessions see it; each session holds a receiver until it ends, so the sender
    /// knows when the last one has (see [`drain`]).
    pub shutdown: tokio::sync::watch::Sender<Shutdown>,
}

/// Where the proxy is in shutting down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shutdown {
    Running,
    /// A session ends (`57P01`) once it is at rest: no statement running, no transaction open.
    Draining,
    /// Every session ends now, its running statement cancelled.
    Now,
}

impl Shared {
    pub fn new(config: Resolved) -> Result<Self, crate::tls::TlsError> {
        let tls = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        Ok(Shared {
            upstream: config.upstream,
            agents: config.agents.into_iter().collect(),
            tokens: config.tokens,
            tokens_without_tls: config.tokens_without_tls,
            decoy_key: rand::random(),
            tls,
            require_tls: config.require_tls,
            max_message_bytes: config.max_message_bytes,
            max_query_bytes: config.max_query_bytes,
            limits: config.limits,
            cancels: Arc::new(CancelRegistry::default()),
            gate: GateCache::default(),
            policies: None,
            enforcer: None,
            mask_key: None,
            audit: None,
            captured: None,
            shutdown: tokio::sync::watch::Sender::new(Shutdown::Running),
            connections: (config.max_connections > 0)
                .then(|| Arc::new(tokio::sync::Semaphore::new(config.max_connections))),
            agent_connections: config
                .agent_max_connections
                .iter()
                .map(|(agent, n)| (agent.clone(), Arc::new(tokio::sync::Semaphore::new(*n))))
                .collect(),
        })
    }

    /// Turns policy enforcement on: the policy state, the enforcer over it, and the key of
    /// `@mask("hash")`, set together (a session enforcing without the key fails on hashed
    /// columns, as the demo once did).
    pub fn enforce(
        &mut self,
        policies: Arc<PolicyState>,
        enforcer: Arc<Enforcer>,
        hash_key: &[u8],
    ) {
        self.policies = Some(policies);
        self.enforcer = Some(enforcer);
        self.mask_key = Some(crate::mask_key::setting_value(hash_key));
    }
}

/// Accepts connections until the listener fails.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    info!("listening for agents on {}", listener.local_addr()?);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            debug!(%peer, "connection");
            handle(tcp, peer, &shared).await;
        });
    }
}

async fn handle(tcp: TcpStream, peer: std::net::SocketAddr, shared: &Shared) {
    // Counted from the start, so a shutdown waits for a login in progress too (the session
    // holds its own receiver once it exists).
    let in_flight = shared.shutdown.subscribe();
    let _ = tcp.set_nodelay(true);
    let auth =
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake::handshake(tcp, shared)).await {
            Ok(Ok(a)) => a,
            Ok(Err(HandshakeError::NoSession)) => return,
            Ok(Err(e)) => {
                debug!("handshake ended: {e}");
                return;
            }
            Err(_) => {
                debug!("handshake timed out");
                return;
            }
        };
    let upstream = auth.upstream;
    let _permits = auth.permits;
    if let Some(p) = &shared.policies {
        info!(agent = %auth.agent, on_behalf_of = auth.on_behalf_of.as_deref(), "session uses policy version {}", p.current().version.short());
    }
    let cancel = CancelTarget {
        addr: upstream.addr,
        process_id: upstream.process_id,
        secret_key: upstream.secret_key,
    };
    let principal = match &shared.enforcer {
        None => None,
        Some(_) => match Principal::new(&auth.agent, auth.on_behalf_of.as_deref()) {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(agent = %auth.agent, "agent id is not a valid Cedar entity id: {e}");
                return;
            }
        },
    };
    let _counted = crate::metrics::SessionGuard::open();
    let registration = shared.cancels.register(cancel);
    let mut session = Session::new(
        shared,
        auth.agent,
        auth.on_behalf_of,
        principal,
        auth.client,
        peer,
        upstream.stream,
        cancel,
    );
    drop(in_flight);
    if session
        .greet(&upstream.parameters, registration.key)
        .await
        .is_err()
    {
        return;
    }
    let _ = session.run().await;
    drop(registration);
}

/// Ends the sessions for shutdown (the listener has stopped accepting): each ends once at
/// rest, as PostgreSQL's smart shutdown would have it; those still busy after `timeout` are
/// ended at once, their statements cancelled. Returns how many were ended that way.
pub async fn drain(shared: &Shared, timeout: Duration) -> usize {
    let sessions = shared.shutdown.receiver_count();
    info!(sessions, "shutting down: sessions end once their statements and transactions are done (at most {timeout:?})");
    shared.shutdown.send_replace(Shutdown::Draining);
    if tokio::time::timeout(timeout, shared.shutdown.closed())
        .await
        .is_ok()
    {
        return 0;
    }
    let busy = shared.shutdown.receiver_count();
    warn!(
        sessions = busy,
        "drain timeout: ending the sessions still busy"
    );
    shared.shutdown.send_replace(Shutdown::Now);
    // Each has only its cancel request and a FATAL message left to send.
    let _ = tokio::time::timeout(Duration::from_secs(5), shared.shutdown.closed()).await;
    busy
}
