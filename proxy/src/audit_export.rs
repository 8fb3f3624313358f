//! Shipping the audit log to a PostgreSQL table (`[audit.export]`), so that a fleet's decisions
//! can be searched in one place; the local log stays the source of truth.
//!
//! Each entry covered by a published checkpoint becomes one row keyed by (origin, log index),
//! with the entry as logged (`entry_text`, the exact leaf bytes), as `jsonb` for queries, and
//! the signed checkpoint that covers it. Export is at least once: after a restart or a lost
//! connection it resumes after the table's highest index for this origin, and a row already
//! there is left alone, unless it differs from the log, which stops the export with an error
//! (two nodes sharing a node id, or an edited table). It runs on the async runtime; file reads
//! run on the blocking pool.

use std::path::PathBuf;
use std::time::Duration;

use rewriter::quote_ident;
use serde::Deserialize;
use tokio_postgres::NoTls;
use tracing::{info, warn};

/// `[audit.export]` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// The database the table is in, e.g. `postgres://audit_writer@audit-db/audit` (a role of
    /// its own: never the upstream's).
    pub url: String,
    /// An environment variable holding the password (overrides the URL's).
    pub password_env: Option<String>,
    /// The table, `name` or `schema.name`; created if missing.
    #[serde(default = "default_table")]
    pub table: String,
    /// How often to look for a new checkpoint.
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
}

fn default_table() -> String {
    "portcullis_audit".into()
}

fn default_interval_ms() -> u64 {
    1000
}

/// Entries per INSERT.
const BATCH: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("audit.export.table {0:?}: expected `name` or `schema.name`")]
    Table(String),
    #[error("audit.export.url: {0}")]
    Url(String),
    #[error("audit.export.password_env: environment variable {0} is not set")]
    Password(String),
    #[error("{0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("reading the audit log: {0}")]
    Log(#[from] std::io::Error),
    #[error(
        "the export table holds other entries for {origin} than its log, at index {index} \
         (two nodes with one node_id, a log replaced, or an edited table): export stopped"
    )]
    Diverged { origin: String, index: u64 },
}

/// The table's name, quoted for SQL (`"schema"."name"`).
pub fn quoted_table(table: &str) -> Result<String, ExportError> {
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty() || p.contains('\0')) {
        return Err(ExportError::Table(table.into()));
    }
    Ok(parts
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join("."))
}

/// The connection settings, with the password from the environment when configured.
pub fn connection(
    url: &str,
    password_env: Option<&str>,
) -> Result<tokio_postgres::Config, ExportError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| ExportError::Url(e.to_string()))?;
    if let Some(var) = password_env {
        let password = std::env::var(var).map_err(|_| ExportError::Password(var.into()))?;
        config.password(password);
    }
    Ok(config)
}

impl ExportConfig {
    /// Checks what can be checked without connecting (for start-up and `check-config`).
    pub fn check(&self) -> Result<(), ExportError> {
        quoted_table(&self.table)?;
        connection(&self.url, self.password_env.as_deref())?;
        Ok(())
    }
}

/// Exports the log in `dir` (origin `origin`) for as long as the process runs, reconnecting
/// with a growing pause after any failure.
pub async fn run(dir: PathBuf, origin: String, config: ExportConfig) {
    let mut pause = Duration::from_secs(1);
    loop {
        match export(&dir, &origin, &config).await {
            Ok(()) => pause = Duration::from_secs(1),
            Err(e @ ExportError::Diverged { .. }) => {
                // Retrying would skip past the foreign rows: an operator must look.
                tracing::error!("audit export: {e}");
                crate::metrics::metrics().audit_export_stopped.set(1);
                return;
            }
            Err(e) => {
                warn!("audit export: {e}; retrying in {}s", pause.as_secs());
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// One connection's worth of exporting; returns only on failure.
async fn export(
    dir: &std::path::Path,
    origin: &str,
    config: &ExportConfig,
) -> Result<(), ExportError> {
    let table = quoted_table(&config.table)?;
    let (mut client, connection) = connection(&config.url, config.password_env.as_deref())?
        .connect(NoTls)
        .await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
        .batch_execute(&create_table(&table, &config.table))
        .await?;
    let next: i64 = client
        .query_one(
            &format!("SELECT coalesce(max(log_index) + 1, 0) FROM {table} WHERE origin = $1"),
            &[&origin],
        )
        .await?
        .get(0);
    // The table's last entry of this origin must be the log's own: a second node with this
    // node_id, or a log replaced under the same name, is caught here, not skipped over.
    if next > 0 {
        let last: String = client
            .query_one(
                &format!("SELECT entry_text FROM {table} WHERE origin = $1 AND log_index = $2"),
                &[&origin, &(next - 1)],
            )
            .await?
            .get(0);
        let d = dir.to_path_buf();
        let index = (next - 1) as u64;
        let ours =
            tokio::task::spawn_blocking(move || audit::Tail::new(&d, index).read(index + 1, 1))
                .await
                .expect("reading an entry does not panic");
        let matches = match ours {
            Ok(entries) => entries.first().is_some_and(|e| e == last.as_bytes()),
            // The log holds fewer entries than the table.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(e) => return Err(e.into()),
        };
        if !matches {
            return Err(ExportError::Diverged {
                origin: origin.into(),
                index,
            });
        }
    }
    info!(
        origin,
        table = config.table,
        from = next,
        "exporting the audit log"
    );
    let insert = client
        .prepare(&format!(
            "INSERT INTO {table} (origin, log_index, entry, entry_text, checkpoint) \
             SELECT $1, i, e::jsonb, e, $2 FROM unnest($3::bigint[], $4::text[]) AS u(i, e) \
             ON CONFLICT (origin, log_index) DO NOTHING"
        ))
        .await?;
    // Rows already there (an earlier, interrupted export) must be the log's own.
    let differing = client
        .prepare(&format!(
            "SELECT min(u.i) FROM unnest($2::bigint[], $3::text[]) AS u(i, e) \
             JOIN {table} t ON t.origin = $1 AND t.log_index = u.i WHERE t.entry_text <> u.e"
        ))
        .await?;
    let mut tail = Some(audit::Tail::new(dir, next as u64));
    let interval = Duration::from_millis(config.interval_ms.max(10));
    loop {
        let d = dir.to_path_buf();
        let checkpoint = tokio::task::spawn_blocking(move || audit::latest_checkpoint(&d))
            .await
            .expect("reading a checkpoint does not panic")?;
        if let Some((size, note)) = checkpoint {
            let note = String::from_utf8_lossy(&note).into_owned();
            loop {
                let mut reader = tail.take().expect("the tail is put back after each read");
                let (reader, batch) = tokio::task::spawn_blocking(move || {
                    let batch = reader.read(size, BATCH);
                    (reader, batch)
                })
                .await
                .expect("reading entries does not panic");
                let first = reader.next_index();
                tail = Some(reader);
                let batch = batch?;
                if batch.is_empty() {
                    break;
                }
                let first = first - batch.len() as u64;
                let indexes: Vec<i64> = (0..batch.len() as i64).map(|i| first as i64 + i).collect();
                let texts: Vec<String> = batch
                    .into_iter()
                    .map(|e| String::from_utf8_lossy(&e).into_owned())
                    .collect();
                // One transaction: a batch that meets a foreign row leaves nothing behind.
                let transaction = client.transaction().await?;
                let inserted = transaction
                    .execute(&insert, &[&origin, &note, &indexes, &texts])
                    .await?;
                if inserted < texts.len() as u64 {
                    let row = transaction
                        .query_one(&differing, &[&origin, &indexes, &texts])
                        .await?;
                    if let Some(index) = row.get::<_, Option<i64>>(0) {
                        transaction.rollback().await?;
                        return Err(ExportError::Diverged {
                            origin: origin.into(),
                            index: index as u64,
                        });
                    }
                }
                transaction.commit().await?;
                crate::metrics::metrics()
                    .audit_exported
                    .inc_by(texts.len() as u64);
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// The table and its indexes (for `audit search` from the table: decisions by time, outcomes
/// by the decision they belong to).
fn create_table(table: &str, name: &str) -> String {
    let index = |suffix: &str| {
        let base = name.rsplit('.').next().unwrap_or(name);
        quote_ident(&format!("{base}_{suffix}"))
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            origin text NOT NULL,
            log_index bigint NOT NULL,
            entry jsonb NOT NULL,
            entry_text text NOT NULL,
            checkpoint text NOT NULL,
            exported_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (origin, log_index)
        );
        CREATE INDEX IF NOT EXISTS {decisions} ON {table} (((entry->>'time_ms')::bigint))
            WHERE entry->>'kind' = 'decision';
        CREATE INDEX IF NOT EXISTS {outcomes} ON {table} ((entry->>'decision'))
            WHERE entry->>'kind' = 'outcome';",
        decisions = index("decisions"),
        outcomes = index("outcomes"),
    )
}

/// `audit search` over an export table: decisions that match `query` (every origin), with
/// their outcomes, oldest first.
pub async fn search(
    url: &str,
    password_env: Option<&str>,
    table: &str,
    query: &audit::Query,
) -> Result<Vec<audit::Hit>, ExportError> {
    let table = quoted_table(table)?;
    let (client, connection) = connection(url, password_env)?.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    // The indexed fields narrow the rows; `Query::matches` decides, as for a directory.
    let since = query.since_ms.map(|t| t as i64);
    let until = query.until_ms.map(|t| t as i64);
    let rows = client
        .query(
            &format!(
                "SELECT origin, log_index, entry_text FROM {table} \
                 WHERE entry->>'kind' = 'decision' \
                   AND ($1::bigint IS NULL OR (entry->>'time_ms')::bigint >= $1) \
                   AND ($2::bigint IS NULL OR (entry->>'time_ms')::bigint <= $2) \
                   AND ($3::text IS NULL OR entry->>'agent' = $3) \
                   AND ($4::text IS NULL OR entry->>'decision' = $4) \
                 ORDER BY (entry->>'time_ms')::bigint, origin, log_index"
            ),
            &[&since, &until, &query.agent, &query.decision],
        )
        .await?;
    let parse = |row: &tokio_postgres::Row| {
        let text: String = row.get(2);
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .map(|v| {
                (
                    Some(row.get::<_, String>(0)),
                    row.get::<_, i64>(1) as u64,
                    v,
                )
            })
    };
    let decisions: Vec<_> = rows
        .iter()
        .filter_map(parse)
        .filter(|(_, _, v)| query.matches(v))
        .collect();
    let ids: Vec<String> = decisions
        .iter()
        .filter_map(|(_, _, v)| v.get("id").and_then(|i| i.as_str()).map(str::to_string))
        .collect();
    let outcomes = client
        .query(
            &format!(
                "SELECT origin, log_index, entry_text FROM {table} \
                 WHERE entry->>'kind' = 'outcome' AND entry->>'decision' = ANY($1) \
                 ORDER BY origin, log_index"
            ),
            &[&ids],
        )
        .await?;
    let outcomes: Vec<_> = outcomes.iter().filter_map(parse).collect();
    Ok(audit::search_entries(
        decisions.into_iter().chain(outcomes),
        query,
    ))
}
