//! The embedded vector store: Qdrant's own engine (`qdrant-edge`) in process, one edge shard per
//! collection under a root directory (`<root>/<collection>/`). Filters, scoring and payload
//! selection are Qdrant's own code, so their semantics are Qdrant's exactly.
//!
//! The engine is synchronous: [`VectorBackend::call`] runs each request on the blocking pool.
//! Writes and flushes of a collection are serialized (the engine's `flush` panics if it meets
//! an update in flight), and every write is flushed before it is acknowledged: this engine
//! version does not replay its write-ahead log when a shard is loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use qdrant_edge::{
    CountRequest, CreateIndex, DeletePayloadOp, EdgeConfig, EdgeShard, FieldIndexOperations,
    JsonPath, PayloadOps, PointInsertOperations, PointOperations, ScrollRequest, SetPayloadOp,
    UpdateOperation, WalOptions,
};
use serde_json::{json, Map, Value};

use super::rest::{self, read};
use super::{Request, VectorBackend, VectorError};

/// A collection: its shard, and the lock its writes and flushes take.
struct Collection {
    shard: EdgeShard,
    writes: Mutex<()>,
}

/// The embedded store: collections under `root`.
pub struct Embedded {
    root: PathBuf,
    collections: RwLock<HashMap<String, Arc<Collection>>>,
    /// Serializes creating and deleting collections.
    catalog: Mutex<()>,
}

fn internal(e: impl std::fmt::Display) -> VectorError {
    VectorError::Internal(e.to_string())
}

/// A collection name Qdrant accepts and that is safe as a directory name.
fn check_name(name: &str) -> Result<(), VectorError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(VectorError::BadRequest(format!(
            "collection name {name:?}: use letters, digits, '_', '-' and '.'"
        )))
    }
}

/// Small WAL segments: the engine keeps them all (this version never truncates its WAL).
fn wal_options() -> WalOptions {
    WalOptions {
        segment_capacity: 1 << 20,
        segment_queue_len: 0,
        ..WalOptions::default()
    }
}

impl Embedded {
    /// Opens the store at `root` (created if missing), loading every collection in it.
    pub fn open(root: &Path) -> Result<Embedded, VectorError> {
        std::fs::create_dir_all(root).map_err(internal)?;
        let mut collections = HashMap::new();
        for entry in std::fs::read_dir(root).map_err(internal)? {
            let entry = entry.map_err(internal)?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if check_name(&name).is_err() || !entry.path().join("edge_config.json").exists() {
                continue;
            }
            let shard = EdgeShard::load(&entry.path(), None).map_err(internal)?;
            collections.insert(
                name,
                Arc::new(Collection {
                    shard,
                    writes: Mutex::new(()),
                }),
            );
        }
        Ok(Embedded {
            root: root.to_path_buf(),
            collections: RwLock::new(collections),
            catalog: Mutex::new(()),
        })
    }

    fn collection(&self, name: &str) -> Result<Arc<Collection>, VectorError> {
        self.collections
            .read()
            .expect("collections lock")
            .get(name)
            .cloned()
            .ok_or_else(|| VectorError::NotFound(format!("Collection `{name}` doesn't exist!")))
    }

    /// Runs `request` on the calling thread (blocking).
    pub fn call_blocking(&self, request: Request) -> Result<Value, VectorError> {
        match request {
            Request::ListCollections => {
                let mut names: Vec<String> = self
                    .collections
                    .read()
                    .expect("collections lock")
                    .keys()
                    .cloned()
                    .collect();
                names.sort();
                Ok(
                    json!({ "collections": names.iter().map(|n| json!({"name": n})).collect::<Vec<_>>() }),
                )
            }
            Request::CollectionExists { collection } => Ok(json!({
                "exists": self.collections.read().expect("collections lock").contains_key(&collection)
            })),
            Request::GetCollection { collection } => {
                let c = self.collection(&collection)?;
                Ok(collection_info(&c.shard))
            }
            Request::CreateCollection { collection, body } => self.create(&collection, &body),
            Request::DeleteCollection { collection } => {
                check_name(&collection)?;
                let _catalog = self.catalog.lock().expect("catalog lock");
                let removed = self
                    .collections
                    .write()
                    .expect("collections lock")
                    .remove(&collection);
                let Some(removed) = removed else {
                    return Ok(json!(false));
                };
                // The shard flushes as it is dropped: wait for writes in flight first.
                let writes = removed.writes.lock().expect("writes lock");
                drop(writes);
                drop(removed);
                std::fs::remove_dir_all(self.root.join(&collection)).map_err(internal)?;
                Ok(json!(true))
            }
            Request::CreateIndex { collection, body } => {
                let body: rest::CreateIndexBody = read(&body)?;
                let field_name: JsonPath = body.field_name.parse().map_err(|_| {
                    VectorError::BadRequest(format!("field_name {:?}", body.field_name))
                })?;
                self.update(
                    &collection,
                    UpdateOperation::FieldIndexOperation(FieldIndexOperations::CreateIndex(
                        CreateIndex {
                            field_name,
                            field_schema: body.field_schema,
                        },
                    )),
                )
            }
            Request::Upsert { collection, body } => {
                let operation = upsert_operation(body)?;
                self.update(&collection, UpdateOperation::PointOperation(operation))
            }
            Request::Delete { collection, body } => {
                let operation = match read::<rest::PointsSelector>(&body)? {
                    rest::PointsSelector::Ids(ids) => {
                        rest::no_shard_key(&ids.shard_key)?;
                        PointOperations::DeletePoints { ids: ids.points }
                    }
                    rest::PointsSelector::Filter(f) => {
                        rest::no_shard_key(&f.shard_key)?;
                        PointOperations::DeletePointsByFilter(f.filter)
                    }
                };
                self.update(&collection, UpdateOperation::PointOperation(operation))
            }
            Request::SetPayload { collection, body } => {
                let op: SetPayloadOp = read(&body)?;
                self.update(
                    &collection,
                    UpdateOperation::PayloadOperation(PayloadOps::SetPayload(op)),
                )
            }
            Request::DeletePayload { collection, body } => {
                let op: DeletePayloadOp = read(&body)?;
                self.update(
                    &collection,
                    UpdateOperation::PayloadOperation(PayloadOps::DeletePayload(op)),
                )
            }
            Request::Retrieve { collection, body } => {
                let body: rest::RetrieveBody = read(&body)?;
                rest::no_shard_key(&body.shard_key)?;
                let c = self.collection(&collection)?;
                let records = c
                    .shard
                    .retrieve(
                        &body.ids,
                        Some(
                            body.with_payload
                                .unwrap_or(qdrant_edge::WithPayloadInterface::Bool(true)),
                        ),
                        Some(body.with_vector.unwrap_or_default()),
                    )
                    .map_err(internal)?;
                Ok(Value::Array(
                    records.into_iter().map(rest::record).collect(),
                ))
            }
            Request::Query { collection, body } => {
                let request = read::<rest::QueryBody>(&body)?.into_request()?;
                let c = self.collection(&collection)?;
                let points = c.shard.query(request).map_err(bad_or_internal)?;
                // Built as a map around the points (`json!` would copy every point again).
                let points = points.into_iter().map(rest::scored_point).collect();
                Ok(Value::Object(Map::from_iter([(
                    "points".to_string(),
                    Value::Array(points),
                )])))
            }
            Request::Scroll { collection, body } => {
                let mut request: ScrollRequest = read(&body)?;
                if request.with_payload.is_none() {
                    request.with_payload = Some(qdrant_edge::WithPayloadInterface::Bool(true));
                }
                let c = self.collection(&collection)?;
                let (records, next) = c.shard.scroll(request).map_err(bad_or_internal)?;
                let points = records.into_iter().map(rest::record).collect();
                Ok(Value::Object(Map::from_iter([
                    ("points".to_string(), Value::Array(points)),
                    ("next_page_offset".to_string(), json!(next)),
                ])))
            }
            Request::Count { collection, body } => {
                let request: CountRequest = read(&body)?;
                let c = self.collection(&collection)?;
                let count = c.shard.count(request).map_err(bad_or_internal)?;
                Ok(json!({ "count": count }))
            }
        }
    }

    fn create(&self, name: &str, body: &Value) -> Result<Value, VectorError> {
        check_name(name)?;
        let body: rest::CreateCollection = read(body)?;
        let mut config = EdgeConfig {
            on_disk_payload: body.on_disk_payload.unwrap_or(true),
            vectors: HashMap::new(),
            sparse_vectors: body
                .sparse_vectors
                .iter()
                .map(|(n, p)| (n.clone(), p.to_edge()))
                .collect(),
            hnsw_config: Default::default(),
            quantization_config: None,
            optimizers: Default::default(),
            wal_options: Some(wal_options()),
        };
        match body.vectors {
            Some(rest::VectorsConfig::Single(p)) => {
                config.vectors.insert(String::new(), p.to_edge());
            }
            Some(rest::VectorsConfig::Named(map)) => {
                config.vectors = map.iter().map(|(n, p)| (n.clone(), p.to_edge())).collect();
            }
            None => {}
        }
        let _catalog = self.catalog.lock().expect("catalog lock");
        if self
            .collections
            .read()
            .expect("collections lock")
            .contains_key(name)
        {
            return Err(VectorError::Conflict(format!(
                "Collection `{name}` already exists!"
            )));
        }
        let path = self.root.join(name);
        std::fs::create_dir_all(&path).map_err(internal)?;
        let shard = match EdgeShard::new(&path, config) {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&path);
                return Err(VectorError::BadRequest(e.to_string()));
            }
        };
        self.collections.write().expect("collections lock").insert(
            name.to_string(),
            Arc::new(Collection {
                shard,
                writes: Mutex::new(()),
            }),
        );
        Ok(json!(true))
    }

    /// Runs the collection's optimizers (segment merging, HNSW indexing) to completion, as a
    /// Qdrant server does in the background. Blocks writes to the collection meanwhile.
    pub fn optimize(&self, collection: &str) -> Result<bool, VectorError> {
        let c = self.collection(collection)?;
        let _writes = c.writes.lock().expect("writes lock");
        let optimized = c.shard.optimize().map_err(internal)?;
        c.shard.flush();
        Ok(optimized)
    }

    /// Applies a write and flushes it (this engine version does not replay its WAL on load).
    fn update(&self, collection: &str, operation: UpdateOperation) -> Result<Value, VectorError> {
        let c = self.collection(collection)?;
        let _writes = c.writes.lock().expect("writes lock");
        c.shard.update(operation).map_err(bad_or_internal)?;
        c.shard.flush();
        Ok(json!({ "operation_id": 0, "status": "completed" }))
    }
}

/// The engine's errors: a request it refuses (a wrong vector size or name, a bad filter) is
/// the client's 400; the rest are 500.
fn bad_or_internal(e: qdrant_edge::OperationError) -> VectorError {
    let text = e.to_string();
    match e {
        qdrant_edge::OperationError::WrongVectorDimension { .. }
        | qdrant_edge::OperationError::VectorNameNotExists { .. }
        | qdrant_edge::OperationError::ValidationError { .. }
        | qdrant_edge::OperationError::WrongSparse
        | qdrant_edge::OperationError::WrongMulti
        | qdrant_edge::OperationError::TypeError { .. } => VectorError::BadRequest(text),
        qdrant_edge::OperationError::PointIdError { .. } => VectorError::NotFound(text),
        _ => VectorError::Internal(text),
    }
}

/// Upsert bodies: `{"points": [...]}` or `{"batch": {...}}`. An `update_filter` makes it
/// conditional: an existing point is overwritten only if it matches the filter (new points are
/// inserted). `shard_key` and `update_mode` are not supported here.
fn upsert_operation(mut body: Value) -> Result<PointOperations, VectorError> {
    let mut condition = None;
    if let Some(map) = body.as_object_mut() {
        for key in ["shard_key", "update_mode"] {
            if map.get(key).is_some_and(|v| !v.is_null()) {
                return Err(VectorError::BadRequest(format!(
                    "{key} is not supported by the embedded vector store"
                )));
            }
            map.remove(key);
        }
        condition = match map.remove("update_filter") {
            None | Some(Value::Null) => None,
            Some(f) => Some(read::<qdrant_edge::Filter>(&f)?),
        };
    }
    let points: PointInsertOperations = read(&body)?;
    Ok(match condition {
        None => PointOperations::UpsertPoints(points),
        Some(condition) => {
            PointOperations::UpsertPointsConditional(qdrant_edge::ConditionalInsertOperation {
                points_op: points,
                condition,
                update_mode: None,
            })
        }
    })
}

/// `GET /collections/{c}`: the fields Qdrant's clients read (and validate).
fn collection_info(shard: &EdgeShard) -> Value {
    let info = shard.info();
    let config = shard.config();
    let vectors = match config.vectors.get("") {
        Some(only) if config.vectors.len() == 1 => rest::vector_params(only),
        _ => Value::Object(
            config
                .vectors
                .iter()
                .map(|(n, p)| (n.clone(), rest::vector_params(p)))
                .collect(),
        ),
    };
    let sparse: serde_json::Map<String, Value> = config
        .sparse_vectors
        .iter()
        .map(|(n, p)| (n.clone(), rest::sparse_vector_params(p)))
        .collect();
    let payload_schema: serde_json::Map<String, Value> = info
        .payload_schema
        .iter()
        .map(|(path, index)| (path.to_string(), json!(index)))
        .collect();
    let hnsw = &config.hnsw_config;
    json!({
        "status": "green",
        "optimizer_status": "ok",
        "indexed_vectors_count": info.indexed_vectors_count,
        "points_count": info.points_count,
        "segments_count": info.segments_count,
        "config": {
            "params": {
                "vectors": vectors,
                "shard_number": 1,
                "replication_factor": 1,
                "write_consistency_factor": 1,
                "on_disk_payload": config.on_disk_payload,
                "sparse_vectors": sparse,
            },
            "hnsw_config": {
                "m": hnsw.m,
                "ef_construct": hnsw.ef_construct,
                "full_scan_threshold": hnsw.full_scan_threshold,
                "max_indexing_threads": hnsw.max_indexing_threads,
                "on_disk": hnsw.on_disk.unwrap_or(false),
            },
            "optimizer_config": {
                "deleted_threshold": 0.2,
                "vacuum_min_vector_number": 1000,
                "default_segment_number": 0,
                "max_segment_size": null,
                "memmap_threshold": null,
                "indexing_threshold": 10000,
                "flush_interval_sec": 5,
                "max_optimization_threads": null,
            },
            "wal_config": { "wal_capacity_mb": 1, "wal_segments_ahead": 0 },
            "quantization_config": null,
        },
        "payload_schema": payload_schema,
    })
}

impl VectorBackend for Arc<Embedded> {
    async fn call(&self, request: Request) -> Result<Value, VectorError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.call_blocking(request))
            .await
            .map_err(|e| VectorError::Internal(format!("the vector store failed: {e}")))?
    }
}
