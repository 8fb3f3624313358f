//! Rewriting Qdrant REST requests so that they can only reach the points policy allows: the
//! policy's filter (see `vector_filter`) is ANDed into the request's own filter and into every
//! prefetch at every depth; requests that name points by id are turned into filters on those
//! ids and the policy. What this rewriter does not understand is refused, never forwarded:
//! query kinds that take example points by id, `lookup_from` (points of another collection),
//! score formulas, and any key it does not know.
//!
//! The rewritten body is a fresh JSON value; the shim forwards its serialization, never the
//! client's bytes, so Qdrant parses exactly what was checked here.

use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VectorRefusal {
    #[error("{0} is not supported under policy enforcement")]
    Unsupported(String),
    #[error("malformed request: {0}")]
    Malformed(String),
}

fn malformed(what: impl Into<String>) -> VectorRefusal {
    VectorRefusal::Malformed(what.into())
}

/// `client AND policy` (`policy` a filter from [`crate::qdrant_filter`]). The client's filter is
/// kept whole as a nested filter, so its own `should`/`min_should` mean what they meant; the
/// policy's `must` list, when that is all it has, is spliced in, and without a client filter the
/// policy is the filter: the engine checks a flat list rather than recursing per point.
pub fn and_filter(client: Option<&Value>, policy: &Value) -> Result<Value, VectorRefusal> {
    let client = match client {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) if map.is_empty() => None,
        Some(f @ Value::Object(_)) => Some(f.clone()),
        Some(other) => return Err(malformed(format!("filter must be an object, not {other}"))),
    };
    let Some(client) = client else {
        return Ok(policy.clone());
    };
    let mut parts = vec![client];
    match crate::vector_filter::only_must(policy.clone()) {
        Ok(list) => parts.extend(list),
        Err(policy) => parts.push(policy),
    }
    Ok(json!({ "must": parts }))
}

/// Keys of a universal query (and of its prefetches) this rewriter understands.
const QUERY_KEYS: &[&str] = &[
    "prefetch",
    "query",
    "using",
    "filter",
    "params",
    "score_threshold",
    "limit",
    "offset",
    "with_vector",
    "with_payload",
];

fn object_mut<'a>(
    body: &'a mut Value,
    what: &str,
) -> Result<&'a mut Map<String, Value>, VectorRefusal> {
    body.as_object_mut()
        .ok_or_else(|| malformed(format!("{what} must be an object")))
}

/// A universal query (`POST …/points/query`, one entry of `…/query/batch`).
pub fn restrict_query(body: &mut Value, policy: &Value) -> Result<(), VectorRefusal> {
    restrict_query_level(body, policy, 0)
}

const MAX_DEPTH: usize = 16;

fn restrict_query_level(
    body: &mut Value,
    policy: &Value,
    depth: usize,
) -> Result<(), VectorRefusal> {
    if depth > MAX_DEPTH {
        return Err(malformed("prefetch nested too deep"));
    }
    let map = object_mut(body, "a query")?;
    for key in map.keys() {
        if !QUERY_KEYS.contains(&key.as_str()) {
            return Err(VectorRefusal::Unsupported(format!("the query key {key:?}")));
        }
    }
    if let Some(query) = map.get("query") {
        check_query(query)?;
    }
    let filter = and_filter(map.get("filter"), policy)?;
    map.insert("filter".into(), filter);
    match map.get_mut("prefetch") {
        None | Some(Value::Null) => {}
        Some(Value::Array(prefetches)) => {
            for p in prefetches {
                restrict_query_level(p, policy, depth + 1)?;
            }
        }
        Some(one @ Value::Object(_)) => restrict_query_level(one, policy, depth + 1)?,
        Some(other) => {
            return Err(malformed(format!(
                "prefetch must be an object or a list, not {other}"
            )))
        }
    }
    Ok(())
}

/// What a query may score by: vectors sent by the client, fusion of prefetches, MMR over a
/// vector, sampling, and ordering. Not example points by id (which could be hidden points).
fn check_query(query: &Value) -> Result<(), VectorRefusal> {
    match query {
        Value::Array(_) => Ok(()),
        Value::Number(_) | Value::String(_) => Err(VectorRefusal::Unsupported(
            "a query by point id (send the vector)".into(),
        )),
        Value::Object(map) => {
            if map.contains_key("indices") && map.contains_key("values") && map.len() == 2 {
                return Ok(());
            }
            let Some((kind, inner)) = map.iter().next() else {
                return Err(malformed("an empty query"));
            };
            match (kind.as_str(), map.len()) {
                ("nearest", 1) => check_vector(inner),
                ("nearest", 2) if map.contains_key("mmr") => check_vector(&map["nearest"]),
                ("mmr", 2) if map.contains_key("nearest") => check_vector(&map["nearest"]),
                ("fusion" | "rrf" | "sample", 1) => Ok(()),
                _ => Err(VectorRefusal::Unsupported(format!(
                    "the query kind {kind:?}"
                ))),
            }
        }
        other => Err(malformed(format!("query {other}"))),
    }
}

fn check_vector(v: &Value) -> Result<(), VectorRefusal> {
    match v {
        Value::Array(_) => Ok(()),
        Value::Object(m) if m.contains_key("indices") && m.contains_key("values") => Ok(()),
        Value::Number(_) | Value::String(_) => Err(VectorRefusal::Unsupported(
            "a query by point id (send the vector)".into(),
        )),
        other => Err(VectorRefusal::Unsupported(format!(
            "the query vector {other}"
        ))),
    }
}

/// A request whose points are chosen by a `filter` key (scroll, facet, delete by filter). A
/// body that also names points by id is refused: Qdrant ignores the filter of a write that
/// names ids (those go through [`ids_filter`]).
pub fn restrict_filtered(body: &mut Value, policy: &Value) -> Result<(), VectorRefusal> {
    let map = object_mut(body, "the body")?;
    if map.contains_key("points") {
        return Err(VectorRefusal::Unsupported(
            "a filtered request that also names points by id".into(),
        ));
    }
    let filter = and_filter(map.get("filter"), policy)?;
    map.insert("filter".into(), filter);
    Ok(())
}

/// A count: filtered, and always exact (an estimate is computed from index statistics over
/// every point, hidden ones included).
pub fn restrict_count(body: &mut Value, policy: &Value) -> Result<(), VectorRefusal> {
    restrict_filtered(body, policy)?;
    object_mut(body, "the body")?.insert("exact".into(), Value::Bool(true));
    Ok(())
}

/// The filter for points named by id that policy allows: `has_id AND policy`.
pub fn ids_filter(ids: &Value, policy: &Value) -> Result<Value, VectorRefusal> {
    let Value::Array(list) = ids else {
        return Err(malformed("point ids must be a list"));
    };
    if !list.iter().all(|id| id.is_u64() || id.is_string()) {
        return Err(malformed("a point id is an unsigned integer or a UUID"));
    }
    Ok(json!({ "must": [{ "has_id": ids }, policy] }))
}

/// The payload fields (dotted paths, array markers dropped) a client's filter reads: every
/// condition's `key`, with `nested` conditions' keys under their parent's. A filter on a
/// field the agent may not read is an oracle for its values, so the shim checks these.
/// Keys Qdrant would read as quoted or indexed paths are refused rather than interpreted.
pub fn filter_fields(filter: &Value) -> Result<Vec<String>, VectorRefusal> {
    let mut out = Vec::new();
    collect_fields(filter, "", &mut out, 0)?;
    out.sort();
    out.dedup();
    Ok(out)
}

fn collect_fields(
    v: &Value,
    prefix: &str,
    out: &mut Vec<String>,
    depth: usize,
) -> Result<(), VectorRefusal> {
    if depth > 64 {
        return Err(malformed("filter nested too deep"));
    }
    match v {
        Value::Array(items) => {
            // Only objects name fields (a query vector's numbers are passed over cheaply).
            for i in items {
                if matches!(i, Value::Array(_) | Value::Object(_)) {
                    collect_fields(i, prefix, out, depth + 1)?;
                }
            }
        }
        Value::Object(map) => {
            if let Some(nested) = map.get("nested") {
                let key = nested
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| malformed("a nested condition without a key"))?;
                let path = field_path(prefix, key)?;
                out.push(path.clone());
                if let Some(inner) = nested.get("filter") {
                    collect_fields(inner, &path, out, depth + 1)?;
                }
            }
            for (k, value) in map {
                match (k.as_str(), value) {
                    ("nested", _) => {}
                    ("key", Value::String(key)) => out.push(field_path(prefix, key)?),
                    ("key", other) => return Err(malformed(format!("a key {other}"))),
                    _ => collect_fields(value, prefix, out, depth + 1)?,
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// `prefix.key` as a dotted path, with Qdrant's `[]` and `[n]` array steps dropped.
pub fn field_path(prefix: &str, key: &str) -> Result<String, VectorRefusal> {
    let mut parts = Vec::new();
    if !prefix.is_empty() {
        parts.push(prefix.to_string());
    }
    for part in key.split('.') {
        let name = part.split('[').next().unwrap_or("");
        let rest = &part[name.len()..];
        let steps_ok = rest.is_empty()
            || rest.split_inclusive(']').all(|s| {
                s.starts_with('[')
                    && s.ends_with(']')
                    && s[1..s.len() - 1].chars().all(|c| c.is_ascii_digit())
            });
        if name.is_empty()
            || !steps_ok
            || !name
                .chars()
                .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        {
            return Err(VectorRefusal::Unsupported(format!(
                "the payload key {key:?} (use plain dotted names)"
            )));
        }
        parts.push(name.to_string());
    }
    Ok(parts.join("."))
}

/// The field a scroll's `order_by` sorts by, if any: sorting by a field reveals its order.
pub fn order_by_field(body: &Value) -> Result<Option<String>, VectorRefusal> {
    match body.get("order_by") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(key)) => field_path("", key).map(Some),
        Some(Value::Object(o)) => match o.get("key") {
            Some(Value::String(key)) => field_path("", key).map(Some),
            _ => Err(malformed("order_by without a key")),
        },
        Some(other) => Err(malformed(format!("order_by {other}"))),
    }
}

/// Projects a payload in place: `decide(path, value)` says, for each leaf (dotted path; a
/// list is a leaf), whether to keep it (`Keep`), replace it, or drop it. Objects are walked
/// into; an object left empty by the projection stays (empty).
pub fn project_payload(
    payload: &mut Map<String, Value>,
    decide: &mut dyn FnMut(&str, &Value) -> Projected,
) {
    payload_edits(payload, decide).apply(payload);
}

/// What the projection does with one payload value.
#[derive(Debug, Clone, PartialEq)]
pub enum Projected {
    Keep,
    Replace(Value),
    Drop,
}

/// The edits a projection makes to one payload, decided over the payload as stored (every
/// decision sees the same values, whatever was decided before it), then applied.
#[derive(Debug, Default)]
pub struct PayloadEdits(Vec<(Vec<String>, Projected)>);

/// Decides the projection of `payload` (as [`project_payload`] does) without changing it, so
/// that `decide` may read the whole payload while deciding.
pub fn payload_edits(
    payload: &Map<String, Value>,
    decide: &mut dyn FnMut(&str, &Value) -> Projected,
) -> PayloadEdits {
    let mut edits = PayloadEdits::default();
    decide_level(payload, &mut Vec::new(), decide, &mut edits);
    edits
}

impl PayloadEdits {
    /// Applies the edits to the payload they were decided over.
    pub fn apply(self, payload: &mut Map<String, Value>) {
        for (keys, edit) in self.0 {
            let Some((last, parents)) = keys.split_last() else {
                continue;
            };
            let mut map = &mut *payload;
            for key in parents {
                match map.get_mut(key) {
                    Some(Value::Object(inner)) => map = inner,
                    _ => unreachable!("edits are applied to the payload they were decided over"),
                }
            }
            match edit {
                Projected::Keep => {}
                Projected::Replace(v) => {
                    map.insert(last.clone(), v);
                }
                Projected::Drop => {
                    map.remove(last);
                }
            }
        }
    }
}

fn decide_level(
    map: &Map<String, Value>,
    keys: &mut Vec<String>,
    decide: &mut dyn FnMut(&str, &Value) -> Projected,
    edits: &mut PayloadEdits,
) {
    for (key, value) in map {
        keys.push(key.clone());
        match value {
            Value::Object(inner) if keys.len() <= 32 => decide_level(inner, keys, decide, edits),
            _ => match decide(&keys.join("."), value) {
                Projected::Keep => {}
                edit => edits.0.push((keys.clone(), edit)),
            },
        }
        keys.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Value {
        json!({"must": [{"key": "tenant", "match": {"value": "a"}}]})
    }

    #[test]
    fn every_prefetch_at_every_depth_is_restricted() {
        let mut q = json!({
            "prefetch": [
                {"query": [1.0], "prefetch": {"query": [2.0]}},
                {"query": [3.0], "filter": {"should": [{"is_empty": {"key": "x"}}]}},
            ],
            "query": {"fusion": "rrf"},
        });
        restrict_query(&mut q, &policy()).unwrap();
        // Without a client filter the policy is the filter; with one, the client's filter is
        // kept whole beside the policy's conditions.
        assert_eq!(q["filter"], policy());
        assert_eq!(q["prefetch"][0]["filter"], policy());
        assert_eq!(q["prefetch"][0]["prefetch"]["filter"], policy());
        assert_eq!(
            q["prefetch"][1]["filter"],
            json!({"must": [
                {"should": [{"is_empty": {"key": "x"}}]},
                {"key": "tenant", "match": {"value": "a"}},
            ]})
        );
    }

    #[test]
    fn filtered_writes_cannot_name_ids_and_counts_are_exact() {
        let mut delete = json!({"points": [5], "filter": {"must": []}});
        assert!(restrict_filtered(&mut delete, &policy()).is_err());
        let mut count = json!({"exact": false});
        restrict_count(&mut count, &policy()).unwrap();
        assert_eq!(count["exact"], true);
    }

    #[test]
    fn what_names_other_points_is_refused() {
        for q in [
            json!({"query": 7}),
            json!({"query": {"nearest": "5c56c793-69f3-4fbf-87e6-c4bf54c28c26"}}),
            json!({"query": {"recommend": {"positive": [1]}}}),
            json!({"query": {"discover": {"target": 1, "context": []}}}),
            json!({"query": [1.0], "lookup_from": {"collection": "other"}}),
            json!({"prefetch": {"query": 3}, "query": {"fusion": "rrf"}}),
            json!({"query": {"formula": {"sum": []}}}),
            json!({"query": [1.0], "surprise": true}),
        ] {
            let mut body = q.clone();
            assert!(restrict_query(&mut body, &policy()).is_err(), "{q}");
        }
    }
    #[test]
    fn filter_fields_are_every_key_with_nested_ones_under_their_parent() {
        let f = json!({"should": [
            {"key": "a.b[]", "match": {"value": 1}},
            {"nested": {"key": "items[]", "filter": {"must": [{"key": "sku", "match": {"value": "x"}}]}}},
            {"min_should": {"conditions": [{"is_empty": {"key": "c"}}], "min_count": 1}},
            {"has_id": [1]},
        ]});
        assert_eq!(
            filter_fields(&f).unwrap(),
            vec!["a.b", "c", "items", "items.sku"]
        );
        assert!(
            filter_fields(&json!({"must": [{"key": "\"a.b\"", "match": {"value": 1}}]})).is_err()
        );
        assert!(filter_fields(&json!({"must": [{"key": "a[x]", "match": {"value": 1}}]})).is_err());
    }

    #[test]
    fn projection_walks_objects_and_decides_leaves() {
        let mut p = json!({"a": 1, "m": {"t": 2, "s": "x"}, "l": [1, 2]});
        let Value::Object(map) = &mut p else {
            unreachable!()
        };
        project_payload(map, &mut |path, _| match path {
            "a" => Projected::Drop,
            "m.s" => Projected::Replace(Value::Null),
            _ => Projected::Keep,
        });
        assert_eq!(p, json!({"m": {"t": 2, "s": null}, "l": [1, 2]}));
    }

    #[test]
    fn every_decision_sees_the_payload_as_stored() {
        // A mask's condition may read a field decided before it (here `class`, dropped first):
        // it must read the stored value, not what the projection left.
        let Value::Object(mut payload) = json!({"class": "public", "m": {"author": "ann"}}) else {
            unreachable!()
        };
        let stored = payload.clone();
        let edits = payload_edits(&payload, &mut |path, _| match path {
            "class" => Projected::Drop,
            "m.author" if stored["class"] == "public" && payload.contains_key("class") => {
                Projected::Replace(json!("***"))
            }
            _ => Projected::Keep,
        });
        assert_eq!(payload, stored, "deciding changes nothing");
        edits.apply(&mut payload);
        assert_eq!(Value::Object(payload), json!({"m": {"author": "***"}}));
    }

    #[test]
    fn objects_nested_deeper_than_32_levels_are_decided_as_leaves() {
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({ "k": deep });
        }
        let Value::Object(mut payload) = deep else {
            unreachable!()
        };
        let mut leaves = Vec::new();
        project_payload(&mut payload, &mut |path, value| {
            leaves.push((path.split('.').count(), value.is_object()));
            Projected::Drop
        });
        assert_eq!(leaves, vec![(33, true)]);
        let mut left = &Value::Object(payload);
        for _ in 0..32 {
            left = &left["k"];
        }
        assert_eq!(left, &json!({}));
    }
}
