//! Decision records: what the audit log holds for each statement an agent sends (each
//! statement text of a simple Query, each Parse of the extended protocol) and each refusal.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use rewriter::{Checked, Protocol, Refusal};
use serde_json::{json, Value};

/// What a session knows of itself, for its records.
pub struct SessionFacts<'a> {
    pub node: &'a str,
    pub session: &'a str,
    pub agent: &'a str,
    pub on_behalf_of: Option<&'a str>,
    pub client: Option<SocketAddr>,
    pub tls: bool,
    /// Policy is enforced (a passing statement is rewritten, not only allowed).
    pub enforcing: bool,
    /// The session's search_path, when it is not the login's.
    pub search_path: Option<&'a [String]>,
    /// Under enforcement: the active policy version and catalog snapshot hash (a refusal has
    /// no basis of its own; replay needs them).
    pub versions: Option<(String, String)>,
    /// Withhold literals (`audit.redact_literals`).
    pub redact: bool,
}

const WITHHELD: &str =
    "[withheld: the statement does not parse, so its literals cannot be told apart]";

/// `sql` as recorded: with its literals withheld when `redact`.
fn recorded(sql: &str, redact: bool) -> String {
    if !redact {
        return sql.to_string();
    }
    rewriter::redact_literals(sql).unwrap_or_else(|| WITHHELD.to_string())
}

/// A sortable unique id (UUIDv7).
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The decision record of `statement`, as one line of canonical JSON.
pub fn decision(
    facts: &SessionFacts<'_>,
    id: &str,
    protocol: Protocol,
    statement: &str,
    result: &Result<Checked, Refusal>,
) -> Vec<u8> {
    let time_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mut record = json!({
        "kind": "decision",
        "id": id,
        "time_ms": time_ms,
        "node": facts.node,
        "session": facts.session,
        "agent": facts.agent,
        "on_behalf_of": facts.on_behalf_of,
        "client": facts.client.map(|a| a.to_string()),
        "tls": facts.tls,
        "protocol": match protocol {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
        },
        "statement": recorded(statement, facts.redact),
        "search_path": facts.search_path,
    });
    let fields = record.as_object_mut().expect("an object");
    if facts.redact {
        // Equal statements still match by digest, without the log holding their values.
        fields.insert(
            "statement_sha256".into(),
            audit::sha256_hex(statement.as_bytes()).into(),
        );
        fields.insert("redacted".into(), true.into());
    }
    match result {
        Ok(checked) => {
            fields.insert(
                "decision".into(),
                if facts.enforcing { "rewrite" } else { "allow" }.into(),
            );
            fields.insert(
                "rewritten".into(),
                recorded(&checked.sql, facts.redact).into(),
            );
            if let Some(basis) = &checked.basis {
                fields.insert("basis".into(), Value::clone(basis));
            }
        }
        Err(refusal) => {
            if let Some((policy_version, catalog)) = &facts.versions {
                fields.insert("policy_version".into(), policy_version.clone().into());
                fields.insert("catalog".into(), catalog.clone().into());
            }
            fields.insert("decision".into(), "deny".into());
            fields.insert("sqlstate".into(), refusal.sqlstate().into());
            fields.insert("message".into(), refusal.to_string().into());
        }
    }
    audit::canonical(&record).expect("records hold no floats")
}

/// The record of a statement refused because the audit log could not be written is never
/// written; this is the error the agent gets (an operator's problem, not a policy decision).
pub const UNWRITABLE_CODE: &str = "58030";
pub const UNWRITABLE_MESSAGE: &str =
    "Portcullis cannot write its audit log, so it runs no statement until it can; tell the operator (see the server log)";
