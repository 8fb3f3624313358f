//! Each Qdrant operation under policy: how its request is restricted (the `search` filter in
//! every filter and prefetch, points named by id turned into `has_id AND policy` filters, the
//! client's own filter checked for fields the agent may not read), how writes are checked
//! (every upserted payload typed by the schema and admitted by the `upsert` policy, no
//! overwrite of a point that policy does not let the agent write, payload edits that cannot
//! change what policy decides), and how answers are projected (payload fields by `read_field`,
//! vectors by `read_vector`; point counts in collection info only as the agent sees them).
//!
//! A hidden point is never returned, counted, used as an example or named in an error: a
//! retrieve of hidden and missing ids alike answers "not found".

use std::sync::Arc;

use connectors::vector::{Request, VectorError};
use policies::{ColumnRule, Filter, Mask, PolicyBundle};
use rewriter::{Projected, VectorRefusal};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::auth::Caller;
use super::policy::{Action, CollectionPolicy, Vectors};
use super::record::Trace;
use super::Shim;

/// One request, as its route names it; bodies are the client's JSON.
#[derive(Debug, Clone)]
pub enum Op {
    ListCollections,
    GetCollection(String),
    Exists(String),
    Create(String, Value),
    Drop(String),
    CreateIndex(String, Value),
    Upsert(String, Value),
    Retrieve(String, Value),
    GetPoint(String, Value),
    Query(String, Value),
    QueryBatch(String, Value),
    Search(String, Value),
    SearchBatch(String, Value),
    Scroll(String, Value),
    Count(String, Value),
    Delete(String, Value),
    SetPayload(String, Value),
    DeletePayload(String, Value),
}

impl Op {
    pub fn collection(&self) -> Option<&str> {
        match self {
            Op::ListCollections => None,
            Op::GetCollection(c)
            | Op::Exists(c)
            | Op::Create(c, _)
            | Op::Drop(c)
            | Op::CreateIndex(c, _)
            | Op::Upsert(c, _)
            | Op::Retrieve(c, _)
            | Op::GetPoint(c, _)
            | Op::Query(c, _)
            | Op::QueryBatch(c, _)
            | Op::Search(c, _)
            | Op::SearchBatch(c, _)
            | Op::Scroll(c, _)
            | Op::Count(c, _)
            | Op::Delete(c, _)
            | Op::SetPayload(c, _)
            | Op::DeletePayload(c, _) => Some(c),
        }
    }

    /// The client's body, if the operation has one.
    pub fn body(&self) -> Option<&Value> {
        match self {
            Op::Create(_, b)
            | Op::CreateIndex(_, b)
            | Op::Upsert(_, b)
            | Op::Retrieve(_, b)
            | Op::GetPoint(_, b)
            | Op::Query(_, b)
            | Op::QueryBatch(_, b)
            | Op::Search(_, b)
            | Op::SearchBatch(_, b)
            | Op::Scroll(_, b)
            | Op::Count(_, b)
            | Op::Delete(_, b)
            | Op::SetPayload(_, b)
            | Op::DeletePayload(_, b) => Some(b),
            _ => None,
        }
    }
}

/// Why a request was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Policy refuses it (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error(transparent)]
    Backend(#[from] VectorError),
    /// The audit log cannot be written (503).
    #[error("Portcullis cannot write its audit log, so it answers no request until it can; tell the operator")]
    AuditDown,
}

impl ShimError {
    pub fn status(&self) -> u16 {
        match self {
            ShimError::Forbidden(_) => 403,
            ShimError::BadRequest(_) => 400,
            ShimError::NotFound(_) => 404,
            ShimError::Backend(e) => e.status(),
            ShimError::AuditDown => 503,
        }
    }
}

impl From<VectorRefusal> for ShimError {
    fn from(r: VectorRefusal) -> Self {
        match r {
            VectorRefusal::Unsupported(_) => ShimError::Forbidden(r.to_string()),
            VectorRefusal::Malformed(_) => ShimError::BadRequest(r.to_string()),
        }
    }
}

fn bad(what: impl Into<String>) -> ShimError {
    ShimError::BadRequest(what.into())
}

/// Runs `op` for `caller`; the JSON of Qdrant's `result`.
pub async fn run(
    shim: &Shim,
    caller: &Arc<Caller>,
    bundle: &Arc<PolicyBundle>,
    op: Op,
    trace: &mut Trace,
) -> Result<Value, ShimError> {
    let policy = match op.collection() {
        Some(c) => Some(policy_of(shim, bundle, caller, c).await),
        None => None,
    };
    let backend = &shim.backend;
    match (op, policy) {
        (Op::ListCollections, _) => {
            let all = backend.call(Request::ListCollections).await?;
            let mut visible = Vec::new();
            for c in all["collections"].as_array().into_iter().flatten() {
                if let Some(name) = c["name"].as_str() {
                    if policy_of(shim, bundle, caller, name).await.visible() {
                        visible.push(json!({ "name": name }));
                    }
                }
            }
            Ok(json!({ "collections": visible }))
        }
        (Op::Exists(c), Some(p)) => {
            p.require_visible()?;
            Ok(backend
                .call(Request::CollectionExists { collection: c })
                .await?)
        }
        (Op::GetCollection(c), Some(p)) => {
            p.require_visible()?;
            let mut info = backend
                .call(Request::GetCollection {
                    collection: c.clone(),
                })
                .await?;
            hide_counts(shim, &p, &mut info, trace).await?;
            Ok(info)
        }
        (Op::Create(c, body), Some(p)) => {
            p.require_manage()?;
            trace.write_ahead(shim).await?;
            Ok(backend
                .call(Request::CreateCollection {
                    collection: c,
                    body,
                })
                .await?)
        }
        (Op::Drop(c), Some(p)) => {
            p.require_manage()?;
            trace.write_ahead(shim).await?;
            Ok(backend
                .call(Request::DeleteCollection { collection: c })
                .await?)
        }
        (Op::CreateIndex(c, body), Some(p)) => {
            p.require_manage()?;
            trace.write_ahead(shim).await?;
            Ok(backend
                .call(Request::CreateIndex {
                    collection: c,
                    body,
                })
                .await?)
        }
        (Op::Upsert(c, body), Some(p)) => upsert(shim, &p, c, body, trace).await,
        (Op::Retrieve(c, body), Some(p)) => {
            let ids = body
                .get("ids")
                .cloned()
                .ok_or_else(|| bad("retrieve needs `ids`"))?;
            only_keys(&body, &["ids", "with_payload", "with_vector", "shard_key"])?;
            no_shard_key(&body)?;
            retrieve(shim, &p, c, ids, &body, trace).await
        }
        (Op::GetPoint(c, id), Some(p)) => {
            let found = retrieve(shim, &p, c, json!([id.clone()]), &json!({}), trace).await?;
            match found {
                Value::Array(mut points) if !points.is_empty() => Ok(points.swap_remove(0)),
                _ => Err(ShimError::NotFound(format!("No point with id {id} found"))),
            }
        }
        (Op::Query(c, body), Some(p)) => query(shim, &p, &c, body, trace).await,
        (Op::QueryBatch(c, body), Some(p)) => {
            let searches = batch(&body)?;
            let mut out = Vec::new();
            for q in searches {
                out.push(query(shim, &p, &c, q, trace).await?);
            }
            Ok(Value::Array(out))
        }
        (Op::Search(c, body), Some(p)) => {
            let q = legacy_search(body)?;
            let mut r = query(shim, &p, &c, q, trace).await?;
            Ok(r["points"].take())
        }
        (Op::SearchBatch(c, body), Some(p)) => {
            let searches = batch(&body)?;
            let mut out = Vec::new();
            for s in searches {
                let mut r = query(shim, &p, &c, legacy_search(s)?, trace).await?;
                out.push(r["points"].take());
            }
            Ok(Value::Array(out))
        }
        (Op::Scroll(c, mut body), Some(p)) => {
            let rule = p.rule(Action::Search)?;
            trace.relation(&p, Action::Search);
            readable_filter(&p, &body)?;
            if let Some(field) = rewriter::order_by_field(&body)? {
                readable(&p, &field, "sorting by")?;
            }
            rewriter::restrict_filtered(&mut body, &rule.qdrant)?;
            vectors_asked(&p, &mut body)?;
            trace.rewritten(&body);
            let mut r = backend
                .call(Request::Scroll {
                    collection: c,
                    body,
                })
                .await?;
            project_points(shim, &p, &mut r["points"], trace);
            Ok(r)
        }
        (Op::Count(c, mut body), Some(p)) => {
            let rule = p.rule(Action::Search)?;
            trace.relation(&p, Action::Search);
            readable_filter(&p, &body)?;
            rewriter::restrict_count(&mut body, &rule.qdrant)?;
            trace.rewritten(&body);
            Ok(backend
                .call(Request::Count {
                    collection: c,
                    body,
                })
                .await?)
        }
        (Op::Delete(c, body), Some(p)) => {
            let rule = p.rule(Action::Delete)?;
            trace.relation(&p, Action::Delete);
            let filter = selected(&p, &body, &rule.qdrant)?;
            only_keys(&body, &["points", "filter", "shard_key"])?;
            no_shard_key(&body)?;
            let body = json!({ "filter": filter });
            trace.rewritten(&body);
            trace.write_ahead(shim).await?;
            Ok(backend
                .call(Request::Delete {
                    collection: c,
                    body,
                })
                .await?)
        }
        (Op::SetPayload(c, body), Some(p)) => {
            let rule = p.rule(Action::Upsert)?;
            trace.relation(&p, Action::Upsert);
            only_keys(&body, &["payload", "points", "filter", "key", "shard_key"])?;
            no_shard_key(&body)?;
            if body.get("key").is_some_and(|k| !k.is_null()) {
                return Err(ShimError::Forbidden(
                    "set_payload with `key` (a nested path) is not supported under policy enforcement".into(),
                ));
            }
            let Some(Value::Object(payload)) = body.get("payload") else {
                return Err(bad("set_payload needs a `payload` object"));
            };
            let schema = p.schema()?;
            for key in payload.keys() {
                untouched_by_policy(&rule.derived.filter, key, "set")?;
            }
            schema
                .check_present(&Value::Object(payload.clone()))
                .map_err(|e| ShimError::Forbidden(e.to_string()))?;
            let filter = selected(&p, &body, &rule.qdrant)?;
            let body = json!({ "payload": payload, "filter": filter });
            trace.rewritten(&body);
            trace.write_ahead(shim).await?;
            Ok(backend
                .call(Request::SetPayload {
                    collection: c,
                    body,
                })
                .await?)
        }
        (Op::DeletePayload(c, body), Some(p)) => {
            let rule = p.rule(Action::Upsert)?;
            trace.relation(&p, Action::Upsert);
            only_keys(&body, &["keys", "points", "filter", "shard_key"])?;
            no_shard_key(&body)?;
            let Some(Value::Array(keys)) = body.get("keys") else {
                return Err(bad("delete_payload needs a `keys` list"));
            };
            let schema = p.schema()?;
            for key in keys {
                let key = key
                    .as_str()
                    .ok_or_else(|| bad("a payload key is a string"))?;
                untouched_by_policy(&rule.derived.filter, key, "delete")?;
                let path = rewriter::field_path("", key)?;
                if schema.field(&path).is_some_and(|f| f.required) {
                    return Err(ShimError::Forbidden(format!(
                        "payload field {path} is required by the policy schema"
                    )));
                }
            }
            let filter = selected(&p, &body, &rule.qdrant)?;
            let body = json!({ "keys": keys, "filter": filter });
            trace.rewritten(&body);
            trace.write_ahead(shim).await?;
            Ok(backend
                .call(Request::DeletePayload {
                    collection: c,
                    body,
                })
                .await?)
        }
        (_, None) => Err(bad("the operation names no collection")),
    }
}

/// The collection policy, derived on the blocking pool on a miss.
async fn policy_of(
    shim: &Shim,
    bundle: &Arc<PolicyBundle>,
    caller: &Arc<Caller>,
    collection: &str,
) -> Arc<CollectionPolicy> {
    if let Some(hit) = shim.policies.cached(bundle, caller, collection) {
        return hit;
    }
    let (bundle, caller, collection) = (bundle.clone(), caller.clone(), collection.to_string());
    let cache = shim.policies.clone();
    tokio::task::spawn_blocking(move || cache.get(&bundle, &caller, &collection))
        .await
        .expect("policy derivation does not panic")
}

fn only_keys(body: &Value, allowed: &[&str]) -> Result<(), ShimError> {
    let map = body
        .as_object()
        .ok_or_else(|| bad("the body must be a JSON object"))?;
    match map.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ShimError::Forbidden(format!(
            "the request key {k:?} is not supported under policy enforcement"
        ))),
        None => Ok(()),
    }
}

fn no_shard_key(body: &Value) -> Result<(), ShimError> {
    match body.get("shard_key") {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(ShimError::Forbidden(
            "shard_key is not supported under policy enforcement".into(),
        )),
    }
}

/// `{"searches": [...]}`
fn batch(body: &Value) -> Result<Vec<Value>, ShimError> {
    only_keys(body, &["searches", "timeout"])?;
    match body.get("searches") {
        Some(Value::Array(s)) => Ok(s.clone()),
        _ => Err(bad("a batch needs a `searches` list")),
    }
}

/// A legacy `…/points/search` body as a universal query.
fn legacy_search(body: Value) -> Result<Value, ShimError> {
    only_keys(
        &body,
        &[
            "vector",
            "filter",
            "params",
            "limit",
            "offset",
            "with_payload",
            "with_vector",
            "score_threshold",
            "shard_key",
        ],
    )?;
    no_shard_key(&body)?;
    let Value::Object(mut map) = body else {
        return Err(bad("the body must be a JSON object"));
    };
    map.remove("shard_key");
    let (query, using) = match map.remove("vector") {
        Some(v @ Value::Array(_)) => (v, None),
        Some(Value::Object(mut named)) => match (named.remove("name"), named.remove("vector")) {
            (Some(name @ Value::String(_)), Some(v)) if named.is_empty() => (v, Some(name)),
            _ => {
                return Err(bad(
                    "a named search vector is {\"name\": …, \"vector\": […]}",
                ))
            }
        },
        _ => return Err(bad("search needs a `vector`")),
    };
    map.insert("query".into(), query);
    if let Some(using) = using {
        map.insert("using".into(), using);
    }
    Ok(Value::Object(map))
}

/// A universal query under the `search` policy.
async fn query(
    shim: &Shim,
    p: &CollectionPolicy,
    collection: &str,
    mut body: Value,
    trace: &mut Trace,
) -> Result<Value, ShimError> {
    let rule = p.rule(Action::Search)?;
    trace.relation(p, Action::Search);
    readable_filter(p, &body)?;
    rewriter::restrict_query(&mut body, &rule.qdrant)?;
    vectors_asked(p, &mut body)?;
    if rule.derived.filter != Filter::True && has_sparse_query(&body, 0) {
        no_idf(shim, collection).await?;
    }
    trace.rewritten(&body);
    let mut r = shim
        .backend
        .call(Request::Query {
            collection: collection.to_string(),
            body,
        })
        .await?;
    project_points(shim, p, &mut r["points"], trace);
    Ok(r)
}

/// Whether a query (or one of its prefetches) scores by a sparse vector.
fn has_sparse_query(body: &Value, depth: usize) -> bool {
    let sparse = |v: &Value| v.get("indices").is_some() && v.get("values").is_some();
    let query = &body["query"];
    depth < 32
        && (sparse(query)
            || sparse(&query["nearest"])
            || match &body["prefetch"] {
                Value::Array(ps) => ps.iter().any(|p| has_sparse_query(p, depth + 1)),
                p @ Value::Object(_) => has_sparse_query(p, depth + 1),
                _ => false,
            })
}

/// Refuses sparse scoring with the IDF modifier: its statistics are taken over every point of
/// the collection, so scores would tell which terms hidden points hold.
async fn no_idf(shim: &Shim, collection: &str) -> Result<(), ShimError> {
    let info = shim
        .backend
        .call(Request::GetCollection {
            collection: collection.to_string(),
        })
        .await?;
    let idf = info["config"]["params"]["sparse_vectors"]
        .as_object()
        .is_some_and(|s| s.values().any(|v| v["modifier"] == "idf"));
    if idf {
        return Err(ShimError::Forbidden(
            "sparse vectors with the IDF modifier score with statistics over points this agent may not see; create the collection without it".into(),
        ));
    }
    Ok(())
}

/// Points by id under the `search` policy: a scroll over `has_id AND policy`.
async fn retrieve(
    shim: &Shim,
    p: &CollectionPolicy,
    collection: String,
    ids: Value,
    body: &Value,
    trace: &mut Trace,
) -> Result<Value, ShimError> {
    let rule = p.rule(Action::Search)?;
    trace.relation(p, Action::Search);
    let filter = rewriter::ids_filter(&ids, &rule.qdrant)?;
    let n = ids.as_array().map_or(0, Vec::len);
    if n == 0 {
        return Ok(json!([]));
    }
    let mut scroll = json!({
        "filter": filter,
        "limit": n,
        "with_payload": body.get("with_payload").cloned().unwrap_or(json!(true)),
        "with_vector": body.get("with_vector").cloned().unwrap_or(json!(false)),
    });
    vectors_asked(p, &mut scroll)?;
    trace.rewritten(&scroll);
    let mut r = shim
        .backend
        .call(Request::Scroll {
            collection,
            body: scroll,
        })
        .await?;
    let mut points = r["points"].take();
    project_points(shim, p, &mut points, trace);
    Ok(points)
}

/// Refuses a filter on a field the agent may not read in full (it would reveal the values).
fn readable_filter(p: &CollectionPolicy, body: &Value) -> Result<(), ShimError> {
    if !p.has_field_rules() {
        return Ok(());
    }
    for field in rewriter::filter_fields(body)? {
        readable(p, &field, "filtering on")?;
    }
    Ok(())
}

fn readable(p: &CollectionPolicy, field: &str, doing: &str) -> Result<(), ShimError> {
    if field == NODE_CONTENT {
        // The blob repeats every metadata field: matching its text would read hidden ones.
        return Err(ShimError::Forbidden(format!(
            "{doing} {NODE_CONTENT}, which holds fields this agent may not read"
        )));
    }
    match p.field(field) {
        ColumnRule::Visible => Ok(()),
        _ => Err(ShimError::Forbidden(format!(
            "{doing} payload field {field}, which this agent may not read"
        ))),
    }
}

/// The points a write selects: its ids (`points`) or its `filter`, ANDed with `policy`.
fn selected(p: &CollectionPolicy, body: &Value, policy: &Value) -> Result<Value, ShimError> {
    match (body.get("points"), body.get("filter")) {
        (Some(ids), None) => Ok(rewriter::ids_filter(ids, policy)?),
        (None, Some(filter)) => {
            readable_filter(p, &json!({ "filter": filter }))?;
            Ok(rewriter::and_filter(Some(filter), policy)?)
        }
        _ => Err(bad(
            "select points by `points` (ids) or by `filter`, one of them",
        )),
    }
}

/// A payload edit may not touch a field the write policy decides on: the edited point then
/// satisfies the policy exactly when it did before.
fn untouched_by_policy(filter: &Filter, key: &str, doing: &str) -> Result<(), ShimError> {
    let path = rewriter::field_path("", key)?;
    for attr in filter.columns() {
        let related = attr == path
            || attr.starts_with(&format!("{path}."))
            || path.starts_with(&format!("{attr}."));
        if related {
            return Err(ShimError::Forbidden(format!(
                "cannot {doing} payload field {path}: the upsert policy decides on {attr} (send the whole point with upsert)"
            )));
        }
    }
    Ok(())
}

/// Applies `read_vector` to a request's `with_vector`.
fn vectors_asked(p: &CollectionPolicy, body: &mut Value) -> Result<(), ShimError> {
    let asked = match body.get("with_vector") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    if !asked {
        return Ok(());
    }
    match p.vectors {
        Vectors::All => Ok(()),
        Vectors::None => {
            body["with_vector"] = Value::Bool(false);
            Ok(())
        }
        Vectors::Some => Err(ShimError::Forbidden(
            "vectors of this collection are readable on some points only; ask without with_vector"
                .into(),
        )),
    }
}

/// Collection info as the agent sees it: without a `search` policy that admits every point,
/// the point count is the count of points it may see, and per-index counts are withheld.
async fn hide_counts(
    shim: &Shim,
    p: &CollectionPolicy,
    info: &mut Value,
    trace: &mut Trace,
) -> Result<(), ShimError> {
    let everything = p
        .rule(Action::Search)
        .is_ok_and(|r| r.derived.filter == Filter::True);
    if everything {
        return Ok(());
    }
    let visible = match p.rule(Action::Search) {
        Ok(rule) => {
            trace.relation(p, Action::Search);
            let body = json!({ "filter": rule.qdrant, "exact": true });
            shim.backend
                .call(Request::Count {
                    collection: p.collection.clone(),
                    body,
                })
                .await?["count"]
                .as_u64()
                .unwrap_or(0)
        }
        Err(_) => 0,
    };
    info["points_count"] = json!(visible);
    info["indexed_vectors_count"] = json!(0);
    for total in ["vectors_count", "segments_count"] {
        if info.get(total).is_some_and(|v| !v.is_null()) {
            info[total] = json!(0);
        }
    }
    if let Some(Value::Object(schema)) = info.get_mut("payload_schema") {
        for index in schema.values_mut() {
            if index.get("points").is_some() {
                index["points"] = json!(0);
            }
        }
    }
    Ok(())
}

/// Projects each returned point (payload fields by `read_field`, vectors by `read_vector`)
/// and records its id and score.
fn project_points(shim: &Shim, p: &CollectionPolicy, points: &mut Value, trace: &mut Trace) {
    let Value::Array(points) = points else {
        return;
    };
    let mut digest = Sha256::new();
    for point in points.iter_mut() {
        if p.vectors == Vectors::None {
            if let Some(v) = point.get_mut("vector") {
                *v = Value::Null;
            }
        }
        if let Some(Value::Object(payload)) = point.get_mut("payload") {
            project(shim, p, payload);
            if trace.recording() {
                digest.update(serde_json::to_vec(payload).unwrap_or_default());
            }
        }
        trace.returned(&point["id"], point.get("score"));
    }
    if trace.recording() {
        trace.payload_digest(digest);
    }
}

/// LlamaIndex's serialized node: its text and, again, its metadata.
const NODE_CONTENT: &str = "_node_content";
/// The blob keys that hold the node's text (projected as the field `text`).
const NODE_TEXT: &[&str] = &["text", "text_resource"];

fn project(shim: &Shim, p: &CollectionPolicy, payload: &mut Map<String, Value>) {
    if !p.has_field_rules() {
        return;
    }
    let stored: &Map<String, Value> = payload;
    // The point's row (for masks that show a value on some points) is read from the payload
    // as stored, and only when such a mask is met: most payloads meet none.
    let row = std::cell::OnceCell::new();
    let leaf = |path: &str, value: &Value| match p.field(path) {
        ColumnRule::Visible => Projected::Keep,
        ColumnRule::Denied => Projected::Drop,
        ColumnRule::Masked { mask, unless } => {
            let shown = row
                .get_or_init(|| p.schema().ok().map(|s| s.row(stored)))
                .as_ref()
                .is_some_and(|row| unless.eval(row) == Some(true));
            if shown {
                Projected::Keep
            } else {
                Projected::Replace(masked(mask, value, &shim.hash_key))
            }
        }
    };
    let edits = rewriter::payload_edits(stored, &mut |path, value| match (path, value) {
        (NODE_CONTENT, Value::String(blob)) => match p.field(NODE_CONTENT) {
            ColumnRule::Visible => match project_node(blob, &leaf) {
                Some(projected) => Projected::Replace(Value::String(projected)),
                None => Projected::Drop,
            },
            _ => Projected::Drop,
        },
        _ => leaf(path, value),
    });
    edits.apply(payload);
}

/// A LlamaIndex node blob, projected: every `metadata` object in it (the node's own, and its
/// relationships', which repeat the source document's) by the rules of the payload fields of
/// the same names, its text by the rule of `text`, and content hashes dropped (a hash of text
/// and metadata would let a guess of a hidden value be checked). `None` (drop the blob) if it
/// is not a JSON object: what cannot be read cannot be projected.
fn project_node(blob: &str, leaf: &dyn Fn(&str, &Value) -> Projected) -> Option<String> {
    let Ok(Value::Object(mut node)) = serde_json::from_str::<Value>(blob) else {
        return None;
    };
    for key in NODE_TEXT {
        let Some(value) = node.get(*key) else {
            continue;
        };
        match leaf("text", value) {
            Projected::Keep => {}
            Projected::Replace(v) => {
                node.insert((*key).to_string(), v);
            }
            Projected::Drop => {
                node.remove(*key);
            }
        }
    }
    project_blob_level(&mut node, leaf, 0)?;
    serde_json::to_string(&node).ok()
}

fn project_blob_level(
    map: &mut Map<String, Value>,
    leaf: &dyn Fn(&str, &Value) -> Projected,
    depth: usize,
) -> Option<()> {
    if depth > 16 {
        return None;
    }
    map.remove("hash");
    for (key, value) in map.iter_mut() {
        match (key.as_str(), value) {
            ("metadata", Value::Object(metadata)) => {
                rewriter::project_payload(metadata, &mut |path, v| leaf(path, v));
            }
            ("metadata", Value::Null) => {}
            ("metadata", _) => return None,
            (_, Value::Object(inner)) => project_blob_level(inner, leaf, depth + 1)?,
            (_, Value::Array(items)) => {
                for item in items {
                    if let Value::Object(inner) = item {
                        project_blob_level(inner, leaf, depth + 1)?;
                    }
                }
            }
            _ => {}
        }
    }
    Some(())
}

/// A masked payload value: as SQL masks text columns, and `null` for any other JSON type.
fn masked(mask: Mask, value: &Value, key: &[u8]) -> Value {
    let Value::String(s) = value else {
        return Value::Null;
    };
    match mask {
        Mask::Null => Value::Null,
        Mask::Redact => json!("***"),
        Mask::Last4 => {
            let chars: Vec<char> = s.chars().collect();
            let keep = if chars.len() > 4 { 4 } else { 0 };
            let hidden = chars.len() - keep;
            json!(std::iter::repeat_n('*', hidden)
                .chain(chars[hidden..].iter().copied())
                .collect::<String>())
        }
        Mask::Hash => {
            use hmac::{KeyInit, Mac};
            let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key).expect("any key");
            mac.update(s.as_bytes());
            json!(audit::hex(&mac.finalize().into_bytes()))
        }
    }
}

/// Upsert under the `upsert` policy.
async fn upsert(
    shim: &Shim,
    p: &CollectionPolicy,
    collection: String,
    body: Value,
    trace: &mut Trace,
) -> Result<Value, ShimError> {
    let rule = p.rule(Action::Upsert)?;
    trace.relation(p, Action::Upsert);
    let schema = p.schema()?;
    only_keys(&body, &["points", "batch", "shard_key", "update_filter"])?;
    no_shard_key(&body)?;
    let client_condition = match body.get("update_filter") {
        None | Some(Value::Null) => None,
        Some(f) => {
            readable_filter(p, &json!({ "filter": f }))?;
            Some(f.clone())
        }
    };
    let (ids, payloads): (Vec<Value>, Vec<Value>) = match (body.get("points"), body.get("batch")) {
        (Some(Value::Array(points)), None) => points
            .iter()
            .map(|pt| {
                (
                    pt.get("id").cloned().unwrap_or(Value::Null),
                    pt.get("payload").cloned().unwrap_or(Value::Null),
                )
            })
            .unzip(),
        (None, Some(Value::Object(b))) => {
            let ids = b
                .get("ids")
                .and_then(Value::as_array)
                .cloned()
                .ok_or_else(|| bad("a batch needs `ids`"))?;
            let payloads = match b.get("payloads") {
                None | Some(Value::Null) => vec![Value::Null; ids.len()],
                Some(Value::Array(p)) if p.len() == ids.len() => p.clone(),
                _ => return Err(bad("a batch's `payloads` must match its `ids`")),
            };
            (ids, payloads)
        }
        _ => return Err(bad("upsert needs `points` (a list) or `batch`")),
    };
    for (id, payload) in ids.iter().zip(&payloads) {
        let payload = match payload {
            Value::Null => Value::Object(Map::new()),
            p => p.clone(),
        };
        let row = schema
            .check(&payload)
            .map_err(|e| ShimError::Forbidden(format!("point {id}: {e}")))?;
        if let Some(check) = rule
            .derived
            .checks
            .iter()
            .find(|c| c.ok.eval(&row) != Some(true))
        {
            return Err(ShimError::Forbidden(format!(
                "point {id} may not be written: {}",
                check.reason
            )));
        }
    }
    // An existing point the agent may not write must not be overwritten. Checked here for a
    // clear refusal, and again by the store: the upsert is conditional on the same policy.
    let ids = Value::Array(ids);
    let all = count(shim, &collection, json!({ "must": [{ "has_id": ids }] })).await?;
    if all > 0 {
        let writable = count(shim, &collection, rewriter::ids_filter(&ids, &rule.qdrant)?).await?;
        if writable < all {
            return Err(ShimError::Forbidden(format!(
                "{} of these points exist and this agent may not overwrite them",
                all - writable
            )));
        }
    }
    let mut body = body;
    // The client's own condition, if any, still holds: an existing point is overwritten only if
    // it matches both.
    body["update_filter"] = rewriter::and_filter(client_condition.as_ref(), &rule.qdrant)?;
    trace.written(&ids);
    trace.write_ahead(shim).await?;
    Ok(shim
        .backend
        .call(Request::Upsert { collection, body })
        .await?)
}

async fn count(shim: &Shim, collection: &str, filter: Value) -> Result<u64, ShimError> {
    let r = shim
        .backend
        .call(Request::Count {
            collection: collection.to_string(),
            body: json!({ "filter": filter, "exact": true }),
        })
        .await?;
    Ok(r["count"].as_u64().unwrap_or(0))
}
