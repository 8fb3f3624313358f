//! Requests crafted to reach hidden points, rewritten by `rewriter` under a tenant policy and
//! run in Qdrant's own engine: each returns, counts or changes only the points policy allows.

#![cfg(feature = "embedded-vector")]

mod common;

use std::collections::BTreeSet;

use common::point_ids;
use connectors::vector::embedded::Embedded;
use connectors::vector::Request;
use policies::{CmpOp, Filter, Value as IrValue};
use serde_json::{json, Value};

const C: &str = "docs";

/// Points 1-4 belong to tenant a, 5-8 to tenant b, 9 to no tenant.
fn store() -> (tempfile::TempDir, Embedded) {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    store
        .call_blocking(Request::CreateCollection {
            collection: C.into(),
            body: json!({"vectors": {"size": 2, "distance": "Dot"}}),
        })
        .unwrap();
    let points: Vec<Value> = (1..=9)
        .map(|id| {
            let payload = match id {
                1..=4 => json!({"tenant": "a", "n": id}),
                5..=8 => json!({"tenant": "b", "n": id}),
                _ => json!({"n": id}),
            };
            json!({"id": id, "vector": [1.0, id as f32], "payload": payload})
        })
        .collect();
    store
        .call_blocking(Request::Upsert {
            collection: C.into(),
            body: json!({ "points": points }),
        })
        .unwrap();
    (dir, store)
}

fn policy() -> Value {
    rewriter::qdrant_filter(&Filter::Compare {
        attr: "tenant".into(),
        op: CmpOp::Eq,
        value: IrValue::String("a".into()),
    })
    .unwrap()
}

fn query(store: &Embedded, mut body: Value) -> BTreeSet<u64> {
    rewriter::restrict_query(&mut body, &policy()).unwrap();
    let found = store
        .call_blocking(Request::Query {
            collection: C.into(),
            body,
        })
        .unwrap();
    point_ids(&found["points"])
}

fn visible(ids: &BTreeSet<u64>) -> bool {
    ids.iter().all(|id| (1..=4).contains(id))
}

#[test]
fn crafted_requests_reach_only_allowed_points() {
    let (_dir, store) = store();
    let all_a: BTreeSet<u64> = (1..=4).collect();

    // A `should` that matches everything, a `must_not` aimed at the allowed tenant, a filter
    // naming the hidden tenant, and min_should with nothing required.
    for filter in [
        json!({"should": [{"must": []}, {"is_empty": {"key": "tenant"}}]}),
        json!({"must_not": [{"key": "tenant", "match": {"value": "a"}}]}),
        json!({"must": [{"key": "tenant", "match": {"value": "b"}}]}),
        json!({"min_should": {"conditions": [{"key": "tenant", "match": {"value": "b"}}], "min_count": 0}}),
        json!({}),
    ] {
        let got = query(
            &store,
            json!({"query": [0.0, 1.0], "limit": 20, "filter": filter}),
        );
        assert!(visible(&got), "{filter}: {got:?}");
    }
    assert_eq!(
        query(&store, json!({"query": [0.0, 1.0], "limit": 20})),
        all_a
    );

    // Prefetches without a filter, nested, fused.
    let got = query(
        &store,
        json!({
            "prefetch": [
                {"query": [0.0, 1.0], "limit": 20},
                {"prefetch": {"query": [1.0, 0.0], "limit": 20}, "query": [0.0, 1.0], "limit": 20},
            ],
            "query": {"fusion": "rrf"}, "limit": 20,
        }),
    );
    assert_eq!(got, all_a);

    // Count and scroll as oracles for a hidden tenant (an estimated count would come from
    // index statistics over every point: counts are made exact).
    let mut count =
        json!({"filter": {"must": [{"key": "tenant", "match": {"value": "b"}}]}, "exact": false});
    rewriter::restrict_count(&mut count, &policy()).unwrap();
    let counted = store
        .call_blocking(Request::Count {
            collection: C.into(),
            body: count,
        })
        .unwrap();
    assert_eq!(counted, json!({"count": 0}));
    let mut scroll = json!({"limit": 100});
    rewriter::restrict_filtered(&mut scroll, &policy()).unwrap();
    let scrolled = store
        .call_blocking(Request::Scroll {
            collection: C.into(),
            body: scroll,
        })
        .unwrap();
    assert_eq!(point_ids(&scrolled["points"]), all_a);

    // Retrieving guessed ids: only the visible ones come back.
    let filter = rewriter::ids_filter(&json!([1, 5, 9, 77]), &policy()).unwrap();
    let got = store
        .call_blocking(Request::Scroll {
            collection: C.into(),
            body: json!({"filter": filter, "limit": 100}),
        })
        .unwrap();
    assert_eq!(point_ids(&got["points"]), BTreeSet::from([1]));

    // A write naming hidden ids beside a filter (Qdrant would ignore the filter) is refused,
    // and the engine never reads such a body as ids alone.
    let mut by_ids = json!({"points": [5], "filter": {"must": []}});
    assert!(rewriter::restrict_filtered(&mut by_ids, &policy()).is_err());
    let both = store.call_blocking(Request::Delete {
        collection: C.into(),
        body: json!({"points": [5], "filter": policy()}),
    });
    assert!(both.is_err(), "{both:?}");

    // Deleting everything deletes only what policy allows.
    let mut delete = json!({"filter": {"must": []}});
    rewriter::restrict_filtered(&mut delete, &policy()).unwrap();
    store
        .call_blocking(Request::Delete {
            collection: C.into(),
            body: delete,
        })
        .unwrap();
    let rest = store
        .call_blocking(Request::Scroll {
            collection: C.into(),
            body: json!({"limit": 100}),
        })
        .unwrap();
    assert_eq!(point_ids(&rest["points"]), (5..=9).collect());
}
