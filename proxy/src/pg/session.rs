//! One agent session: relays between the client and its upstream backend.
//!
//! Client → upstream: every Query and Parse goes through the statement gate and is re-encoded
//! with the gate's SQL; under enforcement, statement names are translated to upstream names
//! (see `statements`); other extended-protocol messages are forwarded as they arrived.
//! A refused statement is replaced by [`REFUSAL_SQL`], which fails upstream at parse time with no
//! side effect; its ErrorResponse is swapped for Portcullis's own (see `pipeline`). That keeps
//! PostgreSQL's own ordering, transaction-abort and skip-to-Sync behaviour for refusals.
//!
//! Upstream → client: messages are forwarded as bytes, only their headers read (plus
//! ParameterStatus and ReadyForQuery bodies, and, under enforcement, errors and notices, which
//! are redacted); rows are never decoded.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use connectors::postgres::UpstreamStream;
use rewriter::{quote_ident, PreparedEffect, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{debug, info, warn};

use super::cancel::CancelTarget;
use super::captured_keys;
use super::client_stream::ClientStream;
use super::gate_cache::GateResult;
use super::messages::error::{
    codes, error_response, redact_upstream_error, redact_upstream_notice,
    sqlstate as error_sqlstate, Severity,
};
use super::messages::frame::{self, FrameError};
use super::messages::query::{self, ParseDecodeError};
use super::messages::read_cstr as messages_read_cstr;
use super::messages::rows;
use super::messages::status;
use super::messages::{backend, extended};
use super::outcomes;
use super::pipeline::{Action, Expect, Pipeline, Rejection, Reply};
use super::search_path;
use super::statements::{Prepared, ReuseKey, Statements};
use crate::enforce::Principal;
use crate::limits::{Expiry, Limits, Timers};
use crate::server::{Shared, Shutdown};

/// Sent upstream in place of a refused statement: a raw-parser syntax error, nothing runs.
const REFUSAL_SQL: &str = "PORTCULLIS_REFUSED";

/// Largest ParameterStatus/ReadyForQuery the proxy buffers to inspect.
const MAX_INSPECTED: usize = 64 * 1024;

/// Largest RowDescription read for captured keys: PostgreSQL's 1664 result columns with
/// 63-byte names take about 136 KiB, so every description it sends fits.
const MAX_ROW_DESCRIPTION: usize = 256 * 1024;

/// Largest upstream ErrorResponse the proxy buffers to redact; a larger one is replaced whole.
const MAX_ERROR: usize = 1024 * 1024;

pub struct Session<'a> {
    shared: &'a Shared,
    agent: String,
    /// Who policy sees (with enforcement on).
    principal: Option<Principal>,
    client: ClientStream,
    upstream: UpstreamStream,
    cancel: CancelTarget,
    pipeline: Pipeline,
    /// After a refused Parse: drop client messages until Sync, as PostgreSQL does.
    skip_until_sync: bool,
    /// Prepared statements by the client's names ("" is the unnamed one), under enforcement.
    statements: Statements,
    from_client: BytesMut,
    from_upstream: BytesMut,
    to_upstream: BytesMut,
    to_client: BytesMut,
    /// Bytes still to forward of an upstream message already accounted for.
    passthrough: usize,
    /// Bytes still to drop of an upstream message that was replaced.
    dropping: usize,
    /// The statement and idle-in-transaction clocks (see `limits`).
    timers: Timers,
    /// The transaction status of the last ReadyForQuery not yet given to `timers`.
    ready: Option<u8>,
    /// The transaction status of the last ReadyForQuery (`I` idle, `T` in a transaction, `E`
    /// in a failed one).
    status: u8,
    /// The proxy's shutdown, as it progresses (see `server::drain`).
    shutdown: tokio::sync::watch::Receiver<Shutdown>,
    /// The session's search_path (under enforcement).
    search_path: search_path::Tracker,
    /// The row of the read in flight.
    read_value: Option<String>,
    /// A read ended: client messages held for it are handled now.
    resume_client: bool,
    /// This session's id in audit records.
    session_id: String,
    on_behalf_of: Option<String>,
    client_addr: std::net::SocketAddr,
    /// This agent's statement counters (metrics).
    counters: crate::metrics::AgentStatements,
    /// Decision records of the statements handled but not yet sent upstream.
    audit_pending: Vec<Vec<u8>>,
    /// Where in `to_upstream` the first Query, Bind or Execute begins: in `sync` mode what
    /// precedes it (Parse, Describe of a statement, Close, Flush) goes before the records are
    /// durable.
    hold_from: Option<usize>,
    /// Results expected upstream, matched to outcome records.
    outcomes: outcomes::Outcomes,
    /// Outcome records not yet handed to the audit log.
    outcome_records: Vec<Vec<u8>>,
    /// The decision record of each prepared statement and portal (client names).
    statement_decisions: HashMap<String, Arc<str>>,
    /// Each portal's statement, its decision and Bind parameters (digests).
    portal_decisions: HashMap<String, Bound>,
    /// Key columns to read from each prepared statement's rows (from its Describe).
    statement_plans: HashMap<String, captured_keys::Plan>,
    /// Statements described (Describe S) whose description has not come back yet.
    describing: std::collections::VecDeque<String>,
    /// Portals described (Describe P) whose description has not come back yet.
    describing_portals: std::collections::VecDeque<String>,
    /// Key columns to read from each portal's rows (from its Describe), by client name.
    portal_plans: HashMap<String, captured_keys::Plan>,
    /// The statement whose Describe is being answered (after its ParameterDescription).
    described: Option<String>,
    /// The DataRow being forwarded is counted in an outcome.
    passthrough_row: bool,
}

/// A portal as the audit log sees it.
#[derive(Clone)]
struct Bound {
    statement: String,
    decision: Arc<str>,
    /// Its Bind parameters, as digests.
    parameters: Option<Arc<[Option<String>]>>,
    /// The result formats its Bind asked for.
    formats: Vec<i16>,
}

/// How a session ended abnormally; the client has been told (FATAL) where it still listens.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("client protocol violation: {0}")]
    ClientProtocol(String),
    #[error("upstream protocol violation: {0}")]
    UpstreamProtocol(String),
    #[error("upstream I/O: {0}")]
    Upstream(std::io::Error),
    #[error("client I/O: {0}")]
    Client(std::io::Error),
    #[error("the audit log could not be written")]
    Audit,
}

enum Flow {
    Continue,
    Terminate,
}

impl<'a> Session<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: &'a Shared,
        agent: String,
        on_behalf_of: Option<String>,
        principal: Option<Principal>,
        client: ClientStream,
        client_addr: std::net::SocketAddr,
        upstream: UpstreamStream,
        cancel: CancelTarget,
    ) -> Self {
        Session {
            shared,
            principal,
            client,
            upstream,
            cancel,
            pipeline: Pipeline::default(),
            skip_until_sync: false,
            statements: Statements::default(),
            from_client: BytesMut::with_capacity(16 * 1024),
            from_upstream: BytesMut::with_capacity(64 * 1024),
            to_upstream: BytesMut::with_capacity(16 * 1024),
            to_client: BytesMut::with_capacity(64 * 1024),
            passthrough: 0,
            dropping: 0,
            timers: Timers::new(
                shared
                    .limits
                    .get(&agent)
                    .copied()
                    .unwrap_or(Limits::from_ms(0, 0)),
            ),
            ready: None,
            status: b'I',
            shutdown: shared.shutdown.subscribe(),
            search_path: search_path::Tracker::default(),
            read_value: None,
            resume_client: false,
            session_id: crate::audit_record::new_id(),
            on_behalf_of,
            client_addr,
            counters: crate::metrics::metrics().agent(&agent),
            audit_pending: Vec::new(),
            hold_from: None,
            outcomes: outcomes::Outcomes::default(),
            outcome_records: Vec::new(),
            statement_decisions: HashMap::new(),
            portal_decisions: HashMap::new(),
            statement_plans: HashMap::new(),
            describing: std::collections::VecDeque::new(),
            describing_portals: std::collections::VecDeque::new(),
            portal_plans: HashMap::new(),
            described: None,
            passthrough_row: false,
            agent,
        }
    }

    /// Sends the client the upstream's parameters, our cancel key and ReadyForQuery.
    pub async fn greet(
        &mut self,
        parameters: &[(String, String)],
        key: (i32, i32),
    ) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        for (name, value) in parameters {
            // The upstream login's name is Portcullis's business, not the agent's.
            let value = if name == "session_authorization" {
                &self.agent
            } else {
                value
            };
            status::parameter_status(&mut out, name, value);
        }
        status::backend_key_data(&mut out, key.0, key.1);
        status::ready_for_query(&mut out, b'I');
        self.client
            .write_all(&out)
            .await
            .map_err(SessionError::Client)
    }

    pub async fn run(mut self) -> Result<(), SessionError> {
        let result = self.relay().await;
        match &result {
            Ok(()) => debug!(agent = %self.agent, "session ended"),
            Err(e) => info!(agent = %self.agent, "session ended: {e}"),
        }
        if !self.pipeline.is_idle() {
            // The client is gone or misbehaved mid-query: stop the work it started.
            self.cancel_upstream().await;
        }
        let mut bye = BytesMut::new();
        query::encode_terminate(&mut bye);
        let _ = self.upstream.write_all(&bye).await;
        result
    }

    /// Cancels whatever the upstream backend is running for this session.
    async fn cancel_upstream(&self) {
        if let Err(e) = connectors::postgres::cancel(
            self.cancel.addr,
            self.cancel.process_id,
            self.cancel.secret_key,
        )
        .await
        {
            warn!("cancelling the upstream query failed: {e}");
        }
    }

    /// No statement running or queued, no transaction open, nothing unread from the client: a
    /// draining proxy may end the session here without losing anything.
    fn at_rest(&self) -> bool {
        self.pipeline.is_idle() && self.status == b'I' && self.from_client.is_empty()
    }

    async fn relay(&mut self) -> Result<(), SessionError> {
        // One wait for the next shutdown step, kept across iterations: registered with the
        // channel once, not made and dropped again at every message.
        let next_step = |mut rx: tokio::sync::watch::Receiver<Shutdown>| async move {
            let open = rx.changed().await.is_ok();
            (rx, open)
        };
        let mut shutdown = *self.shutdown.borrow_and_update();
        let mut step = Box::pin(next_step(self.shutdown.clone()));
        loop {
            match shutdown {
                Shutdown::Running => {}
                Shutdown::Draining if !self.at_rest() => {}
                state => {
                    if state == Shutdown::Now && !self.pipeline.is_idle() {
                        self.cancel_upstream().await;
                    }
                    info!(agent = %self.agent, status = %char::from(self.status), idle = self.pipeline.is_idle(), "ending the session: Portcullis is shutting down");
                    self.fatal_to_client(
                        codes::ADMIN_SHUTDOWN,
                        "terminating connection due to administrator command",
                    )
                    .await;
                    return Ok(());
                }
            }
            let deadline = self.timers.deadline();
            tokio::select! {
                // Looked at again at the top of the loop. The sender lives as long as the
                // server, so this fails only as the process ends.
                (rx, open) = &mut step => {
                    if !open {
                        return Ok(());
                    }
                    shutdown = *rx.borrow();
                    step.set(next_step(rx));
                }
                _ = tokio::time::sleep_until(deadline.map_or_else(tokio::time::Instant::now, |d| d.0)), if deadline.is_some() => {
                    match deadline.map(|d| d.1) {
                        Some(Expiry::Statement) => {
                            info!(agent = %self.agent, "statement timeout: cancelling the upstream query");
                            self.timers.cancelled();
                            self.cancel_upstream().await;
                        }
                        Some(Expiry::IdleSession) => {
                            info!(agent = %self.agent, "idle-session timeout: ending the session");
                            self.fatal_to_client(codes::IDLE_SESSION_TIMEOUT, "terminating connection due to idle-session timeout").await;
                            return Ok(());
                        }
                        _ => {
                            info!(agent = %self.agent, "idle-in-transaction timeout: ending the session");
                            self.fatal_to_client(codes::IDLE_IN_TRANSACTION_TIMEOUT, "Portcullis ended the session: idle in transaction for longer than this agent may be").await;
                            return Ok(());
                        }
                    }
                }
                read = self.client.read_buf(&mut self.from_client) => {
                    match read {
                        Ok(0) => return Ok(()),
                        Ok(_) => {}
                        Err(e) => return Err(SessionError::Client(e)),
                    }
                    self.timers.client_active();
                    if let Some(end) = self.pump_client().await {
                        return end;
                    }
                }
                read = self.upstream.read_buf(&mut self.from_upstream) => {
                    match read {
                        Ok(0) => {
                            let _ = self.client.write_all(&self.to_client).await;
                            self.fatal_to_client(codes::CONNECTION_FAILURE, "the database closed the connection").await;
                            return Err(SessionError::Upstream(std::io::ErrorKind::UnexpectedEof.into()));
                        }
                        Ok(_) => {}
                        Err(e) => {
                            self.fatal_to_client(codes::CONNECTION_FAILURE, "lost the connection to the database").await;
                            return Err(SessionError::Upstream(e));
                        }
                    }
                    let result = self.on_upstream_data();
                    // Outcomes are recorded after the fact: nothing waits for them.
                    if let (Some(audit), false) = (&self.shared.audit, self.outcome_records.is_empty()) {
                        drop(audit.submit(std::mem::take(&mut self.outcome_records)));
                    }
                    let now = tokio::time::Instant::now();
                    if let Some(status) = self.ready.take() {
                        self.status = status;
                        self.timers.ready(status, now);
                        // The next batch in a pipeline starts its own clock.
                        self.timers.set_busy(false, now);
                    }
                    self.timers.set_busy(!self.pipeline.is_idle(), now);
                    if !self.to_client.is_empty() {
                        self.client.write_all(&self.to_client).await.map_err(SessionError::Client)?;
                        self.to_client.clear();
                    }
                    if let Err(e) = result {
                        self.fatal_to_client(codes::PROTOCOL_VIOLATION, "Portcullis ended the session: unexpected response from the database").await;
                        return Err(e);
                    }
                    if std::mem::take(&mut self.resume_client) {
                        if let Some(end) = self.pump_client().await {
                            return end;
                        }
                    }
                }
            }
        }
    }

    /// Handles the client's buffered messages and sends upstream what they produced.
    /// `Some`: the session ends, with this result.
    async fn pump_client(&mut self) -> Option<Result<(), SessionError>> {
        let flow = self.on_client_data();
        let hold = self.hold_from.take().unwrap_or(self.to_upstream.len());
        // Write-ahead: in `sync` mode no statement runs upstream before its records are
        // durable. A Parse runs nothing (parse analysis reads no row and calls no user code):
        // it goes first, and PostgreSQL parses while the records are fsynced. The first Bind
        // (planning may evaluate functions), Query or Execute and all after it wait.
        if let (Some(audit), false) = (&self.shared.audit, self.audit_pending.is_empty()) {
            let entries = std::mem::take(&mut self.audit_pending);
            if let Some(answer) = audit.submit(entries) {
                if hold > 0 {
                    let head = self.to_upstream.split_to(hold);
                    if let Err(e) = self.upstream.write_all(&head).await {
                        return Some(Err(SessionError::Upstream(e)));
                    }
                }
                let written = matches!(answer.await, Ok(Ok(())));
                if !written && audit.fail_open {
                    // The operator chose traffic over records: counted in the outage's record.
                    audit.let_through();
                } else if !written {
                    self.fatal_to_client(
                        crate::audit_record::UNWRITABLE_CODE,
                        crate::audit_record::UNWRITABLE_MESSAGE,
                    )
                    .await;
                    return Some(Err(SessionError::Audit));
                }
            }
        }
        self.timers
            .set_busy(!self.pipeline.is_idle(), tokio::time::Instant::now());
        if !self.to_upstream.is_empty() {
            if let Err(e) = self.upstream.write_all(&self.to_upstream).await {
                return Some(Err(SessionError::Upstream(e)));
            }
            self.to_upstream.clear();
        }
        match flow {
            Ok(Flow::Continue) => None,
            Ok(Flow::Terminate) => Some(Ok(())),
            Err(e) => {
                self.fatal_to_client("08P01", &e.to_string()).await;
                Some(Err(e))
            }
        }
    }

    /// At the end of a batch (a Query, or a Sync): reads the search_path back if the batch
    /// may have changed it; the client's next messages wait for the answer.
    fn read_search_path(&mut self) {
        if self.shared.enforcer.is_some() && self.search_path.start_read() {
            query::encode_query(&mut self.to_upstream, "SHOW search_path");
            self.pipeline.push(Expect::Query, Reply::Read);
        }
    }

    /// The read's answer has come: the path is known again.
    fn end_read(&mut self, status: u8) {
        let login = self
            .shared
            .enforcer
            .as_ref()
            .map(|e| e.catalog().search_path_setting.clone())
            .unwrap_or_default();
        let value = self.read_value.take();
        self.search_path.on_read(value.as_deref(), status, &login);
        self.resume_client = true;
    }

    async fn fatal_to_client(&mut self, code: &str, message: &str) {
        let mut out = BytesMut::new();
        error_response(&mut out, Severity::Fatal, code, message, None);
        let _ = self.client.write_all(&out).await;
        let _ = self.client.shutdown().await;
    }

    /// Handles every complete client message in the buffer.
    fn on_client_data(&mut self) -> Result<Flow, SessionError> {
        loop {
            if self.search_path.is_reading() {
                // Rewritten once the path they run under is known.
                return Ok(Flow::Continue);
            }
            let (tag, msg) =
                match frame::next_frame(&mut self.from_client, self.shared.max_message_bytes) {
                    Ok(Some(f)) => f,
                    Ok(None) => return Ok(Flow::Continue),
                    Err(e @ (FrameError::BadLength(_) | FrameError::TooLarge(..))) => {
                        return Err(SessionError::ClientProtocol(e.to_string()));
                    }
                };
            if self.skip_until_sync && !matches!(tag, b'S' | b'X') {
                continue;
            }
            if matches!(tag, b'Q' | b'B' | b'E') && self.hold_from.is_none() {
                self.hold_from = Some(self.to_upstream.len());
            }
            match tag {
                b'Q' => {
                    let (decision, statements) = self.on_query(&msg);
                    if self.shared.audit.is_some() {
                        self.outcomes.query(decision.as_ref(), statements);
                    }
                    self.read_search_path();
                }
                b'P' => self.on_parse(&msg)?,
                b'B' => {
                    let name = extended::bind_statement(&msg).ok_or_else(|| {
                        SessionError::ClientProtocol("malformed Bind message".into())
                    })?;
                    match self.upstream_statement(name) {
                        Target::Passthrough => self.forward(&msg, Some(Expect::Bind)),
                        Target::Ready => {
                            // The Sync closing this batch reads the path back.
                            if self
                                .statements
                                .get_mut(name)
                                .is_some_and(|p| p.changes_search_path)
                            {
                                self.search_path.may_change();
                            }
                            let upstream = self.statements.upstream(name).unwrap_or_default();
                            extended::encode_bind_renamed(&mut self.to_upstream, &msg, upstream);
                            self.pipeline.push(Expect::Bind, Reply::Forward);
                        }
                        Target::Refused => {}
                    }
                    // After the statement is resolved: a re-rewrite under a new policy version
                    // records a new decision, which this portal's outcomes belong to.
                    if self.shared.audit.is_some() {
                        let portal = extended::bind_portal(&msg).unwrap_or_default().to_string();
                        // A new portal under this name: its old description is gone.
                        self.portal_plans.remove(&portal);
                        let clear =
                            self.shared.audit.as_ref().is_some_and(|a| {
                                a.parameters == crate::audit_log::Parameters::Clear
                            });
                        let parameters = extended::bind_parameters(&msg).map(|values| {
                            if clear {
                                outcomes::parameters_in_clear(&values)
                            } else {
                                outcomes::parameter_digests(&values)
                            }
                        });
                        match self.statement_decisions.get(name).cloned() {
                            Some(decision) => self.portal_decisions.insert(
                                portal,
                                Bound {
                                    statement: name.to_string(),
                                    decision,
                                    parameters,
                                    formats: extended::bind_result_formats(&msg)
                                        .unwrap_or_default(),
                                },
                            ),
                            None => self.portal_decisions.remove(&portal),
                        };
                    }
                }
                b'D' | b'C' => {
                    let (kind, name) = extended::target(&msg).ok_or_else(|| {
                        SessionError::ClientProtocol("malformed Describe or Close message".into())
                    })?;
                    if tag == b'D' && self.shared.captured.is_some() {
                        match kind {
                            b'S' => self.describing.push_back(name.to_string()),
                            _ => self.describing_portals.push_back(name.to_string()),
                        }
                    }
                    // What the audit log remembers of a closed statement or portal goes too.
                    if tag == b'C' && kind == b'S' {
                        self.statement_decisions.remove(name);
                        self.statement_plans.remove(name);
                    } else if tag == b'C' {
                        self.portal_decisions.remove(name);
                        self.portal_plans.remove(name);
                    }
                    if kind != b'S' || self.shared.enforcer.is_none() {
                        let expect = if tag == b'C' {
                            Expect::Close
                        } else {
                            Expect::Describe
                        };
                        self.forward(&msg, Some(expect));
                    } else if tag == b'C' {
                        // The upstream statement goes idle (or is closed after the Sync); the
                        // client's CloseComplete comes from closing the upstream unnamed
                        // statement, which enforcement never binds (closing a name that stands
                        // for nothing is no error in PostgreSQL either).
                        self.statements.release(name);
                        extended::encode_close_statement(&mut self.to_upstream, "");
                        self.pipeline.push(Expect::Close, Reply::Forward);
                    } else if let Target::Ready = self.upstream_statement(name) {
                        let upstream = self.statements.upstream(name).unwrap_or_default();
                        extended::encode_describe_statement(&mut self.to_upstream, upstream);
                        self.pipeline.push(Expect::Describe, Reply::Forward);
                    }
                }
                b'E' => {
                    if self.shared.audit.is_some() {
                        let bound = extended::execute_portal(&msg)
                            .and_then(|portal| self.portal_decisions.get(portal))
                            .cloned();
                        let portal = extended::execute_portal(&msg).unwrap_or_default();
                        match bound {
                            // The portal's own description (its formats included), else its
                            // statement's with the formats its Bind asked for.
                            Some(b) => {
                                let plan = self.portal_plans.get(portal).cloned().or_else(|| {
                                    self.statement_plans
                                        .get(&b.statement)
                                        .map(|p| p.with_formats(&b.formats))
                                });
                                self.outcomes
                                    .execute(Some(&b.decision), b.parameters, plan, portal)
                            }
                            None => self.outcomes.execute(None, None, None, portal),
                        }
                    }
                    self.forward(&msg, Some(Expect::Execute))
                }
                b'H' => self.forward(&msg, None),
                b'S' => {
                    self.skip_until_sync = false;
                    self.forward(&msg, Some(Expect::Sync));
                    // After the Sync, not before it: an error earlier in this batch (a refused
                    // Parse) makes the backend skip everything up to Sync, and a hidden Close
                    // it skipped would be a reply that never comes.
                    self.close_orphans();
                    if self.shared.audit.is_some() {
                        self.outcomes.sync();
                    }
                    self.read_search_path();
                }
                b'X' => return Ok(Flow::Terminate),
                // Copy-in messages outside COPY FROM STDIN (which the gate refuses): PostgreSQL
                // ignores them too.
                b'd' | b'c' | b'f' => {}
                b'F' => {
                    if self.shared.audit.is_some() {
                        self.outcomes.sync();
                    }
                    self.inject_query(Rejection {
                        code: "0A000",
                        message: "Portcullis does not support the function-call protocol message"
                            .into(),
                    })
                }
                other => {
                    return Err(SessionError::ClientProtocol(format!(
                        "unexpected message type 0x{other:02x}"
                    )));
                }
            }
        }
    }

    fn forward(&mut self, msg: &[u8], expect: Option<Expect>) {
        self.to_upstream.extend_from_slice(msg);
        if let Some(e) = expect {
            self.pipeline.push(e, Reply::Forward);
        }
    }

    /// The upstream statement a Bind or Describe of the client's statement `name` goes to.
    ///
    /// Under enforcement: a name the client has not prepared fails as in PostgreSQL (26000);
    /// a statement whose rewrite is older than the current policy version or catalog is first
    /// prepared again under a fresh upstream name (hidden from the client), so a revocation
    /// reaches long-lived prepared statements; one the current version refuses fails with its
    /// refusal. A refusal has been injected in the message's place.
    fn upstream_statement(&mut self, name: &str) -> Target {
        let (Some(enforcer), Some(principal)) = (&self.shared.enforcer, &self.principal) else {
            return Target::Passthrough;
        };
        let generation = enforcer.generation();
        let Some(prepared) = self.statements.get_mut(name) else {
            let fresh = self.statements.fresh();
            self.inject_parse(
                &fresh,
                Rejection {
                    code: "26000",
                    message: format!("prepared statement \"{name}\" does not exist"),
                },
            );
            return Target::Refused;
        };
        let path = self.search_path.version();
        if prepared.generation != generation || prepared.search_path != path {
            // Deciding again is a decision: not while the log cannot record it.
            if !self.audit_allows() {
                let fresh = self.statements.fresh();
                self.inject_parse(&fresh, Self::audit_refusal());
                return Target::Refused;
            }
            let Some(prepared) = self.statements.get_mut(name) else {
                return Target::Refused;
            };
            prepared.generation = generation;
            prepared.search_path = path;
            let result = enforcer.rewrite(
                principal,
                self.search_path.current(),
                &prepared.sql,
                Protocol::Extended,
            );
            let param_types = prepared.param_types.clone();
            let shape = prepared.shape;
            // A new decision under the new version: the statement's next Executes are its
            // outcomes, and replay decides them under the version that ran them.
            if self.shared.audit.is_some() {
                let sql = prepared.sql.clone();
                let decision = self.record(Protocol::Extended, &sql, &result);
                self.note_statement_decision(name, decision);
            }
            let fresh = self.statements.fresh();
            let refused = match result.as_ref() {
                // The client decodes rows by the columns it was told of at Parse: a rewrite
                // that exposes other columns fails as PostgreSQL fails a cached plan whose
                // result type changed (drivers prepare again), rather than return rows the
                // client would misread.
                Ok(c) if c.shape != shape => Some(Rejection {
                    code: "0A000",
                    message: "cached plan must not change result type: a policy or catalog \
                              change altered the columns this prepared statement returns; \
                              prepare it again"
                        .into(),
                }),
                Ok(c) => {
                    if let Some(p) = self.statements.get_mut(name) {
                        p.changes_search_path = c.search_path_changes;
                    }
                    query::encode_parse(&mut self.to_upstream, &fresh, &c.sql, &param_types);
                    self.pipeline
                        .push_statement(Expect::Parse, Reply::Hide, fresh.clone());
                    None
                }
                Err(refusal) => {
                    debug!(agent = %self.agent, statement = name, "prepared statement refused under the new policy version: {refusal}");
                    Some(refusal.into())
                }
            };
            self.statements.repoint(name, fresh);
            if let Some(p) = self.statements.get_mut(name) {
                p.refused = refused;
            }
        }
        let Some(prepared) = self.statements.get_mut(name) else {
            return Target::Refused;
        };
        match prepared.refused.clone() {
            None => Target::Ready,
            Some(rejection) => {
                let fresh = self.statements.fresh();
                self.inject_parse(&fresh, rejection);
                Target::Refused
            }
        }
    }

    /// Hidden Closes of the upstream statements no client name stands for any more.
    fn close_orphans(&mut self) {
        let orphans = self.statements.take_orphans();
        if orphans.is_empty() {
            return;
        }
        for upstream in orphans {
            extended::encode_close_statement(&mut self.to_upstream, &upstream);
            self.pipeline
                .push_statement(Expect::Close, Reply::Hide, upstream);
        }
        // Their replies come now, not with the client's next Sync.
        query::encode_flush(&mut self.to_upstream);
    }

    /// Handles a Query; returns its decision record's id and how many statements went upstream
    /// (whose results are then matched to outcome records).
    fn on_query(&mut self, msg: &[u8]) -> (Option<Arc<str>>, usize) {
        let Some(sql) = query::decode_query(msg) else {
            self.inject_query(invalid_text());
            return (None, 0);
        };
        if sql.len() > self.shared.max_query_bytes {
            self.inject_query(too_long(self.shared.max_query_bytes));
            return (None, 0);
        }
        // A simple Query drops the unnamed prepared statement and portal, as in PostgreSQL.
        self.statements.release("");
        self.statement_plans.remove("");
        self.portal_plans.remove("");
        if !self.audit_allows() {
            self.inject_query(Self::audit_refusal());
            return (None, 0);
        }
        let checked = self.gate(sql, Protocol::Simple);
        let decision = self.record(Protocol::Simple, sql, &checked);
        if checked
            .as_ref()
            .as_ref()
            .is_ok_and(|c| c.search_path_changes)
        {
            self.search_path.may_change();
        }
        match checked.as_ref() {
            Ok(c) if self.shared.enforcer.is_some() && c.prepared != PreparedEffect::None => {
                match &c.prepared {
                    PreparedEffect::Drop(name) => match self.statements.remove(name) {
                        Some(upstream) => {
                            let sql = format!("DEALLOCATE {}", quote_ident(&upstream));
                            query::encode_query(&mut self.to_upstream, &sql);
                            self.pipeline.push(Expect::Query, Reply::Forward);
                            (decision, 1)
                        }
                        None => {
                            self.inject_query(Rejection {
                                code: "26000",
                                message: format!("prepared statement \"{name}\" does not exist"),
                            });
                            (decision, 0)
                        }
                    },
                    _ => {
                        self.statements.clear();
                        query::encode_query(&mut self.to_upstream, &c.sql);
                        self.pipeline.push(Expect::Query, Reply::Forward);
                        (decision, c.statements)
                    }
                }
            }
            Ok(c) => {
                query::encode_query(&mut self.to_upstream, &c.sql);
                self.pipeline.push(Expect::Query, Reply::Forward);
                (decision, c.statements)
            }
            Err(refusal) => {
                debug!(agent = %self.agent, "refused: {refusal}");
                self.inject_query(refusal.into());
                (decision, 0)
            }
        }
    }

    fn on_parse(&mut self, msg: &[u8]) -> Result<(), SessionError> {
        let parse = match query::decode_parse(msg) {
            Ok(p) => {
                // A new statement under this name: the old one's description is gone.
                self.statement_plans.remove(p.name);
                p
            }
            Err(ParseDecodeError::Encoding) => {
                self.inject_parse("", invalid_text());
                return Ok(());
            }
            Err(ParseDecodeError::Malformed) => {
                return Err(SessionError::ClientProtocol(
                    "malformed Parse message".into(),
                ));
            }
        };
        if parse.sql.len() > self.shared.max_query_bytes {
            self.inject_parse(parse.name, too_long(self.shared.max_query_bytes));
            return Ok(());
        }
        let shared = self.shared;
        if !self.audit_allows() {
            let name = match shared.enforcer {
                Some(_) => self.statements.fresh(),
                None => parse.name.into(),
            };
            self.inject_parse(&name, Self::audit_refusal());
            return Ok(());
        }
        let Some(enforcer) = &shared.enforcer else {
            // Gate only: names pass through unchanged.
            let checked = self.gate(parse.sql, Protocol::Extended);
            let decision = self.record(Protocol::Extended, parse.sql, &checked);
            self.note_statement_decision(parse.name, decision);
            match checked.as_ref() {
                Ok(c) => {
                    query::encode_parse(
                        &mut self.to_upstream,
                        parse.name,
                        &c.sql,
                        parse.param_types,
                    );
                    self.pipeline.push(Expect::Parse, Reply::Forward);
                }
                Err(refusal) => {
                    debug!(agent = %self.agent, "refused: {refusal}");
                    self.inject_parse(parse.name, refusal.into());
                }
            }
            return Ok(());
        };
        // A new unnamed statement replaces the old one, whose upstream statement may serve it.
        if parse.name.is_empty() {
            self.statements.release("");
        }
        // Every Parse gets a fresh upstream name, or an idle statement prepared with the same
        // rewrite (see `statements`).
        let upstream = self.statements.fresh();
        if !parse.name.is_empty() && self.statements.contains(parse.name) {
            let message = format!("prepared statement \"{}\" already exists", parse.name);
            self.inject_parse(
                &upstream,
                Rejection {
                    code: "42P05",
                    message,
                },
            );
            return Ok(());
        }
        // Read before rewriting: the rewrite is never older than the generation recorded.
        let generation = enforcer.generation();
        let checked = self.gate(parse.sql, Protocol::Extended);
        let decision = self.record(Protocol::Extended, parse.sql, &checked);
        self.note_statement_decision(parse.name, decision);
        match checked.as_ref() {
            Ok(c) => {
                if c.search_path_changes {
                    self.search_path.may_change();
                }
                let key = ReuseKey {
                    sql: c.sql.as_str().into(),
                    param_types: parse.param_types.into(),
                    generation,
                    search_path: self.search_path.version(),
                };
                let mut take = 0;
                let upstream = match self.statements.take_idle(&key) {
                    Some((idle, token)) => {
                        take = token;
                        // The client's ParseComplete comes from parsing nothing into the
                        // upstream unnamed statement, in the Parse's place in the pipeline.
                        query::encode_parse(&mut self.to_upstream, "", "", &[0, 0]);
                        self.pipeline.push_reused(idle.clone(), token);
                        crate::metrics::metrics().statements_reused.inc();
                        idle
                    }
                    None => {
                        query::encode_parse(
                            &mut self.to_upstream,
                            &upstream,
                            &c.sql,
                            parse.param_types,
                        );
                        self.pipeline.push_statement(
                            Expect::Parse,
                            Reply::Forward,
                            upstream.clone(),
                        );
                        self.statements.remember(upstream.clone(), key);
                        upstream
                    }
                };
                self.statements.insert(
                    parse.name,
                    Prepared {
                        upstream,
                        sql: parse.sql.into(),
                        param_types: parse.param_types.into(),
                        generation,
                        search_path: self.search_path.version(),
                        changes_search_path: c.search_path_changes,
                        shape: c.shape,
                        refused: None,
                        take,
                    },
                );
            }
            Err(refusal) => {
                debug!(agent = %self.agent, "refused: {refusal}");
                // A failed Parse of the unnamed statement drops the old one, as in PostgreSQL
                // (released above).
                self.inject_parse(&upstream, refusal.into());
            }
        }
        Ok(())
    }

    /// Whether a statement may run now as far as the audit log goes: not while the log cannot
    /// be written, unless `fail_open` (the statement is then counted, for the outage's record).
    fn audit_allows(&self) -> bool {
        match &self.shared.audit {
            Some(audit) if !audit.healthy() => {
                if audit.fail_open {
                    audit.let_through();
                }
                audit.fail_open
            }
            _ => true,
        }
    }

    fn audit_refusal() -> Rejection {
        Rejection {
            code: crate::audit_record::UNWRITABLE_CODE,
            message: crate::audit_record::UNWRITABLE_MESSAGE.into(),
        }
    }

    /// Queues the decision record of `sql` (sent before the statement goes upstream); returns
    /// its id.
    fn record(&mut self, protocol: Protocol, sql: &str, result: &GateResult) -> Option<Arc<str>> {
        self.counters.count(match result.as_ref() {
            Ok(_) if self.shared.enforcer.is_some() => "rewrite",
            Ok(_) => "allow",
            Err(_) => "deny",
        });
        let audit = self.shared.audit.as_ref()?;
        let id: Arc<str> = crate::audit_record::new_id().into();
        let facts = crate::audit_record::SessionFacts {
            node: &audit.node_id,
            session: &self.session_id,
            agent: &self.agent,
            on_behalf_of: self.on_behalf_of.as_deref(),
            client: Some(self.client_addr),
            tls: self.client.is_tls(),
            enforcing: self.shared.enforcer.is_some(),
            search_path: self.search_path.current().map(|p| &p.schemas[..]),
            redact: audit.redact_literals,
            versions: match (&self.shared.enforcer, result.as_ref()) {
                (Some(enforcer), Err(_)) => Some((
                    enforcer.policies.current().version.to_string(),
                    enforcer.catalog().hash.clone(),
                )),
                _ => None,
            },
        };
        let record = crate::audit_record::decision(&facts, &id, protocol, sql, result);
        self.audit_pending.push(record);
        Some(id)
    }

    /// Remembers which decision a prepared statement's Executes are outcomes of.
    fn note_statement_decision(&mut self, name: &str, decision: Option<Arc<str>>) {
        match decision {
            Some(d) => self.statement_decisions.insert(name.to_string(), d),
            None => self.statement_decisions.remove(name),
        };
    }

    /// The statement to forward: rewritten under policy when enforcement is on, else only
    /// gate-checked.
    fn gate(&self, sql: &str, protocol: Protocol) -> GateResult {
        match (&self.shared.enforcer, &self.principal) {
            (Some(enforcer), Some(principal)) => {
                enforcer.rewrite(principal, self.search_path.current(), sql, protocol)
            }
            _ => self.shared.gate.check(sql, protocol),
        }
    }

    fn inject_query(&mut self, rejection: Rejection) {
        query::encode_query(&mut self.to_upstream, REFUSAL_SQL);
        self.pipeline.push(Expect::Query, Reply::Refuse(rejection));
    }

    /// A Parse of `name` that fails upstream (so the name is left unprepared, as a failed Parse
    /// leaves it in PostgreSQL) and whose error is replaced by `rejection`.
    fn inject_parse(&mut self, name: &str, rejection: Rejection) {
        query::encode_parse(&mut self.to_upstream, name, REFUSAL_SQL, &[0, 0]);
        // Make the error arrive even if the client waits on a Flush we are about to skip.
        query::encode_flush(&mut self.to_upstream);
        self.pipeline.push(Expect::Parse, Reply::Refuse(rejection));
        self.skip_until_sync = true;
    }

    /// Accounts for and forwards what the upstream sent, replacing injected refusals' errors.
    fn on_upstream_data(&mut self) -> Result<(), SessionError> {
        loop {
            if self.passthrough > 0 {
                let n = self.passthrough.min(self.from_upstream.len());
                self.to_client.extend_from_slice(&self.from_upstream[..n]);
                if self.passthrough_row {
                    self.outcomes.row_bytes(&self.from_upstream[..n], false);
                }
                self.from_upstream.advance(n);
                self.passthrough -= n;
                if self.passthrough == 0 {
                    self.passthrough_row = false;
                }
            }
            if self.dropping > 0 {
                let n = self.dropping.min(self.from_upstream.len());
                self.from_upstream.advance(n);
                self.dropping -= n;
            }
            if self.passthrough > 0 || self.dropping > 0 {
                return Ok(());
            }
            let (tag, size) = match frame::peek_header(&self.from_upstream) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(()),
                Err(e) => return Err(SessionError::UpstreamProtocol(e.to_string())),
            };
            match tag {
                b'S' | b'Z' => {
                    if size > MAX_INSPECTED {
                        return Err(SessionError::UpstreamProtocol(
                            "oversized status message".into(),
                        ));
                    }
                    if self.from_upstream.len() < size {
                        return Ok(());
                    }
                    if tag == b'S' {
                        check_parameter_status(&self.from_upstream[..size])?;
                    }
                    let status = self.from_upstream.get(5).copied();
                    if self.account(tag)? == Action::ReadDone {
                        self.end_read(status.unwrap_or(b'E'));
                        self.from_upstream.advance(size);
                        continue;
                    }
                    if tag == b'Z' {
                        self.ready = status;
                        if self.shared.audit.is_some() {
                            let records = self.outcomes.ready();
                            self.outcome_records.extend(records);
                            // Describes an error made the backend skip never answer.
                            self.describing.clear();
                            self.describing_portals.clear();
                            self.described = None;
                        }
                    }
                    self.passthrough = size;
                }
                // Captured keys: a RowDescription says which columns hold them, for the
                // statement whose rows follow or for a described prepared statement.
                b't' | b'T' | b'n' if self.shared.captured.is_some() => {
                    if tag == b'T' && size <= MAX_ROW_DESCRIPTION && self.from_upstream.len() < size
                    {
                        return Ok(());
                    }
                    // A Describe's answer (else a simple Query's RowDescription).
                    let describes = self.pipeline.front_is_describe();
                    match self.account(tag)? {
                        Action::Drop => self.dropping = size,
                        _ => {
                            match tag {
                                b't' => self.described = self.describing.pop_front(),
                                b'T' => {
                                    let plan = self.shared.captured.as_ref().and_then(|c| {
                                        (size <= MAX_ROW_DESCRIPTION)
                                            .then(|| c.current().plan(&self.from_upstream[..size]))
                                            .flatten()
                                    });
                                    match self.described.take() {
                                        Some(name) => match plan {
                                            Some(p) => {
                                                self.statement_plans.insert(name, p);
                                            }
                                            None => {
                                                self.statement_plans.remove(&name);
                                            }
                                        },
                                        None if describes => self.describe_portal(plan),
                                        None => self.outcomes.describe(plan),
                                    }
                                }
                                _ => match self.described.take() {
                                    Some(name) => {
                                        self.statement_plans.remove(&name);
                                    }
                                    None if describes => self.describe_portal(None),
                                    None => {}
                                },
                            }
                            self.passthrough = size;
                        }
                    }
                }
                // Under audit, a command's completion is read whole for its outcome record.
                b'C' | b'I' | b's' if self.shared.audit.is_some() => {
                    if size <= MAX_INSPECTED && self.from_upstream.len() < size {
                        return Ok(());
                    }
                    match self.account(tag)? {
                        Action::Drop => self.dropping = size,
                        _ => {
                            let tag_text = match tag {
                                b'C' if size <= MAX_INSPECTED => {
                                    let mut pos = 5;
                                    messages_read_cstr(&self.from_upstream[..size], &mut pos)
                                }
                                b's' => Some("suspended"),
                                _ => None,
                            };
                            if let Some(record) = self.outcomes.complete(tag_text) {
                                self.outcome_records.push(record);
                            }
                            self.passthrough = size;
                        }
                    }
                }
                b'D' if self.pipeline.front_is_read() => {
                    if size > MAX_INSPECTED {
                        return Err(SessionError::UpstreamProtocol("oversized row".into()));
                    }
                    if self.from_upstream.len() < size {
                        return Ok(());
                    }
                    self.account(tag)?;
                    self.read_value =
                        rows::first_text(&self.from_upstream[..size]).map(str::to_string);
                    self.from_upstream.advance(size);
                }
                b'E' => {
                    let enforcing = self.shared.enforcer.is_some();
                    // Under enforcement an error is read whole, to be redacted.
                    if enforcing && size <= MAX_ERROR && self.from_upstream.len() < size {
                        return Ok(());
                    }
                    let action = self.account(tag)?;
                    for lost in self.pipeline.take_lost() {
                        self.statements.on_lost(lost);
                    }
                    if self.shared.audit.is_some() && matches!(action, Action::Forward) {
                        let code = (self.from_upstream.len() >= size)
                            .then(|| error_sqlstate(&self.from_upstream[..size]))
                            .flatten();
                        if let Some(record) = self.outcomes.error(code) {
                            self.outcome_records.push(record);
                        }
                    }
                    match action {
                        Action::Drop => self.dropping = size,
                        Action::Replace(rejection) => {
                            error_response(
                                &mut self.to_client,
                                Severity::Error,
                                rejection.code,
                                &rejection.message,
                                None,
                            );
                            self.dropping = size;
                        }
                        _ if !enforcing => self.passthrough = size,
                        _ if size > MAX_ERROR => {
                            error_response(
                                &mut self.to_client,
                                Severity::Error,
                                "XX000",
                                "the database reported an error too large to check; Portcullis withheld it",
                                None,
                            );
                            self.dropping = size;
                        }
                        _ => {
                            redact_upstream_error(
                                &mut self.to_client,
                                &self.from_upstream[..size],
                                rewriter::VIOLATION_MARKER,
                            );
                            self.from_upstream.advance(size);
                        }
                    }
                }
                // Under enforcement a notice is read whole and redacted like an error; one too
                // large to check is dropped (it is only informational), never passed unread.
                b'N' if self.shared.enforcer.is_some() => {
                    if size > MAX_ERROR {
                        self.account(tag)?;
                        self.dropping = size;
                        continue;
                    }
                    if self.from_upstream.len() < size {
                        return Ok(());
                    }
                    self.account(tag)?;
                    redact_upstream_notice(&mut self.to_client, &self.from_upstream[..size]);
                    self.from_upstream.advance(size);
                }
                _ => match self.account(tag)? {
                    Action::Drop => self.dropping = size,
                    _ => {
                        if self.shared.audit.is_some() {
                            match tag {
                                b'D' => {
                                    self.passthrough_row = true;
                                    self.outcomes.row_bytes(&[], true);
                                }
                                b'H' => self.outcomes.copy_out(self.shared.captured.is_some()),
                                b'd' => {
                                    self.passthrough_row = true;
                                    self.outcomes.copy_data();
                                }
                                _ => {}
                            }
                        }
                        self.passthrough = size;
                    }
                },
            }
        }
    }

    /// The answer to the oldest outstanding Describe of a portal: its rows' key columns.
    fn describe_portal(&mut self, plan: Option<captured_keys::Plan>) {
        let Some(name) = self.describing_portals.pop_front() else {
            return;
        };
        self.outcomes.describe_portal(&name, plan.clone());
        match plan {
            Some(p) => self.portal_plans.insert(name, p),
            None => self.portal_plans.remove(&name),
        };
    }

    fn account(&mut self, tag: u8) -> Result<Action, SessionError> {
        let action = self
            .pipeline
            .on_backend(tag)
            .map_err(|e| SessionError::UpstreamProtocol(e.to_string()))?;
        if tag == backend::PARSE_COMPLETE {
            for created in self.pipeline.take_created() {
                self.statements.on_created(&created);
            }
        }
        Ok(action)
    }
}

/// The settings that change how SQL is lexed must stay as Portcullis pinned them; if the server
/// ever reports otherwise (a path the gate missed), the session ends rather than go on unsafely.
fn check_parameter_status(msg: &[u8]) -> Result<(), SessionError> {
    let Some((name, value)) = status::decode_parameter_status(msg) else {
        return Err(SessionError::UpstreamProtocol(
            "malformed ParameterStatus".into(),
        ));
    };
    let bad = match name {
        "standard_conforming_strings" => value != "on",
        "client_encoding" => value != "UTF8",
        _ => false,
    };
    if bad {
        return Err(SessionError::UpstreamProtocol(format!(
            "pinned setting {name} changed to {value}"
        )));
    }
    Ok(())
}

fn invalid_text() -> Rejection {
    Rejection {
        code: "22021",
        message: "invalid byte sequence for encoding \"UTF8\" in the statement".into(),
    }
}

fn too_long(max: usize) -> Rejection {
    Rejection {
        code: "54000",
        message: format!("statement is longer than Portcullis's limit of {max} bytes"),
    }
}

/// Where a Bind or Describe of a client's statement goes.
enum Target {
    /// Unchanged (no enforcement).
    Passthrough,
    /// To the upstream statement the name stands for now (`Statements::upstream`).
    Ready,
    /// Nowhere: a refusal was injected.
    Refused,
}
