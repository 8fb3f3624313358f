//! The embedded vector store with Qdrant REST bodies as clients send them (langchain-qdrant's
//! named `""` vector, qdrant-client's filters and universal queries), against the real engine,
//! and reopened from disk.

#![cfg(feature = "embedded-vector")]

mod common;

use common::run_python_check;
use connectors::vector::embedded::Embedded;
use connectors::vector::{Request, VectorError};
use serde_json::{json, Value};

fn call(store: &Embedded, request: Request) -> Value {
    store
        .call_blocking(request.clone())
        .unwrap_or_else(|e| panic!("{request:?}: {e}"))
}

fn ids(points: &Value) -> Vec<Value> {
    points
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].clone())
        .collect()
}

const UUID_A: &str = "5c56c793-69f3-4fbf-87e6-c4bf54c28c26";

fn docs(store: &Embedded) {
    let c = || "docs".to_string();
    assert_eq!(
        call(
            store,
            Request::CreateCollection {
                collection: c(),
                body: json!({"vectors": {"size": 4, "distance": "Cosine"}}),
            }
        ),
        json!(true)
    );
    // As langchain-qdrant writes: a UUID id, the unnamed vector as {"": …}, the text and
    // metadata in the payload.
    call(
        store,
        Request::Upsert {
            collection: c(),
            body: json!({"points": [
                {"id": UUID_A, "vector": {"": [1.0, 0.0, 0.0, 0.0]},
                 "payload": {"page_content": "alpha", "metadata": {"tenant": "a", "n": 1}}},
                {"id": 2, "vector": [0.9, 0.1, 0.0, 0.0],
                 "payload": {"page_content": "beta", "metadata": {"tenant": "b", "n": 2}}},
                {"id": 3, "vector": [0.0, 1.0, 0.0, 0.0],
                 "payload": {"page_content": "gamma", "metadata": {"tenant": "a", "n": 3}}},
                {"id": 4, "vector": [0.0, 0.0, 1.0, 0.0],
                 "payload": {"page_content": "delta", "metadata": {"tenant": "b", "n": 4}}},
            ]}),
        },
    );
}

#[test]
fn collections_points_and_queries_speak_qdrant_rest() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    docs(&store);
    let c = || "docs".to_string();

    // Collection metadata as the Python client and langchain-qdrant read it.
    let info = call(&store, Request::GetCollection { collection: c() });
    assert_eq!(
        info["config"]["params"]["vectors"],
        json!({"size": 4, "distance": "Cosine", "on_disk": false})
    );
    assert_eq!(info["points_count"], 4);
    assert_eq!(info["status"], "green");
    assert_eq!(
        call(&store, Request::CollectionExists { collection: c() }),
        json!({"exists": true})
    );
    assert_eq!(
        call(&store, Request::ListCollections),
        json!({"collections": [{"name": "docs"}]})
    );
    let again = store.call_blocking(Request::CreateCollection {
        collection: c(),
        body: json!({"vectors": {"size": 4, "distance": "Cosine"}}),
    });
    assert!(matches!(again, Err(VectorError::Conflict(_))), "{again:?}");

    // Nearest with a payload filter on a nested field: Qdrant's filter language as sent.
    let tenant_a = json!({"must": [{"key": "metadata.tenant", "match": {"value": "a"}}]});
    let found = call(
        &store,
        Request::Query {
            collection: c(),
            body: json!({"query": [1.0, 0.0, 0.0, 0.0], "filter": tenant_a, "limit": 10,
                         "with_payload": true}),
        },
    );
    assert_eq!(ids(&found["points"]), vec![json!(UUID_A), json!(3)]);
    assert_eq!(found["points"][0]["payload"]["page_content"], "alpha");
    assert!(found["points"][0]["score"].as_f64().unwrap() > 0.99);
    assert!(found["points"][0].get("vector").is_none());

    // Payload selection and vectors, as with_payload / with_vector ask.
    let found = call(
        &store,
        Request::Query {
            collection: c(),
            body: json!({"query": {"nearest": [0.0, 1.0, 0.0, 0.0]}, "limit": 1,
                         "with_payload": ["metadata.n"], "with_vector": true}),
        },
    );
    assert_eq!(found["points"][0]["id"], 3);
    assert_eq!(found["points"][0]["payload"], json!({"metadata": {"n": 3}}));
    assert_eq!(found["points"][0]["vector"], json!([0.0, 1.0, 0.0, 0.0]));

    // Prefetch (with its own filter) fused by RRF; MMR.
    let fused = call(
        &store,
        Request::Query {
            collection: c(),
            body: json!({
                "prefetch": [
                    {"query": [1.0, 0.0, 0.0, 0.0], "limit": 3, "filter": tenant_a},
                    {"query": [0.0, 0.0, 1.0, 0.0], "limit": 3, "filter": tenant_a},
                ],
                "query": {"fusion": "rrf"}, "limit": 5}),
        },
    );
    let mut fused_ids = ids(&fused["points"]);
    fused_ids.sort_by_key(|v| v.to_string());
    assert_eq!(fused_ids, vec![json!(UUID_A), json!(3)]);
    let mmr = call(
        &store,
        Request::Query {
            collection: c(),
            body: json!({"query": {"nearest": [1.0, 0.0, 0.0, 0.0], "mmr": {"diversity": 0.5}},
                         "limit": 2}),
        },
    );
    assert_eq!(mmr["points"].as_array().unwrap().len(), 2);

    // Scroll (pages), count, retrieve.
    let page = call(
        &store,
        Request::Scroll {
            collection: c(),
            body: json!({"limit": 1, "filter": {"must": [{"key": "metadata.tenant", "match": {"value": "b"}}]}}),
        },
    );
    assert_eq!(ids(&page["points"]), vec![json!(2)]);
    assert_eq!(page["points"][0]["payload"]["page_content"], "beta");
    assert_eq!(page["next_page_offset"], 4);
    assert_eq!(
        call(
            &store,
            Request::Count {
                collection: c(),
                body: json!({"filter": tenant_a}),
            }
        ),
        json!({"count": 2})
    );
    let got = call(
        &store,
        Request::Retrieve {
            collection: c(),
            body: json!({"ids": [4, 99], "with_payload": true}),
        },
    );
    assert_eq!(ids(&got), vec![json!(4)]);

    // Payload edits and deletion by filter.
    call(
        &store,
        Request::SetPayload {
            collection: c(),
            body: json!({"payload": {"reviewed": true}, "points": [4]}),
        },
    );
    call(
        &store,
        Request::Delete {
            collection: c(),
            body: json!({"filter": {"must": [{"key": "metadata.tenant", "match": {"value": "a"}}]}}),
        },
    );
    assert_eq!(
        call(
            &store,
            Request::Count {
                collection: c(),
                body: json!({}),
            }
        ),
        json!({"count": 2})
    );

    // What the engine refuses is the client's error, named.
    let wrong = store.call_blocking(Request::Query {
        collection: c(),
        body: json!({"query": [1.0, 0.0]}),
    });
    assert!(
        matches!(wrong, Err(VectorError::BadRequest(_))),
        "{wrong:?}"
    );
    let by_id = store.call_blocking(Request::Query {
        collection: c(),
        body: json!({"query": 4}),
    });
    assert!(
        matches!(by_id, Err(VectorError::BadRequest(_))),
        "{by_id:?}"
    );
    let missing = store.call_blocking(Request::Count {
        collection: "nope".into(),
        body: json!({}),
    });
    assert_eq!(missing.unwrap_err().status(), 404);
    let unknown = store.call_blocking(Request::Query {
        collection: c(),
        body: json!({"query": [1.0, 0.0, 0.0, 0.0], "surprise": 1}),
    });
    assert!(
        matches!(unknown, Err(VectorError::BadRequest(_))),
        "{unknown:?}"
    );

    // Every reply shape parses with qdrant-client's own response models.
    let mut replies = serde_json::Map::new();
    let mut add = |model: &str, value: Value| {
        replies
            .entry(model.to_string())
            .or_insert_with(|| json!([]))
            .as_array_mut()
            .unwrap()
            .push(value);
    };
    add(
        "CollectionInfo",
        call(&store, Request::GetCollection { collection: c() }),
    );
    add(
        "CollectionsResponse",
        call(&store, Request::ListCollections),
    );
    add(
        "CollectionExistence",
        call(&store, Request::CollectionExists { collection: c() }),
    );
    add(
        "QueryResponse",
        call(
            &store,
            Request::Query {
                collection: c(),
                body: json!({"query": [0.0, 0.0, 1.0, 0.0], "with_payload": true, "with_vector": true}),
            },
        ),
    );
    add(
        "ScrollResult",
        call(
            &store,
            Request::Scroll {
                collection: c(),
                body: json!({"limit": 1, "with_vector": true}),
            },
        ),
    );
    add(
        "CountResult",
        call(
            &store,
            Request::Count {
                collection: c(),
                body: json!({}),
            },
        ),
    );
    add(
        "UpdateResult",
        call(
            &store,
            Request::SetPayload {
                collection: c(),
                body: json!({"payload": {"seen": 1}, "points": [2]}),
            },
        ),
    );
    add(
        "Record[]",
        call(
            &store,
            Request::Retrieve {
                collection: c(),
                body: json!({"ids": [2, 4], "with_vector": true}),
            },
        ),
    );
    let file = dir.path().join("replies.json");
    std::fs::write(&file, serde_json::to_vec(&Value::Object(replies)).unwrap()).unwrap();
    run_python_check("qdrant_reply_models.py", &file);

    // Reopened from disk: every acknowledged write is there.
    drop(store);
    let store = Embedded::open(dir.path()).unwrap();
    let all = call(
        &store,
        Request::Scroll {
            collection: c(),
            body: json!({"limit": 10}),
        },
    );
    assert_eq!(ids(&all["points"]), vec![json!(2), json!(4)]);
    assert_eq!(all["points"][1]["payload"]["reviewed"], true);
    assert_eq!(
        call(&store, Request::DeleteCollection { collection: c() }),
        json!(true)
    );
    assert_eq!(
        call(&store, Request::ListCollections),
        json!({"collections": []})
    );
}
