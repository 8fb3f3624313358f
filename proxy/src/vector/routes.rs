//! The shim's HTTP surface: the Qdrant REST endpoints its clients call, each turned into an
//! [`Op`]; Qdrant's reply envelope (`{"result", "status": "ok", "time"}`, errors as
//! `{"status": {"error"}, "time"}`); and a 403 naming the endpoint for every other path or
//! method, so an API the shim does not enforce is never reached.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Extension;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::auth;
use super::ops::{self, Op, ShimError};
use super::record::Trace;
use super::Shim;

type Shared = State<Arc<Shim>>;
type Peer = ConnectInfo<SocketAddr>;
type Tls = Option<Extension<super::OverTls>>;

/// The shim's routes over `shim`.
pub fn router(shim: Arc<Shim>) -> Router {
    let limit = shim.config.max_body_bytes;
    Router::new()
        .route("/", get(root))
        .route("/collections", get(list))
        .route(
            "/collections/{c}",
            get(get_collection).put(create).delete(drop_collection),
        )
        .route("/collections/{c}/exists", get(exists))
        .route("/collections/{c}/index", put(create_index))
        .route("/collections/{c}/points", put(upsert).post(retrieve))
        .route("/collections/{c}/points/{id}", get(get_point))
        .route("/collections/{c}/points/query", post(query))
        .route("/collections/{c}/points/query/batch", post(query_batch))
        .route("/collections/{c}/points/search", post(search))
        .route("/collections/{c}/points/search/batch", post(search_batch))
        .route("/collections/{c}/points/scroll", post(scroll))
        .route("/collections/{c}/points/count", post(count))
        .route("/collections/{c}/points/delete", post(delete))
        .route("/collections/{c}/points/payload", post(set_payload))
        .route(
            "/collections/{c}/points/payload/delete",
            post(delete_payload),
        )
        .fallback(not_served)
        .method_not_allowed_fallback(not_served)
        .layer(DefaultBodyLimit::max(limit))
        .with_state(shim)
}

fn envelope_error(status: u16, message: &str, start: Instant) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "status": { "error": message }, "time": start.elapsed().as_secs_f64() })),
    )
        .into_response()
}

async fn not_served(method: Method, uri: Uri) -> Response {
    envelope_error(
        403,
        &format!(
            "Portcullis does not serve {method} {} (the Qdrant endpoints it enforces policy on are listed in its README)",
            uri.path()
        ),
        Instant::now(),
    )
}

async fn root(State(shim): Shared) -> Response {
    Json(json!({ "title": "qdrant - vector search engine", "version": shim.version }))
        .into_response()
}

/// The body as JSON (an empty body is `{}`).
fn body(bytes: &Bytes) -> Result<Value, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("Format error in JSON body: {e}"))
}

/// Authenticates, runs and records one request.
async fn handle(
    shim: Arc<Shim>,
    (peer, tls): (SocketAddr, bool),
    headers: HeaderMap,
    statement: String,
    op: Result<Op, String>,
) -> Response {
    let start = Instant::now();
    let caller = match auth::remembered(&shim.keys, &headers) {
        Some(c) => Ok(Ok(c)),
        None => {
            let auth_shim = shim.clone();
            tokio::task::spawn_blocking(move || {
                auth::authenticate(&auth_shim.shared, &auth_shim.keys, &headers, tls)
            })
            .await
        }
    };
    let caller = match caller {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => return envelope_error(401, &e.to_string(), start),
        Err(_) => return envelope_error(500, "authentication failed", start),
    };
    let op = match op {
        Ok(op) => op,
        Err(message) => return envelope_error(400, &message, start),
    };
    if let Some(audit) = &shim.shared.audit {
        if !audit.healthy() && !audit.fail_open {
            return envelope_error(503, &ShimError::AuditDown.to_string(), start);
        }
    }
    let bundle = shim
        .shared
        .policies
        .as_ref()
        .expect("the shim runs with policies")
        .current();
    let mut trace = Trace::new(
        &caller,
        (Some(peer), tls),
        statement,
        op.body(),
        bundle.version.to_string(),
        shim.shared.audit.is_some(),
    );
    let result = ops::run(&shim, &caller, &bundle, op, &mut trace).await;
    let recorded = trace.finish(&shim, &result.as_ref().map(|_| ())).await;
    crate::metrics::metrics().statement(
        &caller.agent,
        if result.is_ok() { "rewrite" } else { "deny" },
    );
    match (result, recorded) {
        (_, Err(e)) | (Err(e), _) => {
            tracing::debug!(agent = %caller.agent, "vector request refused: {e}");
            envelope_error(e.status(), &e.to_string(), start)
        }
        (Ok(result), Ok(())) => Json(Reply {
            result,
            status: "ok",
            time: start.elapsed().as_secs_f64(),
        })
        .into_response(),
    }
}

/// Qdrant's reply envelope, serialized around the result as it is (`json!` would copy the
/// result's whole tree first: a tenth of a small search's cost).
#[derive(serde::Serialize)]
struct Reply {
    result: Value,
    status: &'static str,
    time: f64,
}

async fn list(
    State(shim): Shared,
    ConnectInfo(peer): Peer,
    tls: Tls,
    headers: HeaderMap,
) -> Response {
    let statement = "GET /collections".to_string();
    handle(
        shim,
        (peer, tls.is_some()),
        headers,
        statement,
        Ok(Op::ListCollections),
    )
    .await
}

macro_rules! without_body {
    ($name:ident, $method:literal, $suffix:literal, $op:expr) => {
        async fn $name(
            State(shim): Shared,
            ConnectInfo(peer): Peer,
            tls: Tls,
            headers: HeaderMap,
            Path(c): Path<String>,
        ) -> Response {
            let statement = format!(concat!($method, " /collections/{}", $suffix), c);
            handle(shim, (peer, tls.is_some()), headers, statement, Ok($op(c))).await
        }
    };
}

macro_rules! with_body {
    ($name:ident, $method:literal, $suffix:literal, $op:expr) => {
        async fn $name(
            State(shim): Shared,
            ConnectInfo(peer): Peer,
            tls: Tls,
            headers: HeaderMap,
            Path(c): Path<String>,
            bytes: Bytes,
        ) -> Response {
            let statement = format!(concat!($method, " /collections/{}", $suffix), c);
            let op = body(&bytes).map(|b| $op(c, b));
            handle(shim, (peer, tls.is_some()), headers, statement, op).await
        }
    };
}

without_body!(get_collection, "GET", "", Op::GetCollection);
without_body!(drop_collection, "DELETE", "", Op::Drop);
without_body!(exists, "GET", "/exists", Op::Exists);
with_body!(create, "PUT", "", Op::Create);
with_body!(create_index, "PUT", "/index", Op::CreateIndex);
with_body!(upsert, "PUT", "/points", Op::Upsert);
with_body!(retrieve, "POST", "/points", Op::Retrieve);
with_body!(query, "POST", "/points/query", Op::Query);
with_body!(query_batch, "POST", "/points/query/batch", Op::QueryBatch);
with_body!(search, "POST", "/points/search", Op::Search);
with_body!(
    search_batch,
    "POST",
    "/points/search/batch",
    Op::SearchBatch
);
with_body!(scroll, "POST", "/points/scroll", Op::Scroll);
with_body!(count, "POST", "/points/count", Op::Count);
with_body!(delete, "POST", "/points/delete", Op::Delete);
with_body!(set_payload, "POST", "/points/payload", Op::SetPayload);
with_body!(
    delete_payload,
    "POST",
    "/points/payload/delete",
    Op::DeletePayload
);

async fn get_point(
    State(shim): Shared,
    ConnectInfo(peer): Peer,
    tls: Tls,
    headers: HeaderMap,
    Path((c, id)): Path<(String, String)>,
) -> Response {
    let statement = format!("GET /collections/{c}/points/{id}");
    // A point id is an unsigned integer or a UUID.
    let id = match id.parse::<u64>() {
        Ok(n) => json!(n),
        Err(_) => json!(id),
    };
    handle(
        shim,
        (peer, tls.is_some()),
        headers,
        statement,
        Ok(Op::GetPoint(c, id)),
    )
    .await
}
