//! The translator, operator by operator: each construct it supports becomes the expected
//! filter, and each construct it refuses makes a permit grant nothing and a forbid deny
//! everything, reported with the policy id.

use std::str::FromStr;

use cedar_policy::{Context, EntityUid};
use policies::{
    derive, load_sources, CmpOp, Derived, Filter, Pattern, SourceFile, SourceKind, Value,
};

const SCHEMA: &str = r#"
entity Agent { tenant: Long, level: String, groups: Set<String> };
namespace app {
  entity docs {
    "n": Long,
    "s": String,
    "b": Bool,
    "d": decimal,
    "t": datetime,
    "tags": Set<String>,
    "opt"?: Long,
    "other": Long,
  };
}
action select appliesTo { principal: [Agent], resource: [app::docs], context: {} };
"#;

const ENTITIES: &str = r#"[
  { "uid": { "type": "Agent", "id": "a" },
    "attrs": { "tenant": 7, "level": "gold", "groups": ["x", "y"] }, "parents": [] }
]"#;

fn derive_with(policies: &str) -> Derived {
    let files = vec![
        SourceFile {
            kind: SourceKind::Schema,
            name: "s.cedarschema".into(),
            text: SCHEMA.into(),
        },
        SourceFile {
            kind: SourceKind::Policies,
            name: "p.cedar".into(),
            text: policies.into(),
        },
        SourceFile {
            kind: SourceKind::Entities,
            name: "entities.json".into(),
            text: ENTITIES.into(),
        },
    ];
    let bundle = load_sources(files).unwrap_or_else(|e| panic!("{policies}\n{e}"));
    let agent = EntityUid::from_str("Agent::\"a\"").unwrap();
    derive(&bundle, &agent, "select", "app::docs", Context::empty()).unwrap()
}

fn permit(condition: &str) -> Derived {
    derive_with(&format!(
        "@id(\"p\") permit (principal, action, resource) when {{ {condition} }};"
    ))
}

fn cmp(attr: &str, op: CmpOp, value: Value) -> Filter {
    Filter::Compare {
        attr: attr.into(),
        op,
        value,
    }
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

#[test]
fn comparisons_with_constants_from_the_principal() {
    let cases = [
        (
            "resource.n == principal.tenant",
            cmp("n", CmpOp::Eq, Value::Long(7)),
        ),
        ("resource.n != 3", cmp("n", CmpOp::NotEq, Value::Long(3))),
        ("resource.n < 3", cmp("n", CmpOp::Lt, Value::Long(3))),
        ("resource.n <= 3", cmp("n", CmpOp::LtEq, Value::Long(3))),
        ("resource.n > 3", cmp("n", CmpOp::Gt, Value::Long(3))),
        ("resource.n >= 3", cmp("n", CmpOp::GtEq, Value::Long(3))),
        // Constant on the left: the operator flips.
        ("3 < resource.n", cmp("n", CmpOp::Gt, Value::Long(3))),
        (
            "resource.s == principal.level",
            cmp("s", CmpOp::Eq, s("gold")),
        ),
        ("resource.b == true", cmp("b", CmpOp::Eq, Value::Bool(true))),
        (
            "resource.d.lessThan(decimal(\"1.5\"))",
            cmp("d", CmpOp::Lt, Value::Decimal(15_000)),
        ),
        (
            "resource.d.lessThanOrEqual(decimal(\"1.5\"))",
            cmp("d", CmpOp::LtEq, Value::Decimal(15_000)),
        ),
        (
            "resource.d.greaterThan(decimal(\"-2.0\"))",
            cmp("d", CmpOp::Gt, Value::Decimal(-20_000)),
        ),
        (
            "resource.d.greaterThanOrEqual(decimal(\"0.0001\"))",
            cmp("d", CmpOp::GtEq, Value::Decimal(1)),
        ),
        (
            "resource.t < datetime(\"1970-01-02\")",
            cmp("t", CmpOp::Lt, Value::Datetime(86_400_000)),
        ),
        (
            "resource.t >= datetime(\"2026-01-02T03:04:05Z\")",
            cmp("t", CmpOp::GtEq, Value::Datetime(1_767_323_045_000)),
        ),
        (
            "resource.t < datetime(\"1969-12-31\")",
            cmp("t", CmpOp::Lt, Value::Datetime(-86_400_000)),
        ),
    ];
    for (condition, expected) in cases {
        let d = permit(condition);
        assert_eq!(d.filter, expected, "{condition}: {:?}", d.untranslated);
        assert_eq!(d.determining, ["p"], "{condition}");
        assert!(d.untranslated.is_empty(), "{condition}");
    }
}

#[test]
fn boolean_structure_sets_presence_and_like() {
    let n3 = || cmp("n", CmpOp::Eq, Value::Long(3));
    let b = || cmp("b", CmpOp::Eq, Value::Bool(true));
    let cases = [
        (
            "resource.n == 3 && resource.b",
            Filter::And(vec![n3(), b()]),
        ),
        ("resource.n == 3 || resource.b", Filter::Or(vec![n3(), b()])),
        ("!(resource.n == 3)", cmp("n", CmpOp::NotEq, Value::Long(3))),
        (
            "!(resource.n == 3 || resource.b)",
            Filter::Not(Box::new(Filter::Or(vec![n3(), b()]))),
        ),
        (
            "if resource.b then resource.n == 3 else false",
            Filter::And(vec![b(), n3()]),
        ),
        (
            "[\"a\", \"b\"].contains(resource.s)",
            Filter::InSet {
                attr: "s".into(),
                values: vec![s("a"), s("b")],
            },
        ),
        (
            "resource.tags.contains(principal.level)",
            Filter::SetContains {
                attr: "tags".into(),
                value: s("gold"),
            },
        ),
        (
            "resource.tags.containsAny(principal.groups)",
            Filter::SetContainsAny {
                attr: "tags".into(),
                values: vec![s("x"), s("y")],
            },
        ),
        (
            "resource.tags.containsAll([\"x\"])",
            Filter::SetContainsAll {
                attr: "tags".into(),
                values: vec![s("x")],
            },
        ),
        (
            "resource has opt && resource.opt == 1",
            Filter::And(vec![
                Filter::Present("opt".into()),
                cmp("opt", CmpOp::Eq, Value::Long(1)),
            ]),
        ),
        (
            "resource.s like \"ab*\"",
            Filter::Like {
                attr: "s".into(),
                pattern: vec![Pattern::Char('a'), Pattern::Char('b'), Pattern::Wildcard],
            },
        ),
        ("principal.tenant == 7", Filter::True),
        ("principal.tenant == 8", Filter::False),
    ];
    for (condition, expected) in cases {
        let d = permit(condition);
        assert_eq!(d.filter, expected, "{condition}");
        assert!(d.untranslated.is_empty(), "{condition}");
    }
}

#[test]
fn permits_or_and_forbids_and_in_negated() {
    let d = derive_with(
        r#"@id("p1") permit (principal, action, resource) when { resource.n == 1 };
@id("p2") permit (principal, action, resource) when { resource.n == 2 };
@id("f") forbid (principal, action, resource) when { resource.b };"#,
    );
    assert_eq!(
        d.filter,
        Filter::And(vec![
            Filter::Or(vec![
                cmp("n", CmpOp::Eq, Value::Long(1)),
                cmp("n", CmpOp::Eq, Value::Long(2)),
            ]),
            cmp("b", CmpOp::NotEq, Value::Bool(true)),
        ])
    );
    let mut ids = d.determining.clone();
    ids.sort();
    assert_eq!(ids, ["f", "p1", "p2"]);
}

/// Conditions the translator refuses. Each one must make a permit grant nothing and a forbid
/// hide everything, with the policy named.
const REFUSED: &[&str] = &[
    // attribute against attribute
    "resource.n == resource.other",
    // arithmetic on a row attribute
    "resource.n + 1 == 3",
    "resource.n * 2 == 6",
    // entity hierarchy on the row
    "resource in app::docs::\"x\"",
    // set predicates other than contains/containsAny/containsAll
    "resource.tags.isEmpty()",
    // datetime and duration methods
    "resource.t.toDate() == datetime(\"2026-01-01\")",
    // a nested attribute test
    "resource.tags == [\"x\"]",
];

#[test]
fn refused_constructs_fail_closed() {
    for condition in REFUSED {
        let d = derive_with(&format!(
            "@id(\"all\") permit (principal, action, resource);\n\
             @id(\"p\") permit (principal, action, resource) when {{ {condition} && resource.n > 100 }};"
        ));
        // The refused permit adds nothing; the unconditional one still grants.
        assert_eq!(d.filter, Filter::True, "{condition}");
        assert!(
            d.untranslated
                .iter()
                .any(|(id, why)| id == "p" && why.contains("grants nothing")),
            "{condition}: {:?}",
            d.untranslated
        );

        let d = derive_with(&format!(
            "@id(\"all\") permit (principal, action, resource);\n\
             @id(\"f\") forbid (principal, action, resource) when {{ {condition} }};"
        ));
        assert_eq!(d.filter, Filter::False, "{condition}");
        assert!(
            d.untranslated
                .iter()
                .any(|(id, why)| id == "f" && why.contains("denies everything")),
            "{condition}: {:?}",
            d.untranslated
        );
    }
}

/// Each conjunct of a derived filter carries the policies behind it, so that a refused write
/// names the policy that refused it; together they are the filter.
#[test]
fn checks_name_the_policies_behind_each_conjunct() {
    let d = derive_with(
        r#"@id("tenant") permit (principal, action, resource) when { resource.n == principal.tenant };
           @id("also") permit (principal, action, resource) when { resource.b };
           @id("no-secret") forbid (principal, action, resource) when { resource.s == "secret" };
           @id("everyone") forbid (principal, action, resource) when { resource.other == 3 };"#,
    );
    let reasons: Vec<&str> = d.checks.iter().map(|c| c.reason.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "no permitting policy holds for it (policies: also, tenant)",
            "policy everyone forbids it",
            "policy no-secret forbids it",
        ]
    );
    assert_eq!(
        Filter::and(d.checks.iter().map(|c| c.ok.clone()).collect()),
        d.filter
    );
    // A forbid that cannot apply, and a permit that always does, leave no check.
    let d = derive_with(r#"@id("all") permit (principal, action, resource);"#);
    assert!(d.checks.is_empty() && d.filter == Filter::True, "{d:?}");
}
