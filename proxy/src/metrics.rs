//! The process's Prometheus metrics: what sessions, caches and the audit writer count, and
//! their text exposition for the admin listener's `/metrics`.
//!
//! One registry per process (`metrics()`). Sessions take their agent's counters once, at
//! login, so a statement costs an atomic add, not a label lookup.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatementLabels {
    pub agent: String,
    /// `allow`, `rewrite` or `deny`.
    pub decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `rewrite` (statement to rewrite) or `derivation` (agent and table to rules).
    pub cache: String,
    /// `hit` or `miss`.
    pub result: String,
}

pub struct Metrics {
    registry: Registry,
    statements: Family<StatementLabels, Counter>,
    /// Sessions open now.
    pub sessions: Gauge,
    /// Sessions opened since start.
    pub sessions_opened: Counter,
    /// Audit entries handed to the writer and not yet written.
    pub audit_queue: Gauge,
    /// Audit entries written.
    pub audit_entries: Counter,
    /// The duration of each durable append (write and fdatasync).
    pub audit_fsync: Histogram,
    /// 1 while the audit log can be written.
    pub audit_writable: Gauge,
    /// Audit entries exported to the `[audit.export]` table.
    pub audit_exported: Counter,
    /// 1 once the export stopped because the table holds other entries than the log.
    pub audit_export_stopped: Gauge,
    /// Cache counters, fetched once.
    pub rewrite_hit: Counter,
    pub rewrite_miss: Counter,
    /// Statements filled into a template learnt from another with other constants.
    pub shape_hit: Counter,
    pub shape_miss: Counter,
    /// Parses answered with an idle upstream statement prepared before with the same rewrite.
    pub statements_reused: Counter,
    pub derivation_hit: Counter,
    pub derivation_miss: Counter,
}

/// One agent's statement counters, by decision.
#[derive(Clone)]
pub struct AgentStatements {
    pub allow: Counter,
    pub rewrite: Counter,
    pub deny: Counter,
}

impl AgentStatements {
    pub fn count(&self, decision: &str) {
        match decision {
            "allow" => self.allow.inc(),
            "rewrite" => self.rewrite.inc(),
            _ => self.deny.inc(),
        };
    }
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let statements = Family::<StatementLabels, Counter>::default();
        add(
            &mut registry,
            "statements",
            "Statements agents sent, by agent and decision (allow, rewrite, deny)",
            &statements,
        );
        let cache = Family::<CacheLabels, Counter>::default();
        add(
            &mut registry,
            "cache_lookups",
            "Rewrite and derivation cache lookups, by cache and result (hit, miss)",
            &cache,
        );
        let sessions = Gauge::default();
        add(
            &mut registry,
            "sessions",
            "Agent sessions open now",
            &sessions,
        );
        let sessions_opened = Counter::default();
        add(
            &mut registry,
            "sessions_opened",
            "Agent sessions opened since start",
            &sessions_opened,
        );
        let audit_queue = Gauge::default();
        add(
            &mut registry,
            "audit_queue_depth",
            "Audit entries waiting for the writer",
            &audit_queue,
        );
        let audit_entries = Counter::default();
        add(
            &mut registry,
            "audit_entries",
            "Audit entries written",
            &audit_entries,
        );
        let audit_fsync = Histogram::new(exponential_buckets(0.000_05, 2.0, 16));
        add(
            &mut registry,
            "audit_fsync_seconds",
            "Durable audit appends (one write and one fdatasync for a group of entries)",
            &audit_fsync,
        );
        let audit_writable = Gauge::default();
        add(
            &mut registry,
            "audit_writable",
            "1 while the audit log can be written, 0 while statements are refused (or let through under fail_open)",
            &audit_writable,
        );
        let audit_exported = Counter::default();
        add(
            &mut registry,
            "audit_exported",
            "Audit entries exported to the [audit.export] table",
            &audit_exported,
        );
        let audit_export_stopped = Gauge::default();
        add(
            &mut registry,
            "audit_export_stopped",
            "1 once the audit export stopped: the table holds other entries than the log",
            &audit_export_stopped,
        );
        let counter = |name: &str, result: &str| {
            cache
                .get_or_create(&CacheLabels {
                    cache: name.into(),
                    result: result.into(),
                })
                .clone()
        };
        Metrics {
            rewrite_hit: counter("rewrite", "hit"),
            rewrite_miss: counter("rewrite", "miss"),
            shape_hit: counter("shape", "hit"),
            shape_miss: counter("shape", "miss"),
            statements_reused: counter("upstream_statement", "hit"),
            derivation_hit: counter("derivation", "hit"),
            derivation_miss: counter("derivation", "miss"),
            registry,
            statements,
            sessions,
            sessions_opened,
            audit_queue,
            audit_entries,
            audit_fsync,
            audit_writable,
            audit_exported,
            audit_export_stopped,
        }
    }

    /// The statement counters of `agent`.
    /// Counts one statement (or vector request) of `agent` with `decision` (`allow`, `rewrite`
    /// or `deny`); for callers that count one at a time rather than per session.
    pub fn statement(&self, agent: &str, decision: &'static str) {
        self.statements
            .get_or_create(&StatementLabels {
                agent: agent.into(),
                decision: decision.into(),
            })
            .inc();
    }

    pub fn agent(&self, agent: &str) -> AgentStatements {
        let get = |decision: &str| {
            self.statements
                .get_or_create(&StatementLabels {
                    agent: agent.into(),
                    decision: decision.into(),
                })
                .clone()
        };
        AgentStatements {
            allow: get("allow"),
            rewrite: get("rewrite"),
            deny: get("deny"),
        }
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }
}

/// Registers a clone of `metric` (the registry keeps one handle, the caller the other).
fn add<M: prometheus_client::registry::Metric + Clone>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    metric: &M,
) {
    registry.register(name, help, metric.clone());
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A session counted in `sessions` for as long as it lives.
pub struct SessionGuard(());

impl SessionGuard {
    pub fn open() -> SessionGuard {
        let m = metrics();
        m.sessions.inc();
        m.sessions_opened.inc();
        SessionGuard(())
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        metrics().sessions.dec();
    }
}
