//! The audit record of one vector request, in the same log and format as SQL decision records
//! (`kind: "decision"`, `protocol: "qdrant"`), so `audit search --agent/--relation/--policy`
//! finds both: the request as received, the requests sent to the store after rewriting, the
//! basis (policy version; per collection the injected filter, hidden and masked fields and
//! the determining policies), and what came back (point ids with scores, and the SHA-256 of
//! the payloads returned). Vectors are recorded by digest, and floats as text (the log's
//! canonical JSON holds integers only).
//!
//! A read is recorded after it ran (its record names what it returned); a write is recorded
//! before it runs (`write_ahead`), so in `sync` mode no write happens unrecorded.

use std::time::{SystemTime, UNIX_EPOCH};

use policies::ColumnRule;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::ops::ShimError;
use super::policy::{Action, CollectionPolicy};
use super::Shim;

/// What a request did, gathered as it runs (only when there is an audit log to write it to:
/// without one, nothing is gathered, so the request pays for no digests).
pub struct Trace {
    recording: bool,
    id: String,
    statement: String,
    request: Option<Value>,
    agent: String,
    on_behalf_of: Option<String>,
    client: Option<String>,
    tls: bool,
    policy_version: String,
    rewritten: Vec<Value>,
    relations: Vec<Value>,
    returned: Vec<Value>,
    written: Vec<Value>,
    payload_sha256: Option<String>,
    /// The record was already written (before a write).
    recorded: bool,
}

impl Trace {
    pub fn new(
        caller: &Caller,
        (client, tls): (Option<std::net::SocketAddr>, bool),
        statement: String,
        request: Option<&Value>,
        policy_version: String,
        recording: bool,
    ) -> Trace {
        Trace {
            recording,
            // A record's id; none without an audit log (making one reads the OS's random source).
            id: if recording {
                crate::audit_record::new_id()
            } else {
                String::new()
            },
            statement,
            request: request.filter(|_| recording).map(recordable),
            agent: caller.agent.clone(),
            on_behalf_of: caller.on_behalf_of.clone(),
            client: client.map(|c| c.to_string()),
            tls,
            policy_version,
            rewritten: Vec::new(),
            relations: Vec::new(),
            returned: Vec::new(),
            written: Vec::new(),
            payload_sha256: None,
            recorded: false,
        }
    }

    /// Whether there is an audit log to write the record to.
    pub fn recording(&self) -> bool {
        self.recording
    }

    /// A request sent to the store.
    pub fn rewritten(&mut self, body: &Value) {
        if self.recording {
            self.rewritten.push(recordable(body));
        }
    }

    /// The basis of one action on one collection (once per collection and action).
    pub fn relation(&mut self, p: &CollectionPolicy, action: Action) {
        if !self.recording {
            return;
        }
        let already = self
            .relations
            .iter()
            .any(|r| r["relation"] == p.resource_type.as_str() && r["action"] == action.name());
        if !already {
            self.relations.push(relation_basis(p, action));
        }
    }

    /// A point returned (with its score, for searches).
    pub fn returned(&mut self, id: &Value, score: Option<&Value>) {
        if !self.recording {
            return;
        }
        let mut point = json!({ "id": id });
        if let Some(score) = score {
            point["score"] = json!(score.to_string());
        }
        self.returned.push(point);
    }

    /// Ids a write names.
    pub fn written(&mut self, ids: &Value) {
        if let Value::Array(ids) = ids {
            self.written.extend(ids.iter().cloned());
        }
    }

    pub fn payload_digest(&mut self, digest: Sha256) {
        let mut all = Sha256::new();
        if let Some(previous) = &self.payload_sha256 {
            all.update(previous.as_bytes());
        }
        all.update(digest.finalize());
        self.payload_sha256 = Some(audit::hex(&all.finalize()));
    }

    /// Records the request now, before the write it is about to make; in `sync` mode waits
    /// until the record is durable.
    pub async fn write_ahead(&mut self, shim: &Shim) -> Result<(), ShimError> {
        let entry = self.entry(shim, &Ok(()));
        self.recorded = true;
        submit(shim, entry).await
    }

    /// Records the request's end: its decision record, or, for a write recorded before it
    /// ran, an outcome record when the store then failed it.
    pub async fn finish(
        &mut self,
        shim: &Shim,
        result: &Result<(), &ShimError>,
    ) -> Result<(), ShimError> {
        let entry = match (self.recorded, result) {
            (true, Ok(())) => return Ok(()),
            (true, Err(e)) => audit::canonical(&json!({
                "kind": "outcome",
                "id": crate::audit_record::new_id(),
                "decision": self.id,
                "statement_index": 0,
                "error": e.status().to_string(),
                "message": e.to_string(),
            }))
            .ok()
            .filter(|_| shim.shared.audit.is_some()),
            (false, _) => self.entry(shim, result),
        };
        submit(shim, entry).await
    }

    fn entry(&self, shim: &Shim, result: &Result<(), &ShimError>) -> Option<Vec<u8>> {
        let audit = shim.shared.audit.as_ref()?;
        let time_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut record = json!({
            "kind": "decision",
            "id": self.id,
            "time_ms": time_ms,
            "node": audit.node_id,
            "session": self.id,
            "agent": self.agent,
            "on_behalf_of": self.on_behalf_of,
            "client": self.client,
            "tls": self.tls,
            "protocol": "qdrant",
            "statement": self.statement,
            "request": self.request,
            "basis": {
                "policy_version": self.policy_version,
                "relations": self.relations,
            },
        });
        let fields = record.as_object_mut().expect("an object");
        match result {
            Ok(()) => {
                fields.insert("decision".into(), "rewrite".into());
                fields.insert("rewritten".into(), Value::Array(self.rewritten.clone()));
                if !self.written.is_empty() {
                    fields.insert("written".into(), Value::Array(self.written.clone()));
                }
                if !self.recorded {
                    fields.insert("returned".into(), Value::Array(self.returned.clone()));
                    if let Some(d) = &self.payload_sha256 {
                        fields.insert("payload_sha256".into(), d.clone().into());
                    }
                }
            }
            Err(e) => {
                fields.insert("decision".into(), "deny".into());
                fields.insert("status".into(), e.status().into());
                fields.insert("message".into(), e.to_string().into());
            }
        }
        audit::canonical(&record).ok()
    }
}

/// What a record says of one action on one collection: the injected filter, hidden and masked
/// fields, whether vectors are returned, and the determining policies. Replay derives it again.
pub fn relation_basis(p: &CollectionPolicy, action: Action) -> Value {
    let filter = p
        .rule(action)
        .map(|r| r.qdrant.clone())
        .unwrap_or(Value::Null);
    let mut hidden = Vec::new();
    let mut masked = Map::new();
    if p.has_field_rules() && action == Action::Search {
        for (field, rule) in p.known_fields() {
            match rule {
                ColumnRule::Visible => {}
                ColumnRule::Denied => hidden.push(json!(field)),
                ColumnRule::Masked { mask, .. } => {
                    masked.insert(field, json!({ "mask": mask.name() }));
                }
            }
        }
    }
    json!({
        "relation": p.resource_type,
        "action": action.name(),
        "filter": recordable(&filter),
        "hidden": hidden,
        "masked": masked,
        "vectors": format!("{:?}", p.vectors).to_ascii_lowercase(),
        "policies": p.determining(action),
    })
}

async fn submit(shim: &Shim, entry: Option<Vec<u8>>) -> Result<(), ShimError> {
    let (Some(audit), Some(entry)) = (&shim.shared.audit, entry) else {
        return Ok(());
    };
    if !audit.healthy() && !audit.fail_open {
        return Err(ShimError::AuditDown);
    }
    let Some(answer) = audit.submit(vec![entry]) else {
        return Ok(());
    };
    match answer.await {
        Ok(Ok(())) => Ok(()),
        _ if audit.fail_open => {
            audit.let_through();
            Ok(())
        }
        _ => Err(ShimError::AuditDown),
    }
}

/// `value` as the log can hold it: floats as text, and number lists longer than 8 (vectors) as
/// their length and the SHA-256 of their JSON.
fn recordable(value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_i64() || n.is_u64() => value.clone(),
        Value::Number(n) => json!(n.to_string()),
        Value::Array(items) if items.len() > 8 && items.iter().all(Value::is_number) => {
            json!({
                "vector_sha256": audit::sha256_hex(&serde_json::to_vec(value).unwrap_or_default()),
                "dims": items.len(),
            })
        }
        Value::Array(items) => Value::Array(items.iter().map(recordable).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), recordable(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}
