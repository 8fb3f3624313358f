//! Vector-store upstreams behind the Qdrant shim. The shim speaks Qdrant's REST API: it parses
//! a client's request, has the policy rewrite it (payload filters, projections), and hands the
//! rewritten request here as a [`Request`] with its REST JSON body. A backend answers with the
//! JSON of Qdrant's `result` field (the shim adds the envelope).
//!
//! Backends: [`embedded::Embedded`], Qdrant's own in-process engine (`qdrant-edge`), the default;
//! [`remote::Remote`], a Qdrant server or cluster reached over its REST API.

#[cfg(feature = "embedded-vector")]
pub mod embedded;
pub mod remote;
#[cfg(feature = "embedded-vector")]
mod rest;

use serde_json::Value;

/// One Qdrant REST operation on a collection (or on the list of them), with its JSON body as
/// Qdrant's REST API defines it, already rewritten by policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    /// `GET /collections`
    ListCollections,
    /// `GET /collections/{c}`
    GetCollection { collection: String },
    /// `GET /collections/{c}/exists`
    CollectionExists { collection: String },
    /// `PUT /collections/{c}`
    CreateCollection { collection: String, body: Value },
    /// `DELETE /collections/{c}`
    DeleteCollection { collection: String },
    /// `PUT /collections/{c}/index`
    CreateIndex { collection: String, body: Value },
    /// `PUT /collections/{c}/points`
    Upsert { collection: String, body: Value },
    /// `POST /collections/{c}/points` (retrieve by ids)
    Retrieve { collection: String, body: Value },
    /// `POST /collections/{c}/points/query`
    Query { collection: String, body: Value },
    /// `POST /collections/{c}/points/scroll`
    Scroll { collection: String, body: Value },
    /// `POST /collections/{c}/points/count`
    Count { collection: String, body: Value },
    /// `POST /collections/{c}/points/delete`
    Delete { collection: String, body: Value },
    /// `POST /collections/{c}/points/payload`
    SetPayload { collection: String, body: Value },
    /// `POST /collections/{c}/points/payload/delete`
    DeletePayload { collection: String, body: Value },
}

/// Why a backend could not answer, as Qdrant reports it (the HTTP status follows the kind).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VectorError {
    /// 404
    #[error("Not found: {0}")]
    NotFound(String),
    /// 400: a body the backend cannot read, or an operation it does not support.
    #[error("Bad request: {0}")]
    BadRequest(String),
    /// 409
    #[error("Conflict: {0}")]
    Conflict(String),
    /// 500
    #[error("Service internal error: {0}")]
    Internal(String),
}

impl VectorError {
    /// The HTTP status Qdrant answers with.
    pub fn status(&self) -> u16 {
        match self {
            VectorError::NotFound(_) => 404,
            VectorError::BadRequest(_) => 400,
            VectorError::Conflict(_) => 409,
            VectorError::Internal(_) => 500,
        }
    }
}

/// A vector store the shim forwards rewritten requests to.
pub trait VectorBackend: Send + Sync + 'static {
    /// Runs `request`; the JSON of Qdrant's `result` field.
    fn call(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = Result<Value, VectorError>> + Send;
}
