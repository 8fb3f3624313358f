//! Differential soundness: for generated rows, the derived filter admits a row exactly when
//! Cedar's concrete authorization of that row allows it. A row the filter admits but Cedar
//! denies is a leak; the reverse is over-filtering. Both fail the test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entity, EntityUid, Request, RestrictedExpression,
};
use policies::policy_tests::TestValue;
use policies::{derive, load_dir, Filter, PolicyBundle, Row, Value};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

fn decimal(scaled: i64) -> TestValue {
    let sign = if scaled < 0 { "-" } else { "" };
    TestValue::Decimal {
        decimal: format!(
            "{sign}{}.{:04}",
            scaled.abs() / 10_000,
            scaled.abs() % 10_000
        ),
    }
}

fn civil(days: i64) -> String {
    let (y, m, d) = policies::civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

type GenRow = Vec<(&'static str, TestValue)>;

fn string(options: &'static [&'static str]) -> impl Strategy<Value = TestValue> {
    proptest::sample::select(options).prop_map(|s| TestValue::String(s.to_string()))
}

fn long(range: std::ops::Range<i64>) -> impl Strategy<Value = TestValue> {
    range.prop_map(TestValue::Long)
}

fn day() -> impl Strategy<Value = TestValue> {
    (20_000i64..20_400).prop_map(|d| TestValue::Datetime { datetime: civil(d) })
}

/// An optional attribute: absent (NULL) about a third of the time.
fn optional(
    name: &'static str,
    value: impl Strategy<Value = TestValue>,
) -> impl Strategy<Value = Option<(&'static str, TestValue)>> {
    proptest::option::weighted(0.66, value.prop_map(move |v| (name, v)))
}

fn with_optional(mut row: GenRow, extra: Option<(&'static str, TestValue)>) -> GenRow {
    row.extend(extra);
    row
}

/// Rows of `table`, with attribute values chosen around the example policies' boundaries.
fn rows(table: &str) -> BoxedStrategy<GenRow> {
    let key = (long(0..1000), long(0..4));
    match table {
        "public::customers" => (
            key,
            (0i64..50).prop_map(|n| TestValue::String(format!("c{n}"))),
            string(&["x@example.com", "y@example.com"]),
            optional(
                "ssn",
                (0i64..1_000_000_000).prop_map(|n| TestValue::String(format!("{n:09}"))),
            ),
            string(&["standard", "gold", "platinum"]),
            day(),
        )
            .prop_map(|((id, tenant), name, email, ssn, tier, created)| {
                with_optional(
                    vec![
                        ("id", id),
                        ("tenant_id", tenant),
                        ("name", name),
                        ("email", email),
                        ("tier", tier),
                        ("created_at", created),
                    ],
                    ssn,
                )
            })
            .boxed(),
        "public::tickets" => (
            key,
            long(0..30),
            string(&["open", "pending", "closed"]),
            long(1..6),
            day(),
        )
            .prop_map(|((id, tenant), customer, status, priority, opened)| {
                vec![
                    ("id", id),
                    ("tenant_id", tenant),
                    ("customer_id", customer),
                    ("subject", TestValue::String("s".into())),
                    ("body", TestValue::String("b".into())),
                    ("status", status),
                    ("priority", priority),
                    ("opened_at", opened),
                ]
            })
            .boxed(),
        "public::transfers" => {
            // Amounts around the 1,000.00 and 10,000.00 thresholds, including exactly on them.
            let amount = prop_oneof![
                Just(10_000_000i64),
                Just(10_000_001),
                Just(100_000_000),
                Just(100_000_001),
                0i64..200_000_000,
            ]
            .prop_map(decimal);
            (
                key,
                long(0..30),
                amount,
                string(&["EUR", "USD"]),
                string(&["DE0012345678", "FR76"]),
                any::<bool>(),
                day(),
                optional("metadata", string(&["{}"])),
            )
                .prop_map(
                    |((id, tenant), customer, amount, currency, iban, approved, created, meta)| {
                        with_optional(
                            vec![
                                ("id", id),
                                ("tenant_id", tenant),
                                ("customer_id", customer),
                                ("amount", amount),
                                ("currency", currency),
                                ("iban", iban),
                                ("approved", TestValue::Bool(approved)),
                                ("created_at", created),
                            ],
                            meta,
                        )
                    },
                )
                .boxed()
        }
        "qdrant::support_docs" => (
            long(0..4),
            proptest::sample::subsequence(&["support", "billing", "legal", "hr"][..], 0..=4),
            string(&["public", "internal", "restricted"]),
            optional("source_url", string(&["https://x"])),
        )
            .prop_map(|(tenant, acl, classification, url)| {
                with_optional(
                    vec![
                        ("tenant_id", tenant),
                        (
                            "acl_groups",
                            TestValue::Set(
                                acl.into_iter()
                                    .map(|g| TestValue::String(g.to_string()))
                                    .collect(),
                            ),
                        ),
                        ("classification", classification),
                        ("title", TestValue::String("t".into())),
                    ],
                    url,
                )
            })
            .boxed(),
        other => panic!("no generator for {other}"),
    }
}

fn context(on_behalf_of: Option<&str>) -> Context {
    match on_behalf_of {
        None => Context::empty(),
        Some(user) => Context::from_pairs([(
            "on_behalf_of".to_string(),
            RestrictedExpression::new_entity_uid(
                EntityUid::from_str(&format!("User::\"{user}\"")).unwrap(),
            ),
        )])
        .unwrap(),
    }
}

/// Outcome counts, so a test can insist that both outcomes occur often.
#[derive(Default)]
struct Counts {
    allowed: usize,
    denied: usize,
    shown: usize,
    hidden: usize,
}

/// Cedar's concrete decision for one row.
fn cedar_allows(
    bundle: &PolicyBundle,
    principal: &EntityUid,
    action: &str,
    context: Context,
    entities: &cedar_policy::Entities,
    resource: &EntityUid,
) -> bool {
    let request = Request::new(
        principal.clone(),
        EntityUid::from_str(&format!("Action::\"{action}\"")).unwrap(),
        resource.clone(),
        context,
        Some(&bundle.schema),
    )
    .unwrap();
    Authorizer::new()
        .is_authorized(&request, &bundle.policies, entities)
        .decision()
        == Decision::Allow
}

/// For every (agent, delegation, table, action) of a set and `cases` generated rows each: the
/// derived row filter admits a row exactly when Cedar allows it, and (for tables with column
/// rules) each column's rule shows its value exactly when Cedar allows `read_column` on it.
/// proptest shrinks a failure to a minimal row.
fn check_set(
    bundle: &PolicyBundle,
    agents: &[&str],
    users: &[Option<&str>],
    tables: &[&str],
    actions: &[&str],
    cases: u32,
) -> Counts {
    let counts = std::cell::RefCell::new(Counts::default());
    for agent in agents {
        let principal = EntityUid::from_str(&format!("Agent::\"{agent}\"")).unwrap();
        for user in users {
            for table in tables {
                let columns: Vec<&str> = {
                    let mut names = Vec::new();
                    let mut runner = TestRunner::deterministic();
                    // Every attribute a generated row can carry (optional ones included).
                    for _ in 0..64 {
                        for (k, _) in rows(table).new_tree(&mut runner).unwrap().current() {
                            if !names.contains(&k) {
                                names.push(k);
                            }
                        }
                    }
                    names
                };
                let rules =
                    policies::derive_columns(bundle, &principal, table, &columns, &context(*user))
                        .unwrap();
                if let Some(r) = &rules {
                    assert!(r.untranslated.is_empty(), "{r:?}");
                }
                for action in actions {
                    let derived =
                        derive(bundle, &principal, action, table, context(*user)).unwrap();
                    assert!(
                        derived.untranslated.is_empty(),
                        "{agent} {action} {table}: {:?}",
                        derived.untranslated
                    );
                    let mut runner = TestRunner::new_with_rng(
                        Config {
                            cases,
                            failure_persistence: None,
                            ..Config::default()
                        },
                        TestRng::deterministic_rng(RngAlgorithm::ChaCha),
                    );
                    let result = runner.run(&rows(table), |attrs| {
                        let uid = EntityUid::from_str(&format!("{table}::\"row\"")).unwrap();
                        let cedar_attrs: HashMap<String, RestrictedExpression> = attrs
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_cedar().unwrap()))
                            .collect();
                        let entity = Entity::new(uid.clone(), cedar_attrs, HashSet::new()).unwrap();
                        let entities = bundle
                            .entities
                            .clone()
                            .add_entities([entity], Some(&bundle.schema))
                            .unwrap();
                        let row: Row = attrs
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_row_value().unwrap()))
                            .collect::<BTreeMap<_, _>>();
                        let cedar =
                            cedar_allows(bundle, &principal, action, context(*user), &entities, &uid);
                        let admitted = derived.filter.eval(&row) == Some(true);
                        prop_assert!(
                            !admitted || cedar,
                            "LEAK: filter admits a row Cedar denies\n  {} as {:?} {} {}\n  filter: {:?}",
                            agent, user, action, table, derived.filter
                        );
                        prop_assert!(
                            admitted || !cedar,
                            "over-filtered: Cedar allows a row the filter rejects\n  {} as {:?} {} {}\n  filter: {:?}",
                            agent, user, action, table, derived.filter
                        );
                        let mut c = counts.borrow_mut();
                        if cedar {
                            c.allowed += 1
                        } else {
                            c.denied += 1
                        }
                        for (column, rule) in rules.iter().flat_map(|r| r.columns.iter()) {
                            let context = context(*user)
                                .merge([(
                                    "column".to_string(),
                                    RestrictedExpression::new_string(column.clone()),
                                )])
                                .unwrap();
                            let cedar = cedar_allows(
                                bundle,
                                &principal,
                                policies::READ_COLUMN,
                                context,
                                &entities,
                                &uid,
                            );
                            let shown = rule.shows(&row);
                            prop_assert_eq!(
                                shown,
                                cedar,
                                "column {} of {} for {} as {:?}: the rule {} it, Cedar {} it\n  rule: {:?}",
                                column,
                                table,
                                agent,
                                user,
                                if shown { "shows" } else { "hides" },
                                if cedar { "allows" } else { "denies" },
                                rule
                            );
                            if shown {
                                c.shown += 1
                            } else {
                                c.hidden += 1
                            }
                        }
                        Ok(())
                    });
                    if let Err(e) = result {
                        panic!("{e}");
                    }
                }
            }
        }
    }
    counts.into_inner()
}

fn example(name: &str) -> PolicyBundle {
    load_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap()
}

#[test]
fn finance_filters_agree_with_cedar_on_every_generated_row() {
    let c = check_set(
        &example("finance"),
        &["support-bot", "auditor"],
        &[None, Some("alice"), Some("bob")],
        &["public::customers", "public::tickets", "public::transfers"],
        &["select", "insert", "update", "delete"],
        150,
    );
    // The test means something only if every outcome occurs often.
    assert!(
        c.allowed > 500 && c.denied > 500,
        "allowed {}, denied {}",
        c.allowed,
        c.denied
    );
    assert!(
        c.shown > 1000 && c.hidden > 300,
        "columns shown {}, hidden {}",
        c.shown,
        c.hidden
    );
}

#[test]
fn rag_filters_agree_with_cedar_on_every_generated_point() {
    let c = check_set(
        &example("rag"),
        &[
            "rag-bot",
            "compliance-bot",
            "ingestor",
            "rag-bot-t2",
            "ingestor-t2",
        ],
        &[None, Some("carol")],
        &["qdrant::support_docs"],
        &["search", "upsert"],
        200,
    );
    assert!(
        c.allowed > 200 && c.denied > 200,
        "allowed {}, denied {}",
        c.allowed,
        c.denied
    );
}

#[test]
fn derived_filters_have_the_expected_shape() {
    let b = example("finance");
    let bot = EntityUid::from_str("Agent::\"support-bot\"").unwrap();
    let d = derive(&b, &bot, "select", "public::tickets", Context::empty()).unwrap();
    assert_eq!(
        d.filter,
        Filter::Compare {
            attr: "tenant_id".into(),
            op: policies::CmpOp::Eq,
            value: Value::Long(1)
        }
    );
    assert_eq!(d.determining, ["support-reads-own-tenant"]);
    // Deletes: the tenant's closed tickets only.
    let d = derive(&b, &bot, "delete", "public::tickets", Context::empty()).unwrap();
    assert_eq!(
        d.filter,
        Filter::And(vec![
            Filter::Compare {
                attr: "tenant_id".into(),
                op: policies::CmpOp::Eq,
                value: Value::Long(1)
            },
            Filter::Compare {
                attr: "status".into(),
                op: policies::CmpOp::Eq,
                value: Value::String("closed".into())
            },
        ])
    );
    // No permit for the auditor's writes: nothing passes.
    let auditor = EntityUid::from_str("Agent::\"auditor\"").unwrap();
    let d = derive(&b, &auditor, "delete", "public::tickets", Context::empty()).unwrap();
    assert_eq!(d.filter, Filter::False);
    // The auditor, unrestricted on tickets.
    let d = derive(&b, &auditor, "select", "public::tickets", Context::empty()).unwrap();
    assert_eq!(d.filter, Filter::True);
}

#[test]
fn the_cache_returns_the_same_filter_and_separates_versions() {
    let b = example("finance");
    let bot = EntityUid::from_str("Agent::\"support-bot\"").unwrap();
    let cache = policies::DerivationCache::new(16);
    let first = cache
        .get_or_derive(&b, &bot, "select", "public::tickets", "", Context::empty)
        .unwrap();
    let again = cache
        .get_or_derive(&b, &bot, "select", "public::tickets", "", || {
            panic!("must not derive again")
        })
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    // A different context key derives anew.
    let for_bob = cache
        .get_or_derive(&b, &bot, "select", "public::tickets", "bob", || {
            context(Some("bob"))
        })
        .unwrap();
    assert_ne!(for_bob.filter, first.filter);
}
