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

/// A small deterministic generator (xorshift), so failures reproduce.
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> i64 {
        (self.next() % n) as i64
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

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
    // Inverse of days_from_civil (Howard Hinnant).
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!("{y:04}-{m:02}-{d:02}")
}

fn gen_row(table: &str, g: &mut Gen) -> Vec<(&'static str, TestValue)> {
    let day = |g: &mut Gen| TestValue::Datetime {
        datetime: civil(20_000 + g.below(400)),
    };
    let mut row = vec![
        ("id", TestValue::Long(g.below(1000))),
        ("tenant_id", TestValue::Long(g.below(4))),
    ];
    match table {
        "public::customers" => {
            row.push(("name", TestValue::String(format!("c{}", g.below(50)))));
            row.push(("email", TestValue::String("x@example.com".into())));
            if g.below(3) > 0 {
                row.push((
                    "ssn",
                    TestValue::String(format!("{:09}", g.below(1_000_000_000))),
                ));
            }
            row.push((
                "tier",
                TestValue::String(g.pick(&["standard", "gold", "platinum"]).into()),
            ));
            row.push(("created_at", day(g)));
        }
        "public::tickets" => {
            row.push(("customer_id", TestValue::Long(g.below(30))));
            row.push(("subject", TestValue::String("s".into())));
            row.push(("body", TestValue::String("b".into())));
            row.push((
                "status",
                TestValue::String(g.pick(&["open", "pending", "closed"]).into()),
            ));
            row.push(("priority", TestValue::Long(1 + g.below(5))));
            row.push(("opened_at", day(g)));
        }
        "public::transfers" => {
            row.push(("customer_id", TestValue::Long(g.below(30))));
            // Amounts around the 10,000.00 threshold, including exactly on it.
            let amount = match g.below(4) {
                0 => 100_000_000,
                1 => 100_000_000 + 1,
                _ => g.below(200_000_000),
            };
            row.push(("amount", decimal(amount)));
            row.push((
                "currency",
                TestValue::String(g.pick(&["EUR", "USD"]).into()),
            ));
            row.push(("iban", TestValue::String("DE00".into())));
            row.push(("approved", TestValue::Bool(g.below(2) == 0)));
            row.push(("created_at", day(g)));
            if g.below(2) == 0 {
                row.push(("metadata", TestValue::String("{}".into())));
            }
        }
        "vectors::support_docs" => {
            row.retain(|(k, _)| *k != "id");
            let groups = ["support", "billing", "legal", "hr"];
            let acl = groups
                .iter()
                .filter(|_| g.below(3) == 0)
                .map(|s| TestValue::String(s.to_string()))
                .collect();
            row.push(("acl_groups", TestValue::Set(acl)));
            row.push((
                "classification",
                TestValue::String(g.pick(&["public", "internal", "restricted"]).into()),
            ));
            row.push(("title", TestValue::String("t".into())));
            if g.below(2) == 0 {
                row.push(("source_url", TestValue::String("https://x".into())));
            }
        }
        other => panic!("no generator for {other}"),
    }
    row
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

/// Checks every (agent, delegation, table, action) of a set against Cedar on `rows` rows each.
fn check_set(
    bundle: &PolicyBundle,
    agents: &[&str],
    users: &[Option<&str>],
    tables: &[&str],
    actions: &[&str],
    rows: usize,
) -> (usize, usize) {
    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let authorizer = Authorizer::new();
    let (mut allowed, mut denied) = (0, 0);
    for agent in agents {
        let principal = EntityUid::from_str(&format!("Agent::\"{agent}\"")).unwrap();
        for user in users {
            for table in tables {
                for action in actions {
                    let derived =
                        derive(bundle, &principal, action, table, context(*user)).unwrap();
                    assert!(
                        derived.untranslated.is_empty(),
                        "{agent} {action} {table}: {:?}",
                        derived.untranslated
                    );
                    let action_uid = EntityUid::from_str(&format!("Action::\"{action}\"")).unwrap();
                    for n in 0..rows {
                        let attrs = gen_row(table, &mut g);
                        let uid = EntityUid::from_str(&format!("{table}::\"row{n}\"")).unwrap();
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
                        let request = Request::new(
                            principal.clone(),
                            action_uid.clone(),
                            uid,
                            context(*user),
                            Some(&bundle.schema),
                        )
                        .unwrap();
                        let cedar = authorizer
                            .is_authorized(&request, &bundle.policies, &entities)
                            .decision()
                            == Decision::Allow;
                        let row: Row = attrs
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_row_value().unwrap()))
                            .collect::<BTreeMap<_, _>>();
                        let admitted = derived.filter.eval(&row) == Some(true);
                        assert!(
                            !admitted || cedar,
                            "LEAK: filter admits a row Cedar denies\n  {agent} as {user:?} {action} {table}\n  filter: {:?}\n  row: {row:?}",
                            derived.filter
                        );
                        assert!(
                            admitted || !cedar,
                            "over-filtered: Cedar allows a row the filter rejects\n  {agent} as {user:?} {action} {table}\n  filter: {:?}\n  row: {row:?}",
                            derived.filter
                        );
                        if cedar {
                            allowed += 1
                        } else {
                            denied += 1
                        }
                    }
                }
            }
        }
    }
    (allowed, denied)
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
    let (allowed, denied) = check_set(
        &example("finance"),
        &["support-bot", "auditor"],
        &[None, Some("alice"), Some("bob")],
        &["public::customers", "public::tickets", "public::transfers"],
        &["select", "update"],
        150,
    );
    // The test means something only if both outcomes occur often.
    assert!(
        allowed > 500 && denied > 500,
        "allowed {allowed}, denied {denied}"
    );
}

#[test]
fn rag_filters_agree_with_cedar_on_every_generated_point() {
    let (allowed, denied) = check_set(
        &example("rag"),
        &["rag-bot", "compliance-bot", "ingestor"],
        &[None, Some("carol")],
        &["vectors::support_docs"],
        &["search", "upsert"],
        200,
    );
    assert!(
        allowed > 200 && denied > 200,
        "allowed {allowed}, denied {denied}"
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
    // No permit for writes: nothing passes.
    let d = derive(&b, &bot, "delete", "public::tickets", Context::empty()).unwrap();
    assert_eq!(d.filter, Filter::False);
    // The auditor, unrestricted on tickets.
    let auditor = EntityUid::from_str("Agent::\"auditor\"").unwrap();
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
