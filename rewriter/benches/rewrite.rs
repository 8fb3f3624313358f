//! Rewriting cost: parse + protect + serialize of an agent's statement (cold: what a rewrite-
//! cache miss pays once the rules are derived), and a hit in the rewrite cache the proxy keeps
//! per (policy version, agent/context, protocol, text). Two statements: a one-table key lookup,
//! and a five-table join. Results: BENCHMARKS.md.
//!
//!     cargo bench -p rewriter --bench rewrite

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use policies::{CmpOp, ColumnRule, Filter, Mask, Value};
use rewriter::{
    rewrite, Catalog, Column, Context, Operator, Policies, Protocol, Refusal, RelKind, Relation,
    RewriteCache, ShapeCache, TablePolicy, WriteAction, WritePolicy,
};

fn col(name: &str, ty: &str) -> Column {
    let (sql_type, category) = match ty {
        "int4" => ("integer", 'N'),
        "text" => ("text", 'S'),
        _ => ("numeric(12,2)", 'N'),
    };
    Column {
        name: name.into(),
        sql_type: sql_type.into(),
        type_name: ty.into(),
        category,
        generated: false,
        default: Some("NULL".into()),
    }
}

fn table(name: &str, columns: &[(&str, &str)]) -> Relation {
    Relation {
        schema: "public".into(),
        name: name.into(),
        kind: RelKind::Table,
        columns: columns.iter().map(|(n, t)| col(n, t)).collect(),
        has_children: false,
    }
}

fn catalog() -> Catalog {
    Catalog::new(
        vec![
            table(
                "customers",
                &[
                    ("id", "int4"),
                    ("tenant_id", "int4"),
                    ("name", "text"),
                    ("email", "text"),
                    ("ssn", "text"),
                ],
            ),
            table(
                "orders",
                &[
                    ("id", "int4"),
                    ("tenant_id", "int4"),
                    ("customer_id", "int4"),
                    ("status", "text"),
                ],
            ),
            table(
                "items",
                &[
                    ("id", "int4"),
                    ("tenant_id", "int4"),
                    ("order_id", "int4"),
                    ("product_id", "int4"),
                    ("qty", "int4"),
                ],
            ),
            table(
                "products",
                &[
                    ("id", "int4"),
                    ("supplier_id", "int4"),
                    ("title", "text"),
                    ("price", "numeric"),
                ],
            ),
            table("suppliers", &[("id", "int4"), ("name", "text")]),
        ],
        vec![],
        ["count", "lower"].map(String::from).to_vec(),
    )
    // The comparisons of PostgreSQL 15's catalog that the statements use (pushdown reads them).
    .with_operators(
        [("int4", true), ("text", true), ("numeric", false)]
            .into_iter()
            .flat_map(|(ty, leakproof)| {
                ["=", "<>", "<", "<=", ">", ">="].map(|op| Operator {
                    name: op.into(),
                    left: ty.into(),
                    right: ty.into(),
                    result: "bool".into(),
                    leakproof,
                })
            })
            .collect(),
    )
}

/// Rules as the proxy's rule cache hands them out once derived: a tenant filter on the tenant
/// tables, a redacted column on customers.
struct Derived(BTreeMap<String, Arc<TablePolicy>>);

impl Derived {
    fn new(catalog: &Catalog) -> Self {
        let mut rules = BTreeMap::new();
        for rel in catalog.relations() {
            let tenant = rel.columns.iter().any(|c| c.name == "tenant_id");
            let filter = if tenant {
                Filter::Compare {
                    attr: "tenant_id".into(),
                    op: CmpOp::Eq,
                    value: Value::Long(1),
                }
            } else {
                Filter::True
            };
            let columns = rel
                .columns
                .iter()
                .map(|c| {
                    let rule = if c.name == "ssn" {
                        ColumnRule::Masked {
                            mask: Mask::Redact,
                            unless: Filter::False,
                        }
                    } else {
                        ColumnRule::Visible
                    };
                    (c.name.clone(), rule)
                })
                .collect();
            rules.insert(
                rel.name.clone(),
                Arc::new(TablePolicy {
                    filter,
                    columns: Some(columns),
                    determining: vec!["tenant".into()],
                    row_checks: vec![],
                }),
            );
        }
        Derived(rules)
    }
}

impl Policies for Derived {
    fn read(&self, relation: &Relation) -> Result<Arc<TablePolicy>, Refusal> {
        Ok(self.0[&relation.name].clone())
    }

    /// Writes are checked against the read filter (a tenant may write its own rows).
    fn write(&self, relation: &Relation, _: WriteAction) -> Result<Arc<WritePolicy>, Refusal> {
        Ok(Arc::new(WritePolicy {
            filter: self.0[&relation.name].filter.clone(),
            determining: vec!["tenant".into()],
            checks: vec![],
        }))
    }
}

const LOOKUP: &str = "SELECT id, name, email, ssn FROM customers WHERE id = $1";
const UPDATE: &str = "UPDATE orders SET status = $2 WHERE id = $1 AND status = 'open'";
const INSERT: &str = "INSERT INTO customers (id, tenant_id, name, email) VALUES ($1, 1, $2, $3) \
    RETURNING id, name";
const JOIN5: &str = "SELECT c.name, o.id, i.qty, p.title, s.name \
    FROM customers c \
    JOIN orders o ON o.customer_id = c.id \
    JOIN items i ON i.order_id = o.id \
    JOIN products p ON p.id = i.product_id \
    JOIN suppliers s ON s.id = p.supplier_id \
    WHERE c.id = $1 AND o.status = 'open' \
    ORDER BY o.id LIMIT 50";

fn bench(c: &mut Criterion) {
    let catalog = catalog();
    let policies = Derived::new(&catalog);
    let path = vec!["public".to_string()];
    let ctx = Context {
        catalog: &catalog,
        search_path: &path,
        policies: &policies,
        agent: "support-bot",
    };
    let mut group = c.benchmark_group("rewrite");
    // Checked writes: the statement is rebuilt around the agent's expressions.
    for (name, sql) in [("update", UPDATE), ("insert", INSERT)] {
        assert!(rewrite(sql, Protocol::Extended, &ctx).is_ok(), "{sql}");
        group.bench_function(format!("{name}/cold"), |b| {
            b.iter(|| rewrite(black_box(sql), Protocol::Extended, &ctx).unwrap())
        });
    }
    for (name, sql) in [("lookup", LOOKUP), ("join5", JOIN5)] {
        assert!(rewrite(sql, Protocol::Extended, &ctx).is_ok());
        group.bench_function(format!("{name}/cold"), |b| {
            b.iter(|| rewrite(black_box(sql), Protocol::Extended, &ctx).unwrap())
        });
        // The read-back by PostgreSQL's parser (libpg_query) that every cold rewrite now
        // includes: its share of the cold cost.
        let forwarded = rewrite(sql, Protocol::Extended, &ctx).unwrap().sql;
        group.bench_function(format!("{name}/postgres_read_back"), |b| {
            b.iter(|| rewriter::postgres_reading(black_box(&forwarded)).unwrap())
        });
        // The proxy's cache, holding a few thousand other statements.
        let cache = RewriteCache::new(64 << 20, |s: &Arc<String>| s.len() as u64);
        let version = 7u64;
        let scope = "Agent::\"support-bot\"\0";
        let _ = cache.get(&version, scope, Protocol::Extended, sql);
        for i in 0..5_000 {
            cache.insert(
                &version,
                scope,
                Protocol::Extended,
                &format!("{sql} -- {i}"),
                Arc::new(String::new()),
            );
        }
        let result = Arc::new(rewrite(sql, Protocol::Extended, &ctx).unwrap().sql);
        cache.insert(&version, scope, Protocol::Extended, sql, result);
        group.bench_function(format!("{name}/cache_hit"), |b| {
            b.iter(|| {
                cache
                    .get(&version, scope, Protocol::Extended, black_box(sql))
                    .unwrap()
            })
        });
    }
    // The simple protocol: the same statements with a constant where the parameter was. A
    // statement with a new constant is lifted (PostgreSQL's scanner) and filled into the
    // template learnt from another (the shape cache).
    for (name, sql) in [("lookup", LOOKUP), ("join5", JOIN5)] {
        let literal = |id: u32| sql.replace("$1", &id.to_string());
        let checked = |sql: &str| {
            rewrite(sql, Protocol::Simple, &ctx)
                .ok()
                .map(|r| rewriter::Checked {
                    sql: r.sql,
                    statements: r.statements,
                    shape: 0,
                    prepared: r.prepared,
                    search_path_changes: r.search_path_changes,
                    basis: None,
                })
        };
        let shapes = ShapeCache::new(32 << 20);
        let first = literal(42);
        let lifted = rewriter::lift(&first).unwrap();
        shapes.learn(
            &7u64,
            "",
            Protocol::Simple,
            &lifted,
            &checked(&first).unwrap(),
            checked,
        );
        let others: Vec<String> = (0..64).map(|i| literal(1000 + i)).collect();
        for other in &others {
            let lifted = rewriter::lift(other).unwrap();
            let filled = shapes.get(&7u64, "", Protocol::Simple, &lifted).unwrap();
            assert_eq!(Some(filled), checked(other), "{other}");
        }
        let mut next = others.iter().cycle();
        group.bench_function(format!("{name}/shape_hit"), |b| {
            b.iter(|| {
                let lifted = rewriter::lift(black_box(next.next().unwrap())).unwrap();
                shapes.get(&7u64, "", Protocol::Simple, &lifted).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
