//! The node's audit log writer. One OS thread owns the log files (blocking I/O never runs on
//! the async runtime). Sessions hand it their decision records; it appends everything queued in
//! one write and one fsync (group commit across sessions) and acknowledges each sender, so that
//! in `sync` mode no statement goes upstream before its record is durable. It publishes a
//! signed checkpoint every `checkpoint_ms` when entries were added, and on shutdown.
//!
//! When an append fails (disk full, permissions, the file gone), the log is unhealthy: sessions
//! refuse new statements (58030) unless `fail_open` is set. The thread retries every second by
//! appending a record of the outage itself (when it began, the error, and how many statements
//! were let through unrecorded under `fail_open`); once that succeeds, traffic resumes.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use tokio::sync::oneshot;
use tracing::{error, info};

/// When a statement may go upstream relative to its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// After its record is fsynced (group commit).
    #[default]
    Sync,
    /// At once; records are fsynced in groups at most `batch_ms` apart.
    Batch,
    /// At once; records are written as they come.
    Async,
}

/// `[audit]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// The log directory.
    pub dir: PathBuf,
    /// The node's private key (`portcullis audit keygen`).
    pub key_file: PathBuf,
    /// This node's id; the log's origin is `portcullis/<node_id>`.
    pub node_id: String,
    #[serde(default)]
    pub mode: Durability,
    #[serde(default = "default_batch_ms")]
    pub batch_ms: u64,
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_ms: u64,
    /// Let statements through, unrecorded, while the log cannot be written.
    #[serde(default)]
    pub fail_open: bool,
    /// Tables (`schema.table`, with a primary key) whose keys are recorded for every row
    /// returned; needs `[policies]` (the catalog is read then).
    #[serde(default)]
    pub capture_keys: Vec<String>,
    /// Record statements with their literals replaced by `'?'` (and the SHA-256 of the text as
    /// received), so records hold no values agents asked about.
    #[serde(default)]
    pub redact_literals: bool,
    /// Bind parameters in outcome records: `digest` (SHA-256 per value, the default) or
    /// `clear`.
    #[serde(default)]
    pub parameters: Parameters,
    /// Shipping entries to a PostgreSQL table (see `audit_export`).
    pub export: Option<crate::audit_export::ExportConfig>,
}

/// How outcome records hold Bind parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Parameters {
    #[default]
    Digest,
    Clear,
}

fn default_batch_ms() -> u64 {
    10
}

fn default_checkpoint_ms() -> u64 {
    1000
}

/// Subdirectories of the log directory for what replay loads by hash.
pub const CATALOGS: &str = "catalogs";
pub const POLICY_VERSIONS: &str = "policy-versions";

type Ack = oneshot::Sender<Result<(), String>>;

enum Message {
    Append(Vec<Vec<u8>>, Option<Ack>),
    Shutdown,
}

/// The handle sessions use.
pub struct AuditLog {
    pub node_id: String,
    pub dir: PathBuf,
    pub redact_literals: bool,
    pub parameters: Parameters,
    pub mode: Durability,
    pub fail_open: bool,
    sender: Mutex<mpsc::Sender<Message>>,
    healthy: Arc<AtomicBool>,
    /// Statements let through unrecorded (fail_open) during the current outage.
    unrecorded: Arc<AtomicU64>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl AuditLog {
    /// Opens the log (a start-up error if the key or directory is unusable) and starts the
    /// writer thread.
    pub fn start(config: &AuditConfig) -> anyhow::Result<AuditLog> {
        use anyhow::Context;
        let key = std::fs::read_to_string(&config.key_file)
            .with_context(|| format!("audit.key_file {}", config.key_file.display()))?;
        let origin = format!("portcullis/{}", config.node_id);
        let log = audit::Log::open(&config.dir, &origin, &key)?;
        info!(origin, entries = log.size(), dir = %config.dir.display(), mode = ?config.mode, "audit log open");
        let (sender, receiver) = mpsc::channel();
        let healthy = Arc::new(AtomicBool::new(true));
        let unrecorded = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            log,
            receiver,
            healthy: healthy.clone(),
            unrecorded: unrecorded.clone(),
            batch: match config.mode {
                Durability::Batch => Duration::from_millis(config.batch_ms),
                _ => Duration::ZERO,
            },
            checkpoint_every: Duration::from_millis(config.checkpoint_ms.max(10)),
            fail_open: config.fail_open,
        };
        let thread = std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run())?;
        Ok(AuditLog {
            node_id: config.node_id.clone(),
            dir: config.dir.clone(),
            redact_literals: config.redact_literals,
            parameters: config.parameters,
            mode: config.mode,
            fail_open: config.fail_open,
            sender: Mutex::new(sender),
            healthy,
            unrecorded,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Keeps a catalog snapshot (canonical JSON) under its hash, for replay. Blocking.
    pub fn keep_catalog(&self, hash: &str, snapshot: &[u8]) -> std::io::Result<()> {
        let dir = self.dir.join(CATALOGS);
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{hash}.json"));
        if path.exists() {
            return Ok(());
        }
        let tmp = dir.join(format!("{hash}.tmp"));
        std::fs::write(&tmp, snapshot)?;
        std::fs::File::open(&tmp)?.sync_all()?;
        std::fs::rename(&tmp, &path)
    }

    /// Whether the log can be written now.
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Counts a statement let through unrecorded (fail_open).
    pub fn let_through(&self) {
        self.unrecorded.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands records to the writer; in `sync` mode the answer says when they are durable.
    pub fn submit(&self, entries: Vec<Vec<u8>>) -> Option<oneshot::Receiver<Result<(), String>>> {
        let (ack, answer) = match self.mode {
            Durability::Sync => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            _ => (None, None),
        };
        let queued = entries.len() as i64;
        let queue = &crate::metrics::metrics().audit_queue;
        queue.inc_by(queued);
        let sent = self
            .sender
            .lock()
            .expect("audit sender")
            .send(Message::Append(entries, ack));
        if sent.is_err() {
            // The writer is gone (shutting down): nothing can be recorded any more.
            queue.dec_by(queued);
            self.healthy.store(false, Ordering::Release);
        }
        answer
    }

    /// Writes what is queued, publishes a last checkpoint and stops the writer.
    pub fn shutdown(&self) {
        let _ = self
            .sender
            .lock()
            .expect("audit sender")
            .send(Message::Shutdown);
        if let Some(thread) = self.thread.lock().expect("audit thread").take() {
            let _ = thread.join();
        }
    }
}

struct Writer {
    log: audit::Log,
    receiver: mpsc::Receiver<Message>,
    healthy: Arc<AtomicBool>,
    unrecorded: Arc<AtomicU64>,
    batch: Duration,
    checkpoint_every: Duration,
    fail_open: bool,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Writer {
    fn run(mut self) {
        // Group commit at work: how many fsyncs carried how many entries.
        let (mut appends, mut appended) = (0u64, 0u64);
        let mut last_checkpoint = Instant::now();
        let mut dirty = false;
        let mut outage: Option<(u64, String)> = None;
        loop {
            // Idle with nothing to checkpoint, the writer sleeps until a message comes (waking
            // once per checkpoint interval): a zero wait here would spin a core.
            let wait = if outage.is_some() {
                Duration::from_secs(1)
            } else if dirty {
                self.checkpoint_every
                    .saturating_sub(last_checkpoint.elapsed())
            } else {
                self.checkpoint_every
            };
            let first = match self.receiver.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => Some(Message::Shutdown),
            };
            let mut messages: Vec<Message> = first.into_iter().collect();
            if !messages.is_empty() && !self.batch.is_zero() {
                let until = Instant::now() + self.batch;
                while let Some(left) = until.checked_duration_since(Instant::now()) {
                    match self.receiver.recv_timeout(left) {
                        Ok(m) => messages.push(m),
                        Err(_) => break,
                    }
                }
            }
            messages.extend(self.receiver.try_iter());
            let stop = messages.iter().any(|m| matches!(m, Message::Shutdown));
            let mut entries = Vec::new();
            let mut acks = Vec::new();
            for m in messages {
                if let Message::Append(e, ack) = m {
                    entries.extend(e);
                    acks.extend(ack);
                }
            }
            if let Some((since, why)) = &outage {
                // Retry with the outage's own record first.
                let record = serde_json::json!({
                    "kind": "audit_outage",
                    "since_ms": since,
                    "until_ms": now_ms(),
                    "error": why,
                    "fail_open": self.fail_open,
                    "unrecorded_statements": self.unrecorded.load(Ordering::Relaxed),
                });
                let bytes = audit::canonical(&record).expect("no floats");
                if self.log.append(&[bytes]).is_ok() {
                    info!("the audit log can be written again; statements resume");
                    self.unrecorded.store(0, Ordering::Relaxed);
                    self.healthy.store(true, Ordering::Release);
                    outage = None;
                    dirty = true;
                }
            }
            if !entries.is_empty() {
                // fsync only when a session waits for it (sync mode) or in batch mode; other
                // records (outcomes, async mode) become durable with the next fsync or
                // checkpoint.
                let durable = !acks.is_empty() || !self.batch.is_zero();
                let metrics = crate::metrics::metrics();
                metrics.audit_queue.dec_by(entries.len() as i64);
                let began = Instant::now();
                let result = if outage.is_some() {
                    Err("the audit log cannot be written".to_string())
                } else {
                    self.log
                        .append_with(&entries, durable)
                        .map(|_| ())
                        .map_err(|e| e.to_string())
                };
                if result.is_ok() {
                    if durable {
                        metrics.audit_fsync.observe(began.elapsed().as_secs_f64());
                    }
                    metrics.audit_entries.inc_by(entries.len() as u64);
                }
                match &result {
                    Ok(()) => {
                        dirty = true;
                        if durable {
                            appends += 1;
                        }
                        appended += entries.len() as u64;
                    }
                    Err(e) => {
                        if outage.is_none() {
                            error!("audit log append failed: {e}; refusing statements until it can be written");
                            outage = Some((now_ms(), e.clone()));
                            self.healthy.store(false, Ordering::Release);
                        }
                    }
                }
                for ack in acks {
                    let _ = ack.send(result.clone());
                }
            }
            if dirty && (stop || last_checkpoint.elapsed() >= self.checkpoint_every) {
                match self.log.checkpoint() {
                    Ok(_) => dirty = false,
                    Err(e) => error!("audit checkpoint failed: {e}"),
                }
                last_checkpoint = Instant::now();
            }
            if stop {
                let mean_batch = if appends == 0 {
                    0.0
                } else {
                    appended as f64 / appends as f64
                };
                info!(
                    entries = self.log.size(),
                    appends,
                    mean_batch = format!("{mean_batch:.2}"),
                    "audit log closed"
                );
                return;
            }
        }
    }
}
