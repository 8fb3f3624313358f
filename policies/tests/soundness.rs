//! Differential soundness: for generated rows, the derived filter admits a row exactly when
//! Cedar's concrete authorization of that row allows it. A row the filter admits but Cedar
//! denies is a leak; the reverse is over-filtering. Both fail the test.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::str::FromStr;

use cedar_policy::{
    Authorizer, Context, Decision, Entity, EntityUid, Request, RestrictedExpression,
};
use policies::{derive, load_dir, Filter, PolicyBundle, Row, RowValue, Value};

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

/// One generated attribute: its Cedar form and its SQL-row form.
enum Attr {
    Long(i64),
    Str(String),
    Bool(bool),
    Decimal(i64),
    Datetime(i64),
    Set(Vec<String>),
}

fn cedar_value(a: &Attr) -> RestrictedExpression {
    match a {
        Attr::Long(n) => RestrictedExpression::new_long(*n),
        Attr::Str(s) => RestrictedExpression::new_string(s.clone()),
        Attr::Bool(b) => RestrictedExpression::new_bool(*b),
        Attr::Decimal(d) => {
            let sign = if *d < 0 { "-" } else { "" };
            RestrictedExpression::from_str(&format!(
                "decimal(\"{sign}{}.{:04}\")",
                d.abs() / 10_000,
                d.abs() % 10_000
            ))
            .unwrap()
        }
        Attr::Datetime(ms) => {
            // Whole days only, which is all the generator makes.
            let days = ms / 86_400_000;
            RestrictedExpression::from_str(&format!("datetime(\"{}\")", civil(days))).unwrap()
        }
        Attr::Set(items) => RestrictedExpression::new_set(
            items
                .iter()
                .map(|s| RestrictedExpression::new_string(s.clone())),
        ),
    }
}

fn row_value(a: &Attr) -> RowValue {
    match a {
        Attr::Long(n) => RowValue::Scalar(Value::Long(*n)),
        Attr::Str(s) => RowValue::Scalar(Value::String(s.clone())),
        Attr::Bool(b) => RowValue::Scalar(Value::Bool(*b)),
        Attr::Decimal(d) => RowValue::Scalar(Value::Decimal(*d)),
        Attr::Datetime(ms) => RowValue::Scalar(Value::Datetime(*ms)),
        Attr::Set(items) => RowValue::Set(items.iter().map(|s| Value::String(s.clone())).collect()),
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

fn gen_row(table: &str, g: &mut Gen) -> Vec<(&'static str, Attr)> {
    let day = |g: &mut Gen| Attr::Datetime((20_000 + g.below(400)) * 86_400_000);
    let mut row = vec![
        ("id", Attr::Long(g.below(1000))),
        ("tenant_id", Attr::Long(g.below(4))),
    ];
    match table {
        "public::customers" => {
            row.push(("name", Attr::Str(format!("c{}", g.below(50)))));
            row.push(("email", Attr::Str("x@example.com".into())));
            if g.below(3) > 0 {
                row.push(("ssn", Attr::Str(format!("{:09}", g.below(1_000_000_000)))));
            }
            row.push((
                "tier",
                Attr::Str(g.pick(&["standard", "gold", "platinum"]).into()),
            ));
            row.push(("created_at", day(g)));
        }
        "public::tickets" => {
            row.push(("customer_id", Attr::Long(g.below(30))));
            row.push(("subject", Attr::Str("s".into())));
            row.push(("body", Attr::Str("b".into())));
            row.push((
                "status",
                Attr::Str(g.pick(&["open", "pending", "closed"]).into()),
            ));
            row.push(("priority", Attr::Long(1 + g.below(5))));
            row.push(("opened_at", day(g)));
        }
        "public::transfers" => {
            row.push(("customer_id", Attr::Long(g.below(30))));
            // Amounts around the 10,000.00 threshold, including exactly on it.
            let amount = match g.below(4) {
                0 => 100_000_000,
                1 => 100_000_000 + 1,
                _ => g.below(200_000_000),
            };
            row.push(("amount", Attr::Decimal(amount)));
            row.push(("currency", Attr::Str(g.pick(&["EUR", "USD"]).into())));
            row.push(("iban", Attr::Str("DE00".into())));
            row.push(("approved", Attr::Bool(g.below(2) == 0)));
            row.push(("created_at", day(g)));
            if g.below(2) == 0 {
                row.push(("metadata", Attr::Str("{}".into())));
            }
        }
        "vectors::support_docs" => {
            row.retain(|(k, _)| *k != "id");
            let groups = ["support", "billing", "legal", "hr"];
            let acl = groups
                .iter()
                .filter(|_| g.below(3) == 0)
                .map(|s| s.to_string())
                .collect();
            row.push(("acl_groups", Attr::Set(acl)));
            row.push((
                "classification",
                Attr::Str(g.pick(&["public", "internal", "restricted"]).into()),
            ));
            row.push(("title", Attr::Str("t".into())));
            if g.below(2) == 0 {
                row.push(("source_url", Attr::Str("https://x".into())));
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
                            .map(|(k, v)| (k.to_string(), cedar_value(v)))
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
                            .map(|(k, v)| (k.to_string(), row_value(v)))
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
