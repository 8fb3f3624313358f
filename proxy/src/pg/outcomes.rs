//! Outcome records: what each audited statement did, linked by id to its decision record. The
//! command tag, the rows returned (DataRow messages, counted and digested with SHA-256 over
//! their bytes as forwarded, never decoded), the SQLSTATE if it failed, and the time from
//! forwarding to completion.
//!
//! Sans I/O: the session says what it forwarded (statements of a Query, Executes, Syncs) and
//! what came back for the client; results are matched to statements in order, as PostgreSQL
//! answers them. An error ends a Query's remaining statements, and an extended batch's up to
//! its Sync: those are recorded as not run.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use audit::hex;
use serde_json::json;

use super::captured_keys::{Keys, Plan, RowScan};
use sha2::{Digest, Sha256};

enum Expected {
    /// A statement whose result comes next: its decision id and its index in the Query.
    Statement {
        decision: Arc<str>,
        index: usize,
        since: Instant,
        /// An Execute's Bind parameters, as SHA-256 digests (hex; `null` for SQL NULL).
        parameters: Option<Arc<[Option<String>]>>,
        /// Which key columns to read from its rows (see `captured_keys`).
        plan: Option<Plan>,
        /// The portal it executes (extended protocol).
        portal: Option<Box<str>>,
    },
    /// A statement that is not audited (its decision was not recorded): skip its result.
    Unaudited,
    /// The ReadyForQuery ending a Query or an extended batch.
    Ready,
}

/// The session's expected results, and the statement whose rows are arriving.
#[derive(Default)]
pub struct Outcomes {
    queue: VecDeque<Expected>,
    rows: u64,
    digest: Option<Sha256>,
    /// An error ended the current Query or batch: statements until the next Ready did not run.
    failed: bool,
    /// Keys read from the current statement's rows.
    keys: Keys,
    /// The row being forwarded, read for its keys (when its statement has a plan).
    scan: RowScan,
    scanning: bool,
    /// The current statement is a COPY TO STDOUT: its CopyData is digested, its row count
    /// comes from its tag; `Some(true)` when keys were to be captured (COPY output names no
    /// columns' tables, so they are not).
    copy: Option<bool>,
}

impl Outcomes {
    /// A simple Query of `statements` statements (recorded as `decision`, or not audited).
    pub fn query(&mut self, decision: Option<&Arc<str>>, statements: usize) {
        for index in 0..statements {
            self.push(decision, index, None, None, None);
        }
        self.queue.push_back(Expected::Ready);
    }

    /// An Execute of a portal whose statement's decision is `decision`, bound with
    /// `parameters` (digests).
    pub fn execute(
        &mut self,
        decision: Option<&Arc<str>>,
        parameters: Option<Arc<[Option<String>]>>,
        plan: Option<Plan>,
        portal: &str,
    ) {
        self.push(decision, 0, parameters, plan, Some(portal.into()));
    }

    /// A RowDescription of a simple Query's statement whose result comes next.
    pub fn describe(&mut self, new: Option<Plan>) {
        if let Some(Expected::Statement { plan, .. }) = self.queue.front_mut() {
            *plan = new;
        }
    }

    /// A RowDescription (or NoData: `None`) answering a Describe of `portal`: the plan of the
    /// Executes of that portal already sent, whose rows come after it.
    pub fn describe_portal(&mut self, name: &str, new: Option<Plan>) {
        for expected in self.queue.iter_mut() {
            match expected {
                Expected::Statement {
                    plan,
                    portal: Some(p),
                    ..
                } if &**p == name => *plan = new.clone(),
                // A Ready ends the batch: later Executes belong to later Binds.
                Expected::Ready => break,
                _ => {}
            }
        }
    }

    /// A Sync (or any message whose answer is a ReadyForQuery alone).
    pub fn sync(&mut self) {
        self.queue.push_back(Expected::Ready);
    }

    fn push(
        &mut self,
        decision: Option<&Arc<str>>,
        index: usize,
        parameters: Option<Arc<[Option<String>]>>,
        plan: Option<Plan>,
        portal: Option<Box<str>>,
    ) {
        self.queue.push_back(match decision {
            Some(d) => Expected::Statement {
                decision: d.clone(),
                index,
                since: Instant::now(),
                parameters,
                plan,
                portal,
            },
            None => Expected::Unaudited,
        });
    }

    /// A CopyOutResponse: the statement's rows come as CopyData (`capturing`: keys were to be
    /// captured, and cannot be).
    pub fn copy_out(&mut self, capturing: bool) {
        self.copy = Some(capturing);
    }

    /// A CopyData message begins: its bytes (as forwarded, through `row_bytes`) are digested.
    pub fn copy_data(&mut self) {
        self.digest.get_or_insert_with(Sha256::new);
        self.scanning = false;
    }

    /// Bytes of a DataRow (or CopyData) forwarded to the client, a whole message or a part
    /// of it; `starts` when they begin a new row.
    pub fn row_bytes(&mut self, bytes: &[u8], starts: bool) {
        if starts {
            self.rows += 1;
            self.scan.reset();
            self.scanning = !self.failed;
        }
        self.digest.get_or_insert_with(Sha256::new).update(bytes);
        if self.scanning {
            match self.queue.front() {
                Some(Expected::Statement {
                    plan: Some(plan), ..
                }) => {
                    if self.scan.feed(bytes, plan, &mut self.keys) {
                        self.scanning = false;
                    }
                }
                _ => self.scanning = false,
            }
        }
    }

    /// CommandComplete (`tag`), EmptyQueryResponse (`None`) or PortalSuspended: the front
    /// statement's outcome.
    pub fn complete(&mut self, tag: Option<&str>) -> Option<Vec<u8>> {
        self.finish(json!({ "tag": tag }))
    }

    /// An ErrorResponse forwarded: the front statement failed, and the rest of its Query or
    /// batch will not run.
    pub fn error(&mut self, sqlstate: Option<&str>) -> Option<Vec<u8>> {
        if self.failed
            || !matches!(
                self.queue.front(),
                Some(Expected::Statement { .. } | Expected::Unaudited)
            )
        {
            // An error outside a statement (a Parse, a Bind before any Execute): the batch's
            // statements are skipped all the same.
            self.failed = true;
            return None;
        }
        let record = self.finish(json!({ "error": sqlstate }));
        self.failed = true;
        record
    }

    /// ReadyForQuery forwarded: statements still expected before it did not run.
    pub fn ready(&mut self) -> Vec<Vec<u8>> {
        let mut records = Vec::new();
        while let Some(front) = self.queue.pop_front() {
            match front {
                Expected::Ready => break,
                Expected::Unaudited => {}
                Expected::Statement {
                    decision,
                    index,
                    parameters,
                    ..
                } => records.push(record(
                    &decision,
                    index,
                    json!({ "not_run": true, "parameters": parameters.as_deref() }),
                )),
            }
        }
        self.failed = false;
        self.rows = 0;
        self.digest = None;
        self.keys.clear();
        self.copy = None;
        records
    }

    fn finish(&mut self, result: serde_json::Value) -> Option<Vec<u8>> {
        let mut rows = std::mem::take(&mut self.rows);
        let copy = self.copy.take();
        if copy.is_some() {
            // "COPY n": the rows it wrote.
            if let Some(n) = result
                .get("tag")
                .and_then(|t| t.as_str())
                .and_then(|t| t.strip_prefix("COPY "))
                .and_then(|n| n.parse().ok())
            {
                rows = n;
            }
        }
        let digest = self.digest.take();
        let keys = std::mem::take(&mut self.keys);
        if self.failed {
            return None;
        }
        match self.queue.front()? {
            Expected::Ready => None,
            Expected::Unaudited => {
                self.queue.pop_front();
                None
            }
            Expected::Statement { .. } => {
                let Some(Expected::Statement {
                    decision,
                    index,
                    since,
                    parameters,
                    ..
                }) = self.queue.pop_front()
                else {
                    unreachable!("front checked")
                };
                let mut fields = result;
                let map = fields.as_object_mut().expect("an object");
                map.insert("rows".into(), rows.into());
                map.insert(
                    "digest".into(),
                    digest
                        .map(|d| hex(&d.finalize()))
                        .unwrap_or_else(|| hex(&Sha256::digest(b"")))
                        .into(),
                );
                map.insert(
                    "elapsed_us".into(),
                    (since.elapsed().as_micros() as u64).into(),
                );
                if let Some(parameters) = parameters {
                    map.insert("parameters".into(), json!(&*parameters));
                }
                if !keys.is_empty() {
                    map.insert("keys".into(), json!(keys));
                }
                if let Some(capturing) = copy {
                    map.insert("copy".into(), true.into());
                    if capturing {
                        // Say so, rather than let "no keys" read as "no captured rows".
                        map.insert("keys_captured".into(), false.into());
                    }
                }
                Some(record(&decision, index, fields))
            }
        }
    }
}

/// Bind parameters as recorded: each value's SHA-256 (hex), `None` for NULL. (Equal values
/// give equal digests, so a search can match a known value without the log holding it.)
pub fn parameter_digests(values: &[Option<&[u8]>]) -> Arc<[Option<String>]> {
    values
        .iter()
        .map(|v| v.map(|bytes| hex(&Sha256::digest(bytes))))
        .collect()
}

/// Bind parameters in clear (`audit.parameters = "clear"`): UTF-8 text as is, other bytes
/// (binary formats) as `\x` hex; `None` for NULL.
pub fn parameters_in_clear(values: &[Option<&[u8]>]) -> Arc<[Option<String>]> {
    values
        .iter()
        .map(|v| {
            v.map(|bytes| match std::str::from_utf8(bytes) {
                Ok(text) if !text.contains('\0') => text.to_string(),
                _ => format!("\\x{}", hex(bytes)),
            })
        })
        .collect()
}

fn record(decision: &str, index: usize, fields: serde_json::Value) -> Vec<u8> {
    let mut record = json!({
        "kind": "outcome",
        "id": crate::audit_record::new_id(),
        "decision": decision,
        "statement_index": index,
    });
    let map = record.as_object_mut().expect("an object");
    if let serde_json::Value::Object(f) = fields {
        map.extend(f);
    }
    audit::canonical(&record).expect("records hold no floats")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn a_query_of_two_statements_then_an_error() {
        let mut o = Outcomes::default();
        let d: Arc<str> = "d1".into();
        o.query(Some(&d), 3);
        o.row_bytes(b"D\0\0\0\x0arow1", true);
        o.row_bytes(b"D\0\0\0\x0a", true);
        o.row_bytes(b"row2", false);
        let first = parse(&o.complete(Some("SELECT 2")).unwrap());
        assert_eq!(first["decision"], "d1");
        assert_eq!(first["statement_index"], 0);
        assert_eq!(first["rows"], 2);
        assert_eq!(first["tag"], "SELECT 2");
        let mut h = Sha256::new();
        h.update(b"D\0\0\0\x0arow1D\0\0\0\x0arow2");
        assert_eq!(first["digest"], hex(&h.finalize()));
        let second = parse(&o.error(Some("22012")).unwrap());
        assert_eq!(
            (second["statement_index"].as_u64(), second["error"].as_str()),
            (Some(1), Some("22012"))
        );
        assert_eq!(second["rows"], 0);
        let rest = o.ready();
        assert_eq!(rest.len(), 1);
        assert_eq!(parse(&rest[0])["not_run"], true);
        assert_eq!(parse(&rest[0])["statement_index"], 2);
    }

    #[test]
    fn executes_in_a_batch_and_unaudited_statements() {
        let mut o = Outcomes::default();
        let d: Arc<str> = "p".into();
        o.execute(
            Some(&d),
            Some(parameter_digests(&[Some(b"42"), None])),
            None,
            "",
        );
        o.execute(None, None, None, "");
        o.execute(Some(&d), None, None, "");
        o.sync();
        let first = parse(&o.complete(Some("SELECT 0")).unwrap());
        assert_eq!(first["parameters"][0], hex(&Sha256::digest(b"42")));
        assert!(first["parameters"][1].is_null());
        assert!(o.complete(Some("INSERT 0 1")).is_none(), "not audited");
        // An error at the third: recorded; nothing is left for the Ready.
        assert!(o.error(Some("23505")).is_some());
        assert!(o.ready().is_empty());
        // A Bind's error is its Execute's outcome; the Executes after it did not run.
        o.execute(Some(&d), None, None, "");
        o.execute(Some(&d), None, None, "");
        o.sync();
        let failed = parse(&o.error(Some("22P02")).unwrap());
        assert_eq!(failed["error"], "22P02");
        let skipped = o.ready();
        assert_eq!(skipped.len(), 1);
        assert_eq!(parse(&skipped[0])["not_run"], true);
    }
}
