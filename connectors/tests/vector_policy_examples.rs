//! The shipped RAG policy set end to end on the vector side: for every case of
//! `policies/examples/rag/*.test.toml`, the filter derived from the Cedar policies, turned into
//! a Qdrant filter, admits in Qdrant's own engine exactly the rows the case marks visible (the
//! policy test runner checks the same rows against Cedar's own decisions).

#![cfg(feature = "embedded-vector")]

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Context, EntityUid, RestrictedExpression};
use common::point_ids;
use connectors::vector::embedded::Embedded;
use connectors::vector::Request;
use serde_json::{json, Value};

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_str(&format!("{ty}::{}", Value::String(id.into()))).unwrap()
}

#[test]
fn rag_example_cases_hold_in_qdrant() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies/examples/rag");
    let bundle = policies::load_dir(&root).unwrap();
    let text = std::fs::read_to_string(root.join("rag.test.toml")).unwrap();
    let file: toml::Value = toml::from_str(&text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    let mut checked = 0;
    for (n, case) in file["case"].as_array().unwrap().iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let Some(rows) = case.get("row").and_then(|r| r.as_array()) else {
            continue;
        };
        let context = match case.get("on_behalf_of").and_then(|u| u.as_str()) {
            None => Context::empty(),
            Some(user) => Context::from_pairs([(
                "on_behalf_of".to_string(),
                RestrictedExpression::new_entity_uid(uid("User", user)),
            )])
            .unwrap(),
        };
        let derived = policies::derive(
            &bundle,
            &uid("Agent", case["principal"].as_str().unwrap()),
            case["action"].as_str().unwrap(),
            case["table"].as_str().unwrap(),
            context,
        )
        .unwrap();
        let filter =
            rewriter::qdrant_filter(&derived.filter).unwrap_or_else(|e| panic!("{name}: {e}"));
        let collection = format!("case{n}");
        store
            .call_blocking(Request::CreateCollection {
                collection: collection.clone(),
                body: json!({"vectors": {"size": 1, "distance": "Dot"}}),
            })
            .unwrap();
        let mut want = BTreeSet::new();
        let points: Vec<Value> = rows
            .iter()
            .enumerate()
            .map(|(i, row)| {
                if row["visible"].as_bool().unwrap() {
                    want.insert(i as u64 + 1);
                }
                let payload = serde_json::to_value(&row["attrs"]).unwrap();
                json!({"id": i + 1, "vector": [1.0], "payload": payload})
            })
            .collect();
        store
            .call_blocking(Request::Upsert {
                collection: collection.clone(),
                body: json!({ "points": points }),
            })
            .unwrap();
        let found = store
            .call_blocking(Request::Scroll {
                collection,
                body: json!({"filter": filter, "limit": 100}),
            })
            .unwrap();
        let got = point_ids(&found["points"]);
        assert_eq!(got, want, "{name}: filter {filter}");
        checked += rows.len();
    }
    assert!(checked >= 8, "only {checked} rows checked");
}

/// Payload fields nested as langchain stores them (`metadata.tenant`), addressed in Cedar as
/// record attributes, including `has` on an optional nested field.
#[test]
fn nested_payload_fields_are_cedar_records() {
    use policies::{SourceFile, SourceKind};
    let source = |kind, name: &str, text: &str| SourceFile {
        kind,
        name: name.into(),
        text: text.into(),
    };
    let bundle = policies::load_sources(vec![
        source(
            SourceKind::Schema,
            "kb.cedarschema",
            "entity Agent { tenant: String };\n\
             namespace qdrant { entity kb { page_content: String, metadata: { tenant: String, public?: Bool } }; }\n\
             action search appliesTo { principal: [Agent], resource: [qdrant::kb] };\n",
        ),
        source(
            SourceKind::Policies,
            "kb.cedar",
            "@id(\"own-tenant-or-public\")\n\
             permit (principal, action == Action::\"search\", resource is qdrant::kb)\n\
             when { resource.metadata.tenant == principal.tenant ||\n\
                    (resource.metadata has public && resource.metadata.public) };\n",
        ),
        source(
            SourceKind::Entities,
            "entities.json",
            r#"[{"uid": {"type": "Agent", "id": "a-bot"}, "attrs": {"tenant": "a"}, "parents": []}]"#,
        ),
    ])
    .unwrap();
    let derived = policies::derive(
        &bundle,
        &uid("Agent", "a-bot"),
        "search",
        "qdrant::kb",
        Context::empty(),
    )
    .unwrap();
    let filter = rewriter::qdrant_filter(&derived.filter).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    store
        .call_blocking(Request::CreateCollection {
            collection: "kb".into(),
            body: json!({"vectors": {"size": 1, "distance": "Dot"}}),
        })
        .unwrap();
    let payloads = [
        json!({"page_content": "mine", "metadata": {"tenant": "a"}}),
        json!({"page_content": "public", "metadata": {"tenant": "b", "public": true}}),
        json!({"page_content": "theirs", "metadata": {"tenant": "b", "public": false}}),
        json!({"page_content": "theirs too", "metadata": {"tenant": "b"}}),
        json!({"page_content": "no metadata"}),
    ];
    let points: Vec<Value> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| json!({"id": i + 1, "vector": {"": [1.0]}, "payload": p}))
        .collect();
    store
        .call_blocking(Request::Upsert {
            collection: "kb".into(),
            body: json!({ "points": points }),
        })
        .unwrap();
    let found = store
        .call_blocking(Request::Scroll {
            collection: "kb".into(),
            body: json!({"filter": filter, "limit": 100}),
        })
        .unwrap();
    let got = point_ids(&found["points"]);
    assert_eq!(got, BTreeSet::from([1, 2]), "filter {filter}");
}
