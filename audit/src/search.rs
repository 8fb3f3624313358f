//! Searching a log's decision records, joined with their outcomes: by agent, the human an
//! agent acted for, time range, decision, relation, policy id, SQLSTATE, and a captured key
//! (the statements that returned a given row).

use std::path::Path;

use serde_json::Value;

use crate::log::read_entries;

/// What to look for; every given field must match.
#[derive(Debug, Default, Clone)]
pub struct Query {
    pub agent: Option<String>,
    pub on_behalf_of: Option<String>,
    /// Milliseconds since the Unix epoch, inclusive.
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// `allow`, `rewrite` or `deny`.
    pub decision: Option<String>,
    /// An entity type (`public::customers`) the statement read.
    pub relation: Option<String>,
    /// A policy id among the determining policies.
    pub policy: Option<String>,
    pub sqlstate: Option<String>,
    /// A captured key: the table (`public.customers`) and the key's values (one per key
    /// column): decisions one of whose outcomes returned that row.
    pub key: Option<(String, Vec<String>)>,
}

/// A decision record that matched, with its log index and its outcome records.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The log it is in, when searching several (an export table); `None` for one directory.
    pub origin: Option<String>,
    pub index: u64,
    pub decision: Value,
    pub outcomes: Vec<Value>,
}

impl Query {
    /// Whether decision record `d` matches every field but `key` (which needs its outcomes).
    pub fn matches(&self, d: &Value) -> bool {
        let text = |key: &str| d.get(key).and_then(Value::as_str);
        let relations = || {
            d.pointer("/basis/relations")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        };
        let time = d.get("time_ms").and_then(Value::as_u64).unwrap_or(0);
        self.agent
            .as_deref()
            .is_none_or(|a| text("agent") == Some(a))
            && self
                .on_behalf_of
                .as_deref()
                .is_none_or(|h| text("on_behalf_of") == Some(h))
            && self.since_ms.is_none_or(|s| time >= s)
            && self.until_ms.is_none_or(|u| time <= u)
            && self
                .decision
                .as_deref()
                .is_none_or(|x| text("decision") == Some(x))
            && self
                .sqlstate
                .as_deref()
                .is_none_or(|x| text("sqlstate") == Some(x))
            && self.relation.as_deref().is_none_or(|r| {
                relations()
                    .iter()
                    .any(|rel| rel.get("relation").and_then(Value::as_str) == Some(r))
            })
            && self.policy.as_deref().is_none_or(|p| {
                relations().iter().any(|rel| {
                    rel.get("policies")
                        .and_then(Value::as_array)
                        .is_some_and(|ps| ps.iter().any(|x| x.as_str() == Some(p)))
                })
            })
    }
}

/// The decision records of the log in `dir` that match `query`, oldest first.
pub fn search(dir: &Path, query: &Query) -> Result<Vec<Hit>, std::io::Error> {
    let (entries, _) = read_entries(dir)?;
    let entries = entries.iter().enumerate().filter_map(|(i, line)| {
        let v = serde_json::from_slice::<Value>(line).ok()?;
        Some((None, i as u64, v))
    });
    Ok(search_entries(entries, query))
}

/// The decision records among `entries` (origin, index, entry; each decision before its
/// outcomes) that match `query`, in the order given.
pub fn search_entries(
    entries: impl IntoIterator<Item = (Option<String>, u64, Value)>,
    query: &Query,
) -> Vec<Hit> {
    let mut hits: Vec<Hit> = Vec::new();
    let mut by_id = std::collections::HashMap::new();
    for (origin, index, v) in entries {
        match v.get("kind").and_then(Value::as_str) {
            Some("decision") if query.matches(&v) => {
                if let Some(id) = v.get("id").and_then(Value::as_str) {
                    by_id.insert(id.to_string(), hits.len());
                }
                hits.push(Hit {
                    origin,
                    index,
                    decision: v,
                    outcomes: Vec::new(),
                });
            }
            Some("outcome") => {
                let slot = v
                    .get("decision")
                    .and_then(Value::as_str)
                    .and_then(|d| by_id.get(d));
                if let Some(&slot) = slot {
                    hits[slot].outcomes.push(v);
                }
            }
            _ => {}
        }
    }
    if let Some((table, values)) = &query.key {
        hits.retain(|hit| {
            hit.outcomes.iter().any(|o| {
                o.pointer(&format!(
                    "/keys/{}",
                    table.replace('~', "~0").replace('/', "~1")
                ))
                .and_then(Value::as_array)
                .is_some_and(|rows| {
                    rows.iter().any(|row| {
                        row.as_array().is_some_and(|r| {
                            r.len() == values.len()
                                && r.iter().zip(values).all(|(a, b)| a.as_str() == Some(b))
                        })
                    })
                })
            })
        });
    }
    hits
}
