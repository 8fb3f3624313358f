//! Load generator for `bench/vector.sh`: seeds an embedded store, then measures filtered vector
//! search either against the engine called directly (the same `Embedded::call` the shim makes,
//! with the filter the shim injects) or over HTTP against a Portcullis Qdrant API. Prints one
//! line: `n=… tps=… p50_ms=… p99_ms=…`.
//!
//! Both modes cycle through the same query vectors, made before the clock starts. Over HTTP each
//! client is one keep-alive connection writing pre-serialized requests and reading replies by
//! their `content-length` (as `wrk` does): on a 2-core machine the load generator shares the
//! cores with the shim, so it should take as little of them as it can. Every reply's status is
//! checked, and every reply must hold a `points` list.
//!
//! ```text
//! vector_bench seed DIR POINTS DIMS
//! vector_bench direct DIR FILTER_JSON SECONDS CLIENTS DIMS
//! vector_bench shim URL API_KEY SECONDS CLIENTS DIMS
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use connectors::vector::embedded::Embedded;
use connectors::vector::{Request, VectorBackend};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const COLLECTION: &str = "bench_docs";

/// xorshift64*: the same query vectors in both modes, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (x >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }

    fn vector(&mut self, dims: usize) -> Vec<f32> {
        (0..dims).map(|_| self.next()).collect()
    }
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize) -> T {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} missing or malformed; see the usage in the source"))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // Over HTTP the generator only writes and reads sockets: one thread (as one `wrk` thread)
    // leaves the most of the two cores to the shim. In process, the engine runs on the
    // blocking pool either way.
    let runtime = match args.get(1).map(String::as_str) {
        Some("shim") => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    }
    .enable_all()
    .build()
    .expect("a tokio runtime");
    runtime.block_on(run_mode(args));
}

async fn run_mode(args: Vec<String>) {
    match args.get(1).map(String::as_str) {
        Some("seed") => seed(&args[2], arg(&args, 3), arg(&args, 4)).await,
        Some("direct") => {
            let store = Arc::new(Embedded::open(args[2].as_ref()).expect("open the store"));
            let filter: Value = serde_json::from_str(&args[3]).expect("FILTER_JSON");
            let dims = arg(&args, 6);
            run(arg(&args, 4), arg(&args, 5), move |client| {
                let store = store.clone();
                let bodies: Vec<Value> = queries(client, dims)
                    .into_iter()
                    .map(|q| json!({ "query": q, "filter": filter, "limit": 10, "with_payload": true }))
                    .collect();
                let mut next = 0;
                move || {
                    let body = bodies[next % bodies.len()].clone();
                    next += 1;
                    let store = store.clone();
                    async move {
                        let r = store
                            .call(Request::Query {
                                collection: COLLECTION.into(),
                                body,
                            })
                            .await
                            .expect("query");
                        assert!(r["points"].is_array());
                    }
                }
            })
            .await
        }
        Some("shim") => {
            let address = args[2]
                .strip_prefix("http://")
                .expect("URL: http://host:port")
                .trim_end_matches('/')
                .to_string();
            let key = args[3].clone();
            let dims = arg(&args, 6);
            let host = address.clone();
            let requests = move |client| {
                queries(client, dims)
                    .into_iter()
                    .map(|q| {
                        let body = serde_json::to_vec(
                            &json!({ "query": q, "limit": 10, "with_payload": true }),
                        )
                        .expect("JSON");
                        let mut request = format!(
                            "POST /collections/{COLLECTION}/points/query HTTP/1.1\r\nhost: {host}\r\n\
                             api-key: {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                            body.len()
                        )
                        .into_bytes();
                        request.extend_from_slice(&body);
                        request
                    })
                    .collect()
            };
            run_http(arg(&args, 4), arg(&args, 5), requests, address).await
        }
        _ => panic!("usage: see the source"),
    }
}

async fn seed(dir: &str, points: usize, dims: usize) {
    let store = Arc::new(Embedded::open(dir.as_ref()).expect("open the store"));
    store
        .call(Request::CreateCollection {
            collection: COLLECTION.into(),
            body: json!({ "vectors": { "size": dims, "distance": "Cosine" } }),
        })
        .await
        .expect("create");
    store
        .call(Request::CreateIndex {
            collection: COLLECTION.into(),
            body: json!({ "field_name": "tenant_id", "field_schema": "integer" }),
        })
        .await
        .expect("index");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let started = Instant::now();
    for chunk in (0..points).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<Value> = chunk
            .iter()
            .map(|&i| {
                let group = ["support", "billing", "legal"][i % 3];
                let class = ["public", "internal", "restricted"][i % 3];
                json!({
                    "id": i,
                    "vector": rng.vector(dims),
                    "payload": {
                        "tenant_id": (i % 10) as i64,
                        "acl_groups": [group],
                        "classification": class,
                        "title": format!("document {i}"),
                    }
                })
            })
            .collect();
        store
            .call(Request::Upsert {
                collection: COLLECTION.into(),
                body: json!({ "points": batch }),
            })
            .await
            .expect("upsert");
    }
    eprintln!("seeded {points} points in {:?}", started.elapsed());
    let started = Instant::now();
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.optimize(COLLECTION))
        .await
        .unwrap()
        .expect("optimize");
    eprintln!("optimized (HNSW) in {:?}", started.elapsed());
}

/// Query vectors per client, cycled: made before the clock starts, the same in both modes.
const QUERIES_PER_CLIENT: usize = 64;

fn queries(client: usize, dims: usize) -> Vec<Vec<f32>> {
    let mut rng = Rng(0x1234_5678 + client as u64 * 7919);
    (0..QUERIES_PER_CLIENT).map(|_| rng.vector(dims)).collect()
}

/// `clients` tasks issue requests back to back for `seconds`; `make(client)` gives each client
/// its request maker, built before the clock starts. Prints the latencies of every request.
async fn run<M, F, Fut>(seconds: u64, clients: usize, make: M)
where
    M: Fn(usize) -> F,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let makers: Vec<F> = (0..clients).map(&make).collect();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut request in makers {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                request().await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    gather(tasks, started).await;
}

/// [`run`] over HTTP/1.1: each client one keep-alive connection to `address`, writing the
/// pre-serialized `requests(client)` in turn.
async fn run_http<R>(seconds: u64, clients: usize, requests: R, address: String)
where
    R: Fn(usize) -> Vec<Vec<u8>>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let all_requests: Vec<Vec<Vec<u8>>> = (0..clients).map(&requests).collect();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for requests in all_requests {
        let address = address.clone();
        tasks.push(tokio::spawn(async move {
            let mut stream = tokio::net::TcpStream::connect(&address)
                .await
                .expect("connect to the shim");
            stream.set_nodelay(true).expect("nodelay");
            let mut reply = Vec::with_capacity(64 * 1024);
            let mut latencies = Vec::new();
            let mut next = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                stream
                    .write_all(&requests[next % requests.len()])
                    .await
                    .expect("write");
                next += 1;
                read_reply(&mut stream, &mut reply).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    gather(tasks, started).await;
}

/// Reads one HTTP/1.1 reply with a `content-length` into `buf`; panics unless it is a 200
/// whose body holds a `points` list.
async fn read_reply(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) {
    buf.clear();
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf).await;
    };
    let head = std::str::from_utf8(&buf[..head_end]).expect("an ASCII reply head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse().ok())?
        })
        .expect("a content-length");
    while buf.len() < head_end + length {
        read_more(stream, buf).await;
    }
    assert!(
        find(&buf[head_end..], b"\"points\":[").is_some(),
        "{}",
        String::from_utf8_lossy(&buf[head_end..])
    );
}

async fn read_more(stream: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 16 * 1024];
    let n = stream.read(&mut chunk).await.expect("read");
    assert!(n > 0, "the shim closed the connection");
    buf.extend_from_slice(&chunk[..n]);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Waits for every client task and prints the latencies of all their requests.
async fn gather(tasks: Vec<tokio::task::JoinHandle<Vec<Duration>>>, started: Instant) {
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    report(all, started.elapsed().as_secs_f64());
}

fn report(mut all: Vec<Duration>, elapsed: f64) {
    all.sort();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    println!(
        "n={} tps={:.1} p50_ms={:.3} p99_ms={:.3}",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.50),
        pct(0.99)
    );
}
