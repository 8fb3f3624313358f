//! Load generator for `bench/vector.sh`: seeds an embedded store, then measures filtered vector
//! search either against the engine called directly (the same `Embedded::call` the shim makes,
//! with the filter the shim injects) or over HTTP against a Portcullis Qdrant API. Prints one
//! line: `n=… tps=… p50_ms=… p99_ms=…`.
//!
//! ```text
//! vector_bench seed DIR POINTS DIMS
//! vector_bench direct DIR FILTER_JSON SECONDS CLIENTS DIMS
//! vector_bench shim URL API_KEY SECONDS CLIENTS DIMS
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use connectors::vector::embedded::Embedded;
use connectors::vector::remote::Remote;
use connectors::vector::{Request, VectorBackend};
use serde_json::{json, Value};

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

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("seed") => seed(&args[2], arg(&args, 3), arg(&args, 4)).await,
        Some("direct") => {
            let store = Arc::new(Embedded::open(args[2].as_ref()).expect("open the store"));
            let filter: Value = serde_json::from_str(&args[3]).expect("FILTER_JSON");
            let dims = arg(&args, 6);
            run(arg(&args, 4), arg(&args, 5), move |rng| {
                let store = store.clone();
                let body = json!({ "query": rng.vector(dims), "filter": filter, "limit": 10, "with_payload": true });
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
            })
            .await
        }
        Some("shim") => {
            let remote = Arc::new(Remote::new(&args[2], Some(args[3].clone()), None).expect("URL"));
            let dims = arg(&args, 6);
            run(arg(&args, 4), arg(&args, 5), move |rng| {
                let remote = remote.clone();
                let body = json!({ "query": rng.vector(dims), "limit": 10, "with_payload": true });
                async move {
                    let (status, reply) = remote
                        .send(
                            hyper::Method::POST,
                            &format!("/collections/{COLLECTION}/points/query"),
                            Some(&body),
                        )
                        .await
                        .expect("query");
                    assert!(status.is_success(), "{reply}");
                }
            })
            .await
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

/// `clients` tasks issue requests back to back for `seconds`; latencies of every request.
async fn run<F, Fut>(seconds: u64, clients: usize, make: F)
where
    F: Fn(&mut Rng) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let make = Arc::new(make);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x1234_5678 + c as u64 * 7919);
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                make(&mut rng).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
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
