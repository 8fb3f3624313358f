//! Differential test of the vector policy filter: for generated Filter IR (the residuals Cedar
//! policies become), the Qdrant filter `rewriter::qdrant_filter` makes admits, in Qdrant's own
//! engine, exactly the points the IR admits (`Filter::eval`: three-valued, a missing or null
//! field is NULL). Payloads cover every combination of absent, null and present fields,
//! scalars, arrays and a nested field.

#![cfg(feature = "embedded-vector")]

mod common;

use std::collections::BTreeSet;

use common::{point_ids, run_python_check};
use connectors::vector::embedded::Embedded;
use connectors::vector::Request;
use policies::{CmpOp, Filter, Pattern, Row, RowValue, Value as IrValue};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

/// One field's state in a payload.
#[derive(Clone, Debug)]
enum Field {
    Absent,
    Null,
    Is(Value),
}

fn payloads() -> Vec<(u64, Value, Row)> {
    let tenants = [
        Field::Absent,
        Field::Null,
        Field::Is(json!("a")),
        Field::Is(json!("b")),
    ];
    let levels = [Field::Absent, Field::Is(json!(0)), Field::Is(json!(2))];
    let flags = [
        Field::Absent,
        Field::Is(json!(true)),
        Field::Is(json!(false)),
    ];
    let tags = [
        Field::Absent,
        Field::Is(json!(["x"])),
        Field::Is(json!(["x", "y"])),
    ];
    let owners = [Field::Absent, Field::Null, Field::Is(json!("ann"))];
    let mut out = Vec::new();
    let mut id = 1;
    for t in &tenants {
        for l in &levels {
            for f in &flags {
                for g in &tags {
                    for o in &owners {
                        let mut payload = serde_json::Map::new();
                        let mut row = Row::new();
                        let mut put = |key: &str, field: &Field, payload: &mut serde_json::Map<String, Value>| {
                            match field {
                                Field::Absent => {}
                                Field::Null => {
                                    payload.insert(key.into(), Value::Null);
                                }
                                Field::Is(v) => {
                                    payload.insert(key.into(), v.clone());
                                    row.insert(key.into(), row_value(v));
                                }
                            }
                        };
                        put("tenant", t, &mut payload);
                        put("level", l, &mut payload);
                        put("flag", f, &mut payload);
                        put("tags", g, &mut payload);
                        let mut meta = serde_json::Map::new();
                        match o {
                            Field::Absent => {}
                            Field::Null => {
                                meta.insert("owner".into(), Value::Null);
                            }
                            Field::Is(v) => {
                                meta.insert("owner".into(), v.clone());
                                row.insert("meta.owner".into(), row_value(v));
                            }
                        }
                        payload.insert("meta".into(), Value::Object(meta));
                        out.push((id, Value::Object(payload), row));
                        id += 1;
                    }
                }
            }
        }
    }
    out
}

fn ir(v: &Value) -> IrValue {
    match v {
        Value::Bool(b) => IrValue::Bool(*b),
        Value::Number(n) => IrValue::Long(n.as_i64().unwrap()),
        Value::String(s) => IrValue::String(s.clone()),
        other => panic!("{other}"),
    }
}

fn row_value(v: &Value) -> RowValue {
    match v {
        Value::Array(items) => RowValue::Set(items.iter().map(ir).collect()),
        scalar => RowValue::Scalar(ir(scalar)),
    }
}

fn string_attr() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("tenant"), Just("meta.owner")]
}

fn string_value() -> impl Strategy<Value = IrValue> {
    prop_oneof![Just("a"), Just("b"), Just("ann"), Just("zed")]
        .prop_map(|s| IrValue::String(s.into()))
}

fn op() -> impl Strategy<Value = CmpOp> {
    prop_oneof![
        Just(CmpOp::Eq),
        Just(CmpOp::NotEq),
        Just(CmpOp::Lt),
        Just(CmpOp::LtEq),
        Just(CmpOp::Gt),
        Just(CmpOp::GtEq)
    ]
}

fn tag() -> impl Strategy<Value = IrValue> {
    prop_oneof![Just("x"), Just("y"), Just("z")].prop_map(|s| IrValue::String(s.into()))
}

fn leaf() -> impl Strategy<Value = Filter> {
    prop_oneof![
        (
            string_attr(),
            prop_oneof![Just(CmpOp::Eq), Just(CmpOp::NotEq)],
            string_value()
        )
            .prop_map(|(a, op, value)| Filter::Compare {
                attr: a.into(),
                op,
                value
            }),
        (op(), -1i64..4).prop_map(|(op, n)| Filter::Compare {
            attr: "level".into(),
            op,
            value: IrValue::Long(n)
        }),
        (
            prop_oneof![Just(CmpOp::Eq), Just(CmpOp::NotEq)],
            any::<bool>()
        )
            .prop_map(|(op, b)| {
                Filter::Compare {
                    attr: "flag".into(),
                    op,
                    value: IrValue::Bool(b),
                }
            }),
        (string_attr(), prop::collection::vec(string_value(), 0..3)).prop_map(|(a, values)| {
            Filter::InSet {
                attr: a.into(),
                values,
            }
        }),
        prop::collection::vec((0i64..3).prop_map(IrValue::Long), 0..3).prop_map(|values| {
            Filter::InSet {
                attr: "level".into(),
                values,
            }
        }),
        prop_oneof![
            Just("tenant"),
            Just("level"),
            Just("flag"),
            Just("tags"),
            Just("meta.owner")
        ]
        .prop_map(|a| Filter::Present(a.into())),
        tag().prop_map(|value| Filter::SetContains {
            attr: "tags".into(),
            value
        }),
        prop::collection::vec(tag(), 0..3).prop_map(|values| Filter::SetContainsAny {
            attr: "tags".into(),
            values
        }),
        prop::collection::vec(tag(), 0..3).prop_map(|values| Filter::SetContainsAll {
            attr: "tags".into(),
            values
        }),
        (string_attr(), prop_oneof![Just("a"), Just("ann")]).prop_map(|(a, s)| Filter::Like {
            attr: a.into(),
            pattern: s.chars().map(Pattern::Char).collect()
        }),
        Just(Filter::True),
        Just(Filter::False),
    ]
}

fn filter() -> impl Strategy<Value = Filter> {
    leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Filter::And),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Filter::Or),
            inner.prop_map(|f| Filter::Not(Box::new(f))),
        ]
    })
}

#[test]
fn qdrant_admits_exactly_what_the_filter_ir_admits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Embedded::open(dir.path()).unwrap();
    store
        .call_blocking(Request::CreateCollection {
            collection: "points".into(),
            body: json!({"vectors": {"size": 1, "distance": "Dot"}}),
        })
        .unwrap();
    let rows = payloads();
    let points: Vec<Value> = rows
        .iter()
        .map(|(id, payload, _)| json!({"id": id, "vector": [1.0], "payload": payload}))
        .collect();
    store
        .call_blocking(Request::Upsert {
            collection: "points".into(),
            body: json!({ "points": points }),
        })
        .unwrap();

    let mut runner = TestRunner::new(Config {
        cases: 1000,
        ..Config::default()
    });
    // Every filter and what the engine admitted, for qdrant-client's local mode below.
    let cases = std::cell::RefCell::new(Vec::new());
    runner
        .run(&filter(), |f| {
            let qdrant = rewriter::qdrant_filter(&f).expect("every generated filter translates");
            let found = store
                .call_blocking(Request::Scroll {
                    collection: "points".into(),
                    body: json!({"filter": qdrant, "limit": 10_000, "with_payload": false}),
                })
                .map_err(|e| TestCaseError::fail(format!("{e}: {qdrant}")))?;
            let got = point_ids(&found["points"]);
            let want: BTreeSet<u64> = rows
                .iter()
                .filter(|(_, _, row)| f.eval(row) == Some(true))
                .map(|(id, _, _)| *id)
                .collect();
            prop_assert_eq!(
                &got,
                &want,
                "filter {:?}\nqdrant {}\nextra {:?}\nmissing {:?}",
                f,
                qdrant,
                got.difference(&want).collect::<Vec<_>>(),
                want.difference(&got).collect::<Vec<_>>()
            );
            cases
                .borrow_mut()
                .push(json!({"filter": qdrant, "ids": got}));
            Ok(())
        })
        .unwrap();

    // The same filters in qdrant-client's local mode (its Python implementation of Qdrant's
    // filter rules): a remote Qdrant and the Python clients read them as the engine does.
    let input = dir.path().join("cases.json");
    let payloads: Vec<Value> = rows
        .iter()
        .map(|(id, payload, _)| json!({"id": id, "payload": payload}))
        .collect();
    std::fs::write(
        &input,
        serde_json::to_vec(&json!({"payloads": payloads, "cases": cases.into_inner()})).unwrap(),
    )
    .unwrap();
    run_python_check("qdrant_local_filters.py", &input);
}
