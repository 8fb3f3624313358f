//! Qdrant REST request bodies the engine's own types do not read (collection creation and the
//! universal query), and the engine's results in Qdrant's REST reply shapes. The defaults and
//! conversions follow Qdrant 1.18's REST layer (`collection_query.rs`): limit 10, RRF k 2, MMR
//! lambda = 1 - diversity.

use std::collections::HashMap;

use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Distance, EdgeSparseVectorParams, EdgeVectorParams, Filter, Fusion, Modifier,
    MultiVectorConfig, NamedQuery, PointId, Prefetch, QueryEnum, QueryRequest, Record, ScoredPoint,
    ScoringQuery, SearchParams, SparseVector, VectorInternal, VectorStorageDatatype,
    VectorStructPersisted, WithPayloadInterface, WithVector,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::VectorError;

/// Rows a query returns when the request names no limit.
const DEFAULT_LIMIT: usize = 10;
const DEFAULT_RRF_K: usize = 2;
const DEFAULT_MMR_DIVERSITY: f32 = 0.5;

fn bad(what: impl std::fmt::Display) -> VectorError {
    VectorError::BadRequest(what.to_string())
}

/// Reads a REST body into `T`, naming the body's problem as Qdrant does.
pub fn read<T: for<'de> Deserialize<'de>>(body: &Value) -> Result<T, VectorError> {
    T::deserialize(body).map_err(|e| bad(format!("Format error in JSON body: {e}")))
}

// ---- Collection creation -------------------------------------------------------------------

/// `PUT /collections/{c}` (the fields the engine keeps; the rest are accepted and ignored).
#[derive(Debug, Deserialize)]
pub struct CreateCollection {
    pub vectors: Option<VectorsConfig>,
    #[serde(default)]
    pub sparse_vectors: HashMap<String, SparseVectorParams>,
    pub on_disk_payload: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum VectorsConfig {
    Single(VectorParams),
    Named(HashMap<String, VectorParams>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct VectorParams {
    pub size: usize,
    pub distance: Distance,
    pub on_disk: Option<bool>,
    pub multivector_config: Option<MultiVectorConfig>,
    pub datatype: Option<VectorStorageDatatype>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SparseVectorParams {
    pub modifier: Option<Modifier>,
}

impl VectorParams {
    pub fn to_edge(&self) -> EdgeVectorParams {
        EdgeVectorParams {
            size: self.size,
            distance: self.distance,
            on_disk: self.on_disk,
            multivector_config: self.multivector_config,
            datatype: self.datatype,
            quantization_config: None,
            hnsw_config: None,
        }
    }
}

impl SparseVectorParams {
    pub fn to_edge(&self) -> EdgeSparseVectorParams {
        EdgeSparseVectorParams {
            full_scan_threshold: None,
            on_disk: None,
            modifier: self.modifier,
            datatype: None,
        }
    }
}

/// The REST `VectorParams` of an engine vector (only the keys Qdrant's clients accept).
pub fn vector_params(p: &EdgeVectorParams) -> Value {
    let mut v =
        json!({ "size": p.size, "distance": p.distance, "on_disk": p.on_disk.unwrap_or(false) });
    if let Some(m) = &p.multivector_config {
        v["multivector_config"] = json!(m);
    }
    if let Some(d) = &p.datatype {
        v["datatype"] = json!(d);
    }
    v
}

/// The REST `SparseVectorParams` of an engine sparse vector.
pub fn sparse_vector_params(p: &EdgeSparseVectorParams) -> Value {
    let mut v = json!({});
    if let Some(m) = &p.modifier {
        v["modifier"] = json!(m);
    }
    v
}

// ---- Universal query -----------------------------------------------------------------------

/// `POST /collections/{c}/points/query`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryBody {
    #[serde(default)]
    pub prefetch: OneOrMany<PrefetchBody>,
    pub query: Option<QueryInput>,
    pub using: Option<String>,
    pub filter: Option<Filter>,
    pub params: Option<SearchParams>,
    pub score_threshold: Option<f32>,
    pub limit: Option<usize>,
    pub offset: Option<usize>,
    pub with_vector: Option<WithVector>,
    pub with_payload: Option<WithPayloadInterface>,
    pub lookup_from: Option<Value>,
    pub shard_key: Option<Value>,
}

/// A prefetch: the same fields minus the output options.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefetchBody {
    #[serde(default)]
    pub prefetch: OneOrMany<PrefetchBody>,
    pub query: Option<QueryInput>,
    pub using: Option<String>,
    pub filter: Option<Filter>,
    pub params: Option<SearchParams>,
    pub score_threshold: Option<f32>,
    pub limit: Option<usize>,
    pub lookup_from: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(Box<T>),
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(one) => vec![*one],
            OneOrMany::Many(many) => many,
        }
    }
}

/// What a query scores by.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum QueryInput {
    /// `{"nearest": …, "mmr": …}`
    Nearest {
        nearest: VectorInput,
        mmr: Option<MmrBody>,
    },
    /// `{"fusion": "rrf" | "dbsf"}`
    Fusion { fusion: FusionName },
    /// `{"rrf": {"k": …, "weights": …}}`
    Rrf { rrf: RrfBody },
    /// Anything else Qdrant knows (recommend, discover, context, order_by, formula, sample).
    Other(serde_json::Map<String, Value>),
    /// A bare vector or point id: nearest to it.
    Vector(VectorInput),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum VectorInput {
    Dense(Vec<f32>),
    Multi(Vec<Vec<f32>>),
    Sparse { indices: Vec<u32>, values: Vec<f32> },
    Id(PointId),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmrBody {
    pub diversity: Option<f32>,
    pub candidates_limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FusionName {
    Rrf,
    Dbsf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RrfBody {
    pub k: Option<usize>,
    pub weights: Option<Vec<f32>>,
}

impl VectorInput {
    fn into_internal(self) -> Result<VectorInternal, VectorError> {
        Ok(match self {
            VectorInput::Dense(v) => VectorInternal::from(v),
            VectorInput::Sparse { indices, values } => {
                let mut pairs: Vec<(u32, f32)> = indices.into_iter().zip(values).collect();
                pairs.sort_by_key(|(i, _)| *i);
                let (indices, values) = pairs.into_iter().unzip();
                VectorInternal::from(SparseVector::new(indices, values).map_err(bad)?)
            }
            VectorInput::Multi(m) => VectorInternal::from(
                qdrant_edge::TypedMultiDenseVector::try_from_matrix(m).map_err(bad)?,
            ),
            VectorInput::Id(id) => {
                return Err(bad(format!(
                    "a query by point id ({id}) is not supported by the embedded vector store; send the vector"
                )))
            }
        })
    }
}

fn scoring(
    query: Option<QueryInput>,
    using: Option<String>,
    limit: usize,
) -> Result<Option<ScoringQuery>, VectorError> {
    let Some(query) = query else {
        return Ok(None);
    };
    let nearest = |v: VectorInput, using: Option<String>| -> Result<ScoringQuery, VectorError> {
        Ok(ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
            query: v.into_internal()?,
            using,
        })))
    };
    Ok(Some(match query {
        QueryInput::Vector(v) => nearest(v, using)?,
        QueryInput::Nearest {
            nearest: v,
            mmr: None,
        } => nearest(v, using)?,
        QueryInput::Nearest {
            nearest: v,
            mmr: Some(mmr),
        } => ScoringQuery::Mmr(qdrant_edge::Mmr {
            vector: v.into_internal()?,
            using: using.unwrap_or_default(),
            lambda: OrderedFloat(1.0 - mmr.diversity.unwrap_or(DEFAULT_MMR_DIVERSITY)),
            candidates_limit: mmr.candidates_limit.unwrap_or(limit),
        }),
        QueryInput::Fusion {
            fusion: FusionName::Rrf,
        } => ScoringQuery::Fusion(Fusion::Rrf {
            k: DEFAULT_RRF_K,
            weights: None,
        }),
        QueryInput::Fusion {
            fusion: FusionName::Dbsf,
        } => ScoringQuery::Fusion(Fusion::Dbsf),
        QueryInput::Rrf { rrf } => ScoringQuery::Fusion(Fusion::Rrf {
            k: rrf.k.unwrap_or(DEFAULT_RRF_K),
            weights: rrf
                .weights
                .map(|w| w.into_iter().map(OrderedFloat).collect()),
        }),
        QueryInput::Other(map) => {
            let kind = map.keys().next().cloned().unwrap_or_default();
            return Err(bad(format!(
                "the query kind {kind:?} is not supported by the embedded vector store"
            )));
        }
    }))
}

/// A request key this store does not support (`shard_key`: shards it does not have;
/// `lookup_from`: points of another collection) must be absent.
fn absent_key(name: &str, value: &Option<Value>) -> Result<(), VectorError> {
    match value {
        None => Ok(()),
        Some(_) => Err(bad(format!(
            "{name} is not supported by the embedded vector store"
        ))),
    }
}

pub fn no_shard_key(shard_key: &Option<Value>) -> Result<(), VectorError> {
    absent_key("shard_key", shard_key)
}

fn no_lookup(lookup_from: &Option<Value>) -> Result<(), VectorError> {
    absent_key("lookup_from", lookup_from)
}

fn prefetch(body: PrefetchBody) -> Result<Prefetch, VectorError> {
    no_lookup(&body.lookup_from)?;
    let limit = body.limit.unwrap_or(DEFAULT_LIMIT);
    Ok(Prefetch {
        prefetches: body
            .prefetch
            .into_vec()
            .into_iter()
            .map(prefetch)
            .collect::<Result<_, _>>()?,
        query: scoring(body.query, body.using, limit)?,
        limit,
        params: body.params,
        filter: body.filter,
        score_threshold: body.score_threshold.map(OrderedFloat),
    })
}

impl QueryBody {
    pub fn into_request(self) -> Result<QueryRequest, VectorError> {
        no_lookup(&self.lookup_from)?;
        no_shard_key(&self.shard_key)?;
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        Ok(QueryRequest {
            prefetches: self
                .prefetch
                .into_vec()
                .into_iter()
                .map(prefetch)
                .collect::<Result<_, _>>()?,
            query: scoring(self.query, self.using, limit)?,
            filter: self.filter,
            score_threshold: self.score_threshold.map(OrderedFloat),
            limit,
            offset: self.offset.unwrap_or(0),
            params: self.params,
            with_vector: self.with_vector.unwrap_or_default(),
            with_payload: self.with_payload.unwrap_or_default(),
        })
    }
}

// ---- Replies -------------------------------------------------------------------------------

fn vector_json(v: qdrant_edge::VectorStructInternal) -> Value {
    serde_json::to_value(VectorStructPersisted::from(v)).unwrap_or(Value::Null)
}

/// A REST `ScoredPoint`.
pub fn scored_point(p: ScoredPoint) -> Value {
    let mut v = json!({ "id": p.id, "version": p.version, "score": p.score });
    if let Some(payload) = p.payload {
        // Moved, not copied: the engine's payload is a serde_json map already.
        v["payload"] = Value::Object(payload.0);
    }
    if let Some(vector) = p.vector {
        v["vector"] = vector_json(vector);
    }
    if let Some(order) = p.order_value {
        v["order_value"] = json!(order);
    }
    v
}

/// A REST `Record`.
pub fn record(r: Record) -> Value {
    let mut v = json!({ "id": r.id });
    if let Some(payload) = r.payload {
        // Moved, not copied: the engine's payload is a serde_json map already.
        v["payload"] = Value::Object(payload.0);
    }
    if let Some(vector) = r.vector {
        v["vector"] = vector_json(vector);
    }
    if let Some(order) = r.order_value {
        v["order_value"] = json!(order);
    }
    v
}

/// `POST /collections/{c}/points` (retrieve).
#[derive(Debug, Deserialize)]
pub struct RetrieveBody {
    pub ids: Vec<PointId>,
    pub with_payload: Option<WithPayloadInterface>,
    pub with_vector: Option<WithVector>,
    pub shard_key: Option<Value>,
}

/// `POST /collections/{c}/points/delete`: by ids or by filter, never both (a body with both
/// would be read as ids alone).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PointsSelector {
    Ids(PointIds),
    Filter(PointsFilter),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointIds {
    pub points: Vec<PointId>,
    pub shard_key: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PointsFilter {
    pub filter: Filter,
    pub shard_key: Option<Value>,
}

/// `PUT /collections/{c}/index`.
#[derive(Debug, Deserialize)]
pub struct CreateIndexBody {
    pub field_name: String,
    pub field_schema: Option<qdrant_edge::PayloadFieldSchema>,
}
