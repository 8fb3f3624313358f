//! The rewriter on an in-memory catalog: what a statement becomes, and what is refused. (The
//! end-to-end tests run the rewritten SQL on a real PostgreSQL.)

use std::collections::BTreeMap;
use std::sync::Arc;

use policies::{CmpOp, ColumnRule, Filter, Mask, Value};
use rewriter::{
    rewrite, Catalog, Column, Context, Operator, Policies, Protocol, Refusal, RelKind, Relation,
    TablePolicy, WriteAction, WritePolicy,
};

fn col(name: &str, ty: &str) -> Column {
    let (sql_type, category) = match ty {
        "int4" => ("integer", 'N'),
        "text" => ("text", 'S'),
        "numeric" => ("numeric(12,2)", 'N'),
        other => panic!("{other}"),
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

fn system(name: &str, columns: &[&str]) -> Relation {
    Relation {
        schema: "pg_catalog".into(),
        name: name.into(),
        kind: RelKind::Table,
        columns: columns
            .iter()
            .map(|c| Column {
                name: c.to_string(),
                sql_type: "real".into(),
                type_name: "float4".into(),
                category: 'N',
                generated: false,
                default: Some("NULL".into()),
            })
            .collect(),
        has_children: false,
    }
}

fn catalog() -> Catalog {
    catalog_with_tenant_default(Some("NULL"))
}

/// PostgreSQL 15's `pg_catalog` operators for the test's types, as the catalog snapshot reads
/// them (`pg_operator`, with `pg_proc.proleakproof` of each operator's function).
fn operators() -> Vec<Operator> {
    let op = |name: &str, left: &str, right: &str, result: &str, leakproof: bool| Operator {
        name: name.into(),
        left: left.into(),
        right: right.into(),
        result: result.into(),
        leakproof,
    };
    let mut ops = Vec::new();
    for (l, r, leakproof) in [
        ("int4", "int4", true),
        ("int4", "int8", true),
        ("int8", "int4", true),
        ("int8", "int8", true),
        ("text", "text", true),
        ("bool", "bool", true),
        ("date", "date", true),
        ("date", "timestamp", false),
        ("numeric", "numeric", false),
    ] {
        for name in ["=", "<>", "<", "<=", ">", ">="] {
            ops.push(op(name, l, r, "bool", leakproof));
        }
    }
    ops.extend([
        op("~~", "text", "text", "bool", false),
        op("!~~", "text", "text", "bool", false),
        op("+", "int4", "int4", "int4", false),
        op("-", "", "int4", "int4", false),
        op("+", "date", "interval", "timestamp", false),
        op("+", "date", "int4", "date", false),
        op("-", "numeric", "numeric", "numeric", false),
    ]);
    ops
}

/// The test catalog, with `tenant_default` as the default of customers.tenant_id.
fn catalog_with_tenant_default(tenant_default: Option<&str>) -> Catalog {
    catalog_with(tenant_default, &[])
}

/// The test catalog, with `tenant_default` as the default of customers.tenant_id and
/// `functions` allowed besides the usual ones.
fn catalog_with(tenant_default: Option<&str>, functions: &[&str]) -> Catalog {
    Catalog::new(
        vec![
            Relation {
                schema: "public".into(),
                name: "customers".into(),
                kind: RelKind::Table,
                columns: vec![
                    col("id", "int4"),
                    Column {
                        default: tenant_default.map(String::from),
                        ..col("tenant_id", "int4")
                    },
                    col("name", "text"),
                    col("ssn", "text"),
                ],
                has_children: false,
            },
            Relation {
                schema: "public".into(),
                name: "orders".into(),
                kind: RelKind::Table,
                columns: vec![
                    col("id", "int4"),
                    col("customer_id", "int4"),
                    col("total", "numeric"),
                ],
                has_children: true,
            },
            Relation {
                schema: "public".into(),
                name: "invoices".into(),
                kind: RelKind::Table,
                columns: vec![
                    col("id", "int4"),
                    col("amount", "int4"),
                    Column {
                        generated: true,
                        ..col("amount_with_tax", "int4")
                    },
                ],
                has_children: false,
            },
            Relation {
                schema: "public".into(),
                name: "unprotected".into(),
                kind: RelKind::Table,
                columns: vec![col("id", "int4")],
                has_children: false,
            },
        ],
        vec![
            system("pg_class", &["oid", "relname", "reltuples"]),
            system("pg_namespace", &["oid", "nspname"]),
            system("pg_stats", &["tablename"]),
            system("pg_statistic", &["starelid"]),
        ],
        [
            "count",
            "lower",
            "generate_series",
            "pg_read_file",
            "query_to_xml",
            "now",
            "row_to_json",
            "to_jsonb",
            "unnest",
        ]
        .iter()
        .chain(functions)
        .map(|f| f.to_string())
        .collect(),
    )
    .with_operators(operators())
    .with_stable_functions(vec![("now".into(), "timestamptz".into())])
}

struct Fixed;

impl Policies for Fixed {
    fn read(&self, relation: &Relation) -> Result<Arc<TablePolicy>, Refusal> {
        let tenant = Filter::Compare {
            attr: "tenant_id".into(),
            op: CmpOp::Eq,
            value: Value::Long(1),
        };
        match relation.name.as_str() {
            "customers" => Ok(Arc::new(TablePolicy {
                filter: tenant,
                columns: Some(BTreeMap::from([
                    ("id".into(), ColumnRule::Visible),
                    ("tenant_id".into(), ColumnRule::Visible),
                    ("name".into(), ColumnRule::Visible),
                    (
                        "ssn".into(),
                        ColumnRule::Masked {
                            mask: Mask::Redact,
                            unless: Filter::False,
                        },
                    ),
                ])),
                determining: vec!["p".into()],
                row_checks: vec![],
            })),
            "orders" => Ok(Arc::new(TablePolicy {
                filter: Filter::Compare {
                    attr: "total".into(),
                    op: CmpOp::Lt,
                    value: Value::Decimal(1_000_000),
                },
                columns: None,
                determining: vec![],
                row_checks: vec![],
            })),
            "invoices" => Ok(Arc::new(TablePolicy {
                filter: Filter::True,
                columns: None,
                determining: vec![],
                row_checks: vec![],
            })),
            _ => Err(Refusal::Forbidden(format!(
                "{} is not covered by policy",
                relation.entity_type()
            ))),
        }
    }

    /// customers: insert and update in tenant 1 (policy "tenant-writes"), no delete; orders:
    /// everything.
    fn write(&self, relation: &Relation, action: WriteAction) -> Result<Arc<WritePolicy>, Refusal> {
        let filter = match (relation.name.as_str(), action) {
            ("customers", WriteAction::Delete) => Filter::False,
            ("customers", _) => Filter::Compare {
                attr: "tenant_id".into(),
                op: CmpOp::Eq,
                value: Value::Long(1),
            },
            ("orders", _) => Filter::True,
            ("invoices", _) => Filter::Compare {
                attr: "amount_with_tax".into(),
                op: CmpOp::Lt,
                value: Value::Long(1000),
            },
            _ => {
                return Err(Refusal::Forbidden(format!(
                    "{} is not covered by policy",
                    relation.entity_type()
                )))
            }
        };
        Ok(Arc::new(WritePolicy {
            filter,
            determining: vec!["tenant-writes".into()],
            checks: vec![],
        }))
    }
}

fn run(sql: &str) -> Result<String, Refusal> {
    run_in(&catalog(), sql)
}

fn run_in(catalog: &Catalog, sql: &str) -> Result<String, Refusal> {
    let path = vec!["public".to_string()];
    let ctx = Context {
        catalog,
        search_path: &path,
        policies: &Fixed,
        agent: "support-bot",
    };
    rewrite(sql, Protocol::Simple, &ctx).map(|r| r.sql)
}

const CUSTOMERS: &str = r#"(SELECT "id", "tenant_id", "name", '***'::TEXT AS "ssn" FROM "public"."customers" WHERE ("tenant_id" = 1) OFFSET 0)"#;

#[test]
fn a_table_becomes_its_fenced_filtered_masked_view() {
    assert_eq!(
        run("select * from customers").unwrap(),
        format!(r#"SELECT * FROM {CUSTOMERS} AS "customers""#)
    );
    assert_eq!(
        run("select c.name from public.customers c").unwrap(),
        format!(r#"SELECT c.name FROM {CUSTOMERS} AS "c""#)
    );
}

/// Reflection tools qualify columns by schema and table; the fence takes the table's name.
#[test]
fn schema_qualified_column_references_reach_the_fence() {
    let sql = run(r#"select "public"."customers"."id", public.customers.* from "public"."customers" where public.customers.id > 1 order by public.customers.name"#).unwrap();
    assert!(sql.starts_with(r#"SELECT "customers"."id", customers.* FROM (SELECT "id", "tenant_id", "name", '***'::TEXT AS "ssn" FROM "public"."customers" WHERE"#), "{sql}");
    assert!(
        sql.ends_with(r#"AS "customers" WHERE customers.id > 1 ORDER BY customers.name"#),
        "{sql}"
    );
    // The key comparison still reaches the fence (and its index).
    assert!(sql.contains(r#"AND ("id" > 1) OFFSET 0"#), "{sql}");
    // The catalogs whose statistics are nulled are subqueries too.
    assert!(run(
        "select pg_catalog.pg_class.relname from pg_catalog.pg_class \
         where pg_catalog.pg_class.relname = 'customers'"
    )
    .unwrap()
    .contains(r#"SELECT pg_class.relname FROM (SELECT"#));
    // In a correlated subquery and a write.
    run("select id from public.customers where exists (select 1 from orders o where o.customer_id = public.customers.id)").unwrap();
    run("update public.customers set name = 'x' where public.customers.id = 1").unwrap();
    // When the table's name could mean something else in the statement: refused, not guessed.
    let e = run("select public.customers.id from public.customers, orders customers").unwrap_err();
    assert_eq!(e.sqlstate(), "0A000", "{e}");
    assert!(e.to_string().contains("aliases"), "{e}");
}

#[test]
fn every_position_is_protected() {
    for sql in [
        "select * from customers join orders on orders.customer_id = customers.id",
        "select (select count(*) from customers)",
        "select 1 where exists (select 1 from customers where ssn = 'x')",
        "select * from (select * from (select * from customers) a) b",
        "select id from customers union select id from orders",
        "with x as (select * from customers) select * from x",
        "select * from orders o, lateral (select * from customers c where c.id = o.customer_id) l",
        "select id from orders where customer_id in (select id from customers)",
        "with recursive r as (select id from customers union all select id + 1 from r where id < 3) select * from r",
        "explain select * from customers",
        "copy customers to stdout",
        "copy (select * from customers) to stdout",
    ] {
        let out = run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(
            !out.contains(r#"FROM customers"#) && !out.contains("FROM public.customers"),
            "{sql} → {out}"
        );
        assert!(out.contains(r#"FROM "public"."customers" WHERE"#), "{sql} → {out}");
    }
}

#[test]
fn cte_names_shadow_tables_only_in_scope() {
    // The CTE `customers` hides the table inside the main query...
    let out = run("with customers as (select 1 as id) select * from customers").unwrap();
    assert_eq!(
        out,
        r#"WITH customers AS (SELECT 1 AS id) SELECT * FROM "customers""#
    );
    // ...but a CTE body naming itself without RECURSIVE would be the table: refused.
    let e = run("with customers as (select * from customers) select * from customers").unwrap_err();
    assert_eq!(e.sqlstate(), "42501");
    // A CTE from another branch is not in scope: the table is fenced.
    let out =
        run("select * from (with customers as (select 1) select * from customers) a, customers")
            .unwrap();
    assert!(
        out.ends_with(&format!(r#", {CUSTOMERS} AS "customers""#)),
        "{out}"
    );
}

#[test]
fn unknown_relations_uncovered_tables_and_unsafe_catalogs_are_refused() {
    for (sql, state) in [
        ("select * from nope", "42501"),
        ("select * from other.customers", "42501"),
        ("select * from unprotected", "42501"),
        ("select * from pg_stats", "42501"),
        ("select * from pg_catalog.pg_statistic", "42501"),
        ("select * from only orders", "0A000"),
    ] {
        let e = run(sql).unwrap_err();
        assert_eq!(e.sqlstate(), state, "{sql}: {e}");
    }
    assert_eq!(
        run("select nspname from pg_namespace n").unwrap(),
        r#"SELECT nspname FROM "pg_catalog"."pg_namespace" n"#
    );
    // pg_class's row-count estimates count hidden rows: read as NULL.
    assert_eq!(
        run("select relname, reltuples from pg_class").unwrap(),
        r#"SELECT relname, reltuples FROM (SELECT "oid", "relname", NULL::REAL AS "reltuples" FROM "pg_catalog"."pg_class") AS "pg_class""#
    );
}

#[test]
fn only_is_read_as_postgresql_reads_it() {
    let out = run("select * from only customers").unwrap();
    assert_eq!(out, format!(r#"SELECT * FROM {CUSTOMERS} AS "customers""#));
    // `ONLY (t)`: sqlparser reads a call of a function `only`.
    let out = run("select * from only (customers)").unwrap();
    assert_eq!(out, format!(r#"SELECT * FROM {CUSTOMERS} AS "customers""#));
    let out = run("select c.id from only (public.customers) as c").unwrap();
    assert_eq!(out, format!(r#"SELECT c.id FROM {CUSTOMERS} AS "c""#));
    let e = run("select * from only (orders)").unwrap_err();
    assert_eq!(e.sqlstate(), "0A000", "{e}");
    let e = run(r#"select * from "only" (customers)"#).unwrap_err();
    assert_eq!(e.sqlstate(), "42501", "{e}");
}

#[test]
fn functions_outside_the_allow_list_are_refused() {
    for sql in [
        "select pg_read_file('/etc/passwd')",
        "select query_to_xml('select * from customers', true, true, '')",
        "select public.leak(id) from customers",
        "select myfunc()",
        "select * from pg_read_file('x') f",
        "select pg_catalog.pg_relation_size('customers')",
        "select pg_total_relation_size('public.customers'::regclass)",
        "select nextval('customers_id_seq')",
        "select information_schema.not_a_helper(1)",
        "select public._pg_expandarray(array[1])",
    ] {
        let e = run(sql).unwrap_err();
        assert_eq!(e.sqlstate(), "42501", "{sql}: {e}");
    }
    assert!(run("select count(*), lower(name), now(), coalesce(name, 'x') from customers").is_ok());
    assert!(run("select * from generate_series(1, 3) g").is_ok());
    // unnest in FROM (Django's constraint introspection): sqlparser models it apart from other
    // set-returning calls; PostgreSQL reads it as a call, and the read-back agrees.
    for sql in [
        "select * from unnest(array[1, 2]) with ordinality u(a, b)",
        "select array(select name from unnest(array[1, 2]) with ordinality k(id, n) join customers c on c.id = k.id order by k.n)",
        "select * from pg_catalog.unnest(array[1, 2]) u",
        // information_schema's helpers, as pgjdbc's getPrimaryKeys calls them.
        "select (information_schema._pg_expandarray(array[3, 1])).n",
        "select * from information_schema._pg_expandarray(array[3, 1]) e",
    ] {
        assert!(run(sql).is_ok(), "{sql}: {:?}", run(sql));
    }
}

#[test]
fn statements_other_than_reads_and_checked_writes_are_refused() {
    for (sql, state) in [
        ("create table x (a int)", "42501"),
        ("drop table customers", "42501"),
        ("truncate customers", "42501"),
        ("grant select on customers to public", "42501"),
        // Writes the policy cannot check or does not permit (the rest: `write_refusals`).
        ("insert into invoices (id) values (1)", "42501"),
        ("delete from customers", "42501"),
        ("prepare p as select * from customers", "42501"),
        ("listen x", "42501"),
        ("notify x", "42501"),
        ("set search_path = evil, public", "42501"),
        ("set \"search_path\" = evil, public", "42501"),
        ("set local SEARCH_PATH to evil", "42501"),
        ("select * into newtable from customers", "42501"),
        ("vacuum customers", "42501"),
        ("create temp table customers (id int)", "42501"),
        (
            "with d as (delete from customers returning *) select * from d",
            "42501",
        ),
        (
            "with i as (insert into customers (id, ssn) values (1, 'x') returning *) select 1",
            "42501",
        ),
        ("select 1 operator(public.+) 2", "42501"),
        ("explain analyze select * from customers", "42501"),
        (
            "explain (costs off, ANALYZE) select * from customers",
            "42501",
        ),
        ("explain (analyse) select * from customers", "42501"),
        (
            "explain (analyse true, costs off) select * from customers",
            "42501",
        ),
        ("explain (timing) select * from customers", "42501"),
    ] {
        let e = run(sql).unwrap_err();
        assert_eq!(e.sqlstate(), state, "{sql}: {e}");
    }
    for sql in [
        "begin",
        "commit",
        "rollback",
        "show search_path",
        "set statement_timeout = 5",
    ] {
        assert!(run(sql).is_ok(), "{sql}");
    }
}

#[test]
fn leakproof_point_lookups_are_copied_into_the_fence() {
    let out = run("select * from customers where id = 5 and name like '%x'").unwrap();
    assert!(
        out.contains(r#"WHERE (("tenant_id" = 1)) AND ("id" = 5) OFFSET 0"#),
        "{out}"
    );
    // The outer predicate stays outside too.
    assert!(
        out.ends_with(r#"AS "customers" WHERE id = 5 AND name LIKE '%x'"#),
        "{out}"
    );
    // Masked columns, non-leakproof operators (numeric, LIKE, int4 = numeric), calls on the
    // fence's columns, subqueries and columns of two items are not copied.
    for sql in [
        "select * from customers where ssn = 'x'",
        "select * from orders where total = 5",
        "select * from customers where id = 5.5",
        "select * from customers where id + 1 = 5",
        "select * from customers where lower(name) = 'a'",
        "select * from customers where id = $1 + 1",
        "select * from customers where id = (select 1)",
        "select * from customers where name like 'a%'",
    ] {
        let out = run(sql).unwrap();
        assert_eq!(out.matches(" OFFSET 0").count(), 1, "{sql}");
        assert!(!out.contains(") AND "), "{sql} → {out}");
    }
    let out = run("select * from customers c, orders o where c.id = o.customer_id").unwrap();
    assert!(!out.contains(") AND "), "{out}");
    let out =
        run("select * from customers c join orders o on o.customer_id = c.id where c.id = $1")
            .unwrap();
    assert!(out.contains(r#"AND ("id" = $1) OFFSET 0"#), "{out}");
}

/// What PostgreSQL would push into a `security_barrier` view is copied into the fence: two
/// columns of the fence, constants built with casts, arithmetic and stable calls, IN lists,
/// BETWEEN, IS NULL, unqualified names only one item has, an inner or left join's ON.
#[test]
fn conditions_a_security_barrier_view_would_take_are_copied() {
    for (sql, copied) in [
        (
            "select * from customers where id = tenant_id",
            r#""id" = "tenant_id""#,
        ),
        (
            "select * from customers where id = cast('5' as integer)",
            r#""id" = CAST('5' AS INTEGER)"#,
        ),
        ("select * from customers where id < 2 + 3", r#""id" < 2 + 3"#),
        (
            "select * from customers where id in (1, 2)",
            r#""id" IN (1, 2)"#,
        ),
        (
            "select * from customers where name not in ('a')",
            r#""name" NOT IN ('a')"#,
        ),
        (
            "select * from customers where id between 1 and -4",
            r#""id" BETWEEN 1 AND -4"#,
        ),
        (
            "select * from customers where name is null or id = 1",
            r#""name" IS NULL OR "id" = 1"#,
        ),
        (
            "select * from customers c join orders o on o.customer_id = c.id where name = 'a'",
            r#""name" = 'a'"#,
        ),
        (
            "select * from orders o join customers c on c.id = o.customer_id and c.name = 'a'",
            r#""name" = 'a'"#,
        ),
        (
            "select * from orders o left join customers c on c.id = o.customer_id and c.name = 'a'",
            r#""name" = 'a'"#,
        ),
        (
            "select * from orders o left join customers c on c.id = o.customer_id where c.name = 'a'",
            r#""name" = 'a'"#,
        ),
    ] {
        let out = run(sql).unwrap();
        assert!(out.contains(&format!("AND ({copied}) OFFSET 0")), "{sql}\n → {out}");
    }
    // On the nullable side of an outer join only conditions that null-extended rows fail.
    let out = run(
        "select * from orders o left join customers c on c.id = o.customer_id where c.name is null",
    )
    .unwrap();
    assert!(!out.contains(r#""name" IS NULL"#), "{out}");
}

/// A correlated condition is copied with the outer column qualified as PostgreSQL resolved
/// it; not where the relation's own name inside the fence would capture it, nor across a FROM
/// item whose columns are unknown.
#[test]
fn correlated_conditions_reach_the_inner_fence() {
    let out = run(
        "select * from orders o where 0 < (select count(*) from customers c where c.id = o.customer_id)",
    )
    .unwrap();
    assert!(
        out.contains(r#"AND ("id" = "o"."customer_id") OFFSET 0) AS "c""#),
        "{out}"
    );
    let out = run(
        "select * from orders o where o.id > (select count(*) from customers where id = customer_id)",
    )
    .unwrap();
    assert!(
        out.contains(r#"AND ("id" = "o"."customer_id") OFFSET 0"#),
        "{out}"
    );
    for sql in [
        // `customers.customer_id` inside the fence of customers would be the table's own.
        "select * from orders customers where exists (select 1 from customers c where c.id = customers.customer_id)",
        // PostgreSQL makes semi-joins of EXISTS and IN (and pushes nothing correlated into
        // a view there); a copy naming the outer query would keep it from doing so.
        "select * from orders o where exists (select 1 from customers c where c.id = o.customer_id)",
        "select * from orders o where o.id in (select id from customers c where c.id = o.customer_id)",
        // An operation that may raise takes only literals, not outer columns.
        "select * from orders o where 0 < (select count(*) from customers c where c.id = o.customer_id + 1)",
        // `x` could be a column of the derived table.
        "select * from (select 1 as y) d, orders o where exists (select 1 from customers c where c.id = x)",
    ] {
        let out = run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(!out.contains(r#"AND "id" = "#), "{sql}\n → {out}");
    }
}

/// A relation the agent reads whole is named as it is: no fence to block the planner.
#[test]
fn a_relation_seen_whole_is_not_fenced() {
    assert_eq!(
        run("select * from invoices i where amount > 5").unwrap(),
        r#"SELECT * FROM "public"."invoices" AS "i" WHERE amount > 5"#
    );
    assert_eq!(
        run("select * from invoices tablesample bernoulli (5)").unwrap(),
        r#"SELECT * FROM "public"."invoices" TABLESAMPLE BERNOULLI (5)"#
    );
    // After the alias, where PostgreSQL's grammar (which reads every rewrite back) wants it.
    assert_eq!(
        run("select i.id from invoices i tablesample system (50) repeatable (1)").unwrap(),
        r#"SELECT i.id FROM "public"."invoices" AS "i" TABLESAMPLE SYSTEM (50) REPEATABLE (1)"#
    );
    // A row lock still needs the update policy's fence.
    assert!(run("select * from invoices for update")
        .unwrap()
        .contains("OFFSET 0"));
}

#[test]
fn writes_touch_only_allowed_rows_and_check_new_ones() {
    for sql in [
        "update customers set name = 'x' where id = 1",
        "delete from orders where id = 1",
        "insert into customers (id, tenant_id, name) values (1, 1, 'a')",
        "insert into customers (id, tenant_id, name) select id, tenant_id, name from customers",
        "update customers c set name = o.id::text from orders o where o.customer_id = c.id returning *",
        "delete from orders o using customers c where o.customer_id = c.id returning o.id",
    ] {
        let out = run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        println!("{sql}\n  → {out}");
        // Every read of customers goes through a fence (filtered); writes name the table once.
        assert!(!out.contains("FROM customers") && !out.contains("USING customers"), "{out}");
    }
    let out = run("update customers set name = 'x' where id = 1").unwrap();
    assert!(out.contains("portcullis-policy-violation"), "{out}");
    // Readable and updatable rows only; the key comparison is copied into the target's fence
    // (for its index), the agent's WHERE runs over the fence.
    assert!(
        out.contains(r#"FROM "public"."customers" WHERE (("tenant_id" = 1)) AND ("id" = 1) OFFSET 0) AS "customers" WHERE (id = 1) OFFSET 0"#),
        "{out}"
    );
}

#[test]
fn write_refusals() {
    for (sql, code, text) in [
        (
            "delete from customers where id = 1",
            "42501",
            "no policy permits delete",
        ),
        (
            "update customers set ssn = 'x'",
            "42501",
            "may not read in clear",
        ),
        (
            "insert into customers select * from customers",
            "0A000",
            "column list",
        ),
        // The whole row would carry ssn in clear.
        (
            "update customers set name = 'x' returning row_to_json(customers)",
            "42501",
            "whole-row reference",
        ),
        (
            "update customers c set name = 'x' returning to_jsonb(c)",
            "42501",
            "whole-row reference",
        ),
        (
            "update customers c set name = 'x' returning (c.*)::text",
            "42501",
            "whole-row reference",
        ),
        // The check would see a generated column's old value.
        (
            "update invoices set amount = 5000 where id = 1",
            "42501",
            "generated column",
        ),
        // A column the catalog snapshot does not know (added since): not returned.
        (
            "update customers set name = 'x' returning new_secret_column",
            "42501",
            "RETURNING names",
        ),
        (
            "insert into customers (id, tenant_id, name, ssn) values (1, 1, 'a', 'x')",
            "42501",
            "may not read in clear",
        ),
        (
            "merge into customers c using orders o on o.id = c.id when matched then delete",
            "42501",
            "no policy permits delete",
        ),
        (
            "update pg_class set relname = 'x'",
            "42501",
            "system catalog",
        ),
        ("update unprotected set id = 1", "42501", "not covered"),
        (
            "update customers set (name, ssn) = ('a', 'b')",
            "42501",
            "may not read in clear",
        ),
        (
            "update customers set (name, id) = (select 'a', 1)",
            "0A000",
            "sub-SELECT",
        ),
        (
            "insert into customers values (1, 1, 'a'), (2, 1, default)",
            "0A000",
            "DEFAULT for column \"name\"",
        ),
        (
            "update customers set tenant_id = default",
            "42501",
            "leaves to its",
        ),
        (
            "with x as (delete from orders returning *) delete from orders",
            "0A000",
            "data-modifying",
        ),
    ] {
        let e = run(sql).unwrap_err();
        assert_eq!(e.sqlstate(), code, "{sql}: {e}");
        assert!(e.to_string().contains(text), "{sql}: {e}");
    }
}

/// A column the insert check reads but the INSERT leaves to its default: a constant default is
/// written explicitly and checked; any other default is refused.
#[test]
fn checked_defaults_are_written_as_constants_or_refused() {
    let with_default = catalog_with_tenant_default;
    // No default: NULL, which the check then sees (and refuses at run time).
    let out = run("insert into customers (id, name) values (1, 'a')").unwrap();
    assert!(
        out.contains(
            r#"INSERT INTO "public"."customers" AS "customers" ("id", "name", "tenant_id") SELECT"#
        ) && out.contains(r#"CAST((NULL) AS INTEGER) AS "tenant_id""#),
        "{out}"
    );
    let one = with_default(Some("1"));
    let out = run_in(
        &one,
        "insert into customers (id, tenant_id, name) values (1, default, 'a')",
    )
    .unwrap();
    assert!(
        out.contains(r#"CAST((1) AS INTEGER) AS "tenant_id""#),
        "{out}"
    );
    let out = run_in(&one, "insert into customers default values").unwrap();
    assert!(
        out.starts_with(
            r#"INSERT INTO "public"."customers" AS "customers" ("tenant_id") SELECT "tenant_id" FROM (SELECT CAST((1) AS INTEGER) AS "tenant_id") AS "portcullis_new" WHERE CASE WHEN ("tenant_id" = 1)"#
        ),
        "{out}"
    );
    for (default, why) in [
        (
            Some("(current_setting('app.tenant'::text))::integer"),
            "not a constant",
        ),
        (None, "leaves to its default; set it explicitly"),
    ] {
        let c = with_default(default);
        for sql in [
            "insert into customers (id, name) values (1, 'a')",
            "insert into customers default values",
            "insert into customers (id, name) select id, name from customers",
        ] {
            let e = run_in(&c, sql).unwrap_err();
            assert_eq!(e.sqlstate(), "42501", "{sql}: {e}");
            assert!(e.to_string().contains(why), "{sql}: {e}");
        }
    }
    let e = run("insert into invoices (id, amount) values (1, 2)").unwrap_err();
    assert!(e.to_string().contains("generated column"), "{e}");
}

#[test]
fn defaults_multi_column_set_and_returning_masks() {
    // DEFAULT in every row of a column: the column is left to its default.
    let out =
        run("insert into customers values (1, 1, 'a', default), (2, 1, 'b', default)").unwrap();
    assert!(
        out.contains(
            r#"INSERT INTO "public"."customers" AS "customers" ("id", "tenant_id", "name") SELECT"#
        ),
        "{out}"
    );
    let out =
        run("update customers set (name, id) = ('a', 2), name = default where id = 1").unwrap();
    assert!(
        out.contains(r#""name" = DEFAULT"#)
            && out.contains(r#""id" = "portcullis_new"."portcullis_set_1""#),
        "{out}"
    );
    // INSERT … SELECT without a column list: the first columns, as many as the SELECT yields.
    let out = run("insert into customers select id, tenant_id from customers").unwrap();
    assert!(
        out.contains(
            r#"INSERT INTO "public"."customers" AS "customers" ("id", "tenant_id") SELECT"#
        ),
        "{out}"
    );
    // A masked column named in RETURNING comes back masked.
    let out = run("update customers c set name = 'x' returning c.ssn, ssn as s, id").unwrap();
    assert!(
        out.contains(r#"RETURNING '***'::TEXT AS "ssn", '***'::TEXT AS "s", id"#),
        "{out}"
    );
}

#[test]
fn upserts_follow_row_security_rules() {
    let out = run(
        "insert into customers as c (id, tenant_id, name) values (1, 1, 'a') \
         on conflict (id) do update set name = excluded.name || c.name where c.id > 0 returning *",
    )
    .unwrap();
    println!("{out}");
    // The conflicting row must be readable and updatable before the agent's WHERE runs on it.
    assert!(
        out.contains(r#"ON CONFLICT("id") DO UPDATE SET ("name") = (SELECT"#),
        "{out}"
    );
    assert!(out.contains("WHERE CASE WHEN (SELECT (\"tenant_id\" = 1) FROM (SELECT \"c\".\"tenant_id\" AS \"tenant_id\") AS \"portcullis_row\") THEN (c.id > 0) ELSE"), "{out}");
    assert!(
        out.contains("conflicts with is not one this agent may update"),
        "{out}"
    );
    let out = run(
        "insert into customers (id, tenant_id, name) values (1, 1, 'a') on conflict do nothing",
    )
    .unwrap();
    assert!(out.ends_with("ON CONFLICT DO NOTHING"), "{out}");
    for (sql, code, text) in [
        (
            "insert into customers (id, tenant_id, name) values (1, 1, 'a') on conflict (id) do update set name = excluded.ssn",
            "42501",
            "ON CONFLICT DO UPDATE names \"ssn\"",
        ),
        (
            "insert into customers (id, tenant_id, name) values (1, 1, 'a') on conflict (id) do update set name = (select customers.ssn)",
            "42501",
            "ON CONFLICT DO UPDATE names \"ssn\"",
        ),
        (
            "insert into customers (id, tenant_id, name) values (1, 1, 'a') on conflict (id) do update set name = 'x' where ssn = '1'",
            "42501",
            "names \"ssn\"",
        ),
        (
            "insert into customers (id, tenant_id, name) values (1, 1, 'a') on conflict (id) do update set name = to_jsonb(excluded)::text",
            "42501",
            "whole-row",
        ),
        (
            "insert into customers (id, tenant_id, name) values (1, 1, 'a') on conflict (id) do update set ssn = 'x'",
            "42501",
            "may not read in clear",
        ),
        (
            "insert into customers (id, tenant_id, name) values (1, 1, 'a') on conflict (nope) do nothing",
            "42501",
            "not known",
        ),
        (
            "insert into customers (id, tenant_id, name) values (1, 1, 'a') on conflict do update set name = 'x'",
            "42601",
            "requires",
        ),
    ] {
        let e = run(sql).unwrap_err();
        assert_eq!(e.sqlstate(), code, "{sql}: {e}");
        assert!(e.to_string().contains(text), "{sql}: {e}");
    }
}

#[test]
fn row_locks_lock_only_returned_rows_readable_and_updatable() {
    let out = run(
        "select * from customers c where c.name = 'x' order by id limit 1 for update skip locked",
    )
    .unwrap();
    println!("{out}");
    // The fence: both policies, with each row's address; the table joined back on it and only
    // that join locked; `*` expanded to the fence's columns.
    assert!(out.starts_with(r#"SELECT "c"."id", "c"."tenant_id", "c"."name", "c"."ssn" FROM (SELECT tableoid AS portcullis_tableoid, ctid AS portcullis_ctid"#), "{out}");
    assert!(out.contains(r#", "public"."customers" AS "portcullis_lock_1" ("portcullis_c1", "portcullis_c2", "portcullis_c3", "portcullis_c4") WHERE (c.name = 'x') AND "portcullis_lock_1"."tableoid" = "c"."portcullis_tableoid" AND "portcullis_lock_1"."ctid" = "c"."portcullis_ctid" AND (SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute WHERE attrelid = CAST('"public"."customers"' AS pg_catalog.regclass) AND attnum > 0 AND NOT attisdropped) = 4"#), "{out}");
    assert!(
        out.ends_with(r#"FOR UPDATE OF "portcullis_lock_1" SKIP LOCKED"#),
        "{out}"
    );
    let out = run(
        "select o.id from customers c join orders o on o.customer_id = c.id for share of c nowait",
    )
    .unwrap();
    assert!(
        out.ends_with(r#"FOR SHARE OF "portcullis_lock_1" NOWAIT"#),
        "{out}"
    );
    for (sql, code, text) in [
        (
            "select * from orders o left join customers c on c.id = o.customer_id for update",
            "0A000",
            "outer",
        ),
        (
            "select * from (select * from customers) s for update",
            "0A000",
            "without OF",
        ),
        (
            "select 1 from customers union select 1 from customers for update",
            "0A000",
            "set operation",
        ),
        (
            "select portcullis_lock_1.ssn from customers for update",
            "42501",
            "reserved",
        ),
        (
            "select 1 from customers c(a, b) for update",
            "0A000",
            "column aliases",
        ),
        (
            "select xmax from customers for update",
            "42501",
            "system column",
        ),
    ] {
        let e = run(sql).unwrap_err();
        assert_eq!(e.sqlstate(), code, "{sql}: {e}");
        assert!(e.to_string().contains(text), "{sql}: {e}");
    }
}

#[test]
fn tablesample_is_drawn_inside_the_fence() {
    let out =
        run("select name from customers c tablesample bernoulli (50) repeatable (7)").unwrap();
    assert!(
        out.contains(r#"FROM "public"."customers" TABLESAMPLE BERNOULLI (50) REPEATABLE (7) WHERE ("tenant_id" = 1) OFFSET 0) AS "c""#),
        "{out}"
    );
    let e = run("with w as (select 1) select * from w tablesample system (1)").unwrap_err();
    assert_eq!(e.sqlstate(), "0A000", "{e}");
}

/// A read-only WITH in front of a write is inlined where it is named, then fenced as any
/// subquery; the target is never a WITH query.
#[test]
fn read_only_with_in_front_of_a_write_is_inlined() {
    let out = run("with c as (select id from customers where name = 'a') \
         update customers set name = 'b' where id in (select id from c)")
    .unwrap();
    assert!(!out.contains("WITH"), "{out}");
    assert!(
        out.contains(r#"WHERE (id IN (SELECT id FROM (SELECT id FROM (SELECT "id", "tenant_id", "name", '***'::TEXT AS "ssn" FROM "public"."customers" WHERE (("tenant_id" = 1)) AND ("name" = 'a') OFFSET 0) AS "customers" WHERE name = 'a') c))"#),
        "{out}"
    );
    // Column lists, aliases, earlier WITH queries inside later ones, INSERT … SELECT, DELETE.
    let out = run(
        "with a(x) as (select id from customers), b as (select x from a) \
         insert into customers (id, tenant_id, name) select x, 1, 'n' from b as z",
    )
    .unwrap();
    assert!(out.contains(r#") a (x)) AS z"#), "{out}");
    let out =
        run("with c as (select 1 as id) delete from orders o using c where o.id = c.id").unwrap();
    assert!(
        out.contains(r#"AS "o", (SELECT 1 AS id) c WHERE (o.id = c.id)"#),
        "{out}"
    );
    // A nested WITH of the same name shadows the outer one.
    let out = run("with c as (select 1 as id) delete from orders where id in \
         (with c as (select 2 as id) select id from c)")
    .unwrap();
    assert!(
        out.contains(r#"WITH c AS (SELECT 2 AS id) SELECT id FROM "c""#),
        "{out}"
    );
    for (sql, code, text) in [
        (
            "with recursive r(n) as (select 1 union all select n + 1 from r where n < 3) \
             delete from orders where id in (select n from r)",
            "0A000",
            "WITH RECURSIVE",
        ),
        (
            "with d as (delete from orders returning id) delete from orders where id in (select id from d)",
            "0A000",
            "data-modifying",
        ),
        (
            "with customers as (select * from customers) update orders set total = 1",
            "42501",
            "refers to itself",
        ),
        (
            "with c(x) as (select id from customers) delete from orders using c as d(y)",
            "0A000",
            "renaming the columns",
        ),
        // The target is the table, never the WITH query of that name.
        (
            "with customers as (select 1 as id) update customers set ssn = 'x'",
            "42501",
            "may not read in clear",
        ),
    ] {
        let e = run(sql).unwrap_err();
        assert_eq!(e.sqlstate(), code, "{sql}: {e}");
        assert!(e.to_string().contains(text), "{sql}: {e}");
    }
}

#[test]
fn merge_is_checked_action_by_action() {
    let out = run(
        "merge into customers c using (select 1 as id, 'n' as nm) s on c.id = s.id \
         when matched and c.name <> s.nm then update set name = s.nm \
         when not matched then insert (id, tenant_id, name) values (s.id, 1, s.nm)",
    )
    .unwrap();
    // Hidden rows never match, and the agent's ON never runs on them.
    assert!(
        out.contains(r#"ON CASE WHEN (SELECT ("tenant_id" = 1) FROM (SELECT "c"."tenant_id" AS "tenant_id") AS "portcullis_row") THEN (c.id = s.id) ELSE FALSE END"#),
        "{out}"
    );
    assert!(
        out.contains("WHEN MATCHED AND CASE WHEN (c.name <> s.nm) IS NOT TRUE THEN FALSE WHEN"),
        "{out}"
    );
    assert!(
        out.contains("the row this MERGE matched is not one this agent may update"),
        "{out}"
    );
    assert!(
        out.contains(r#"THEN INSERT ("id", "tenant_id", "name") VALUES (CAST((s.id) AS INTEGER), CAST((1) AS INTEGER), CAST((s.nm) AS TEXT))"#),
        "{out}"
    );
    for (sql, code, text) in [
        (
            "merge into customers c using (select 1 as id) s on c.id = s.id and c.ssn = 'x' when matched then do nothing",
            "42501",
            "reads in clear",
        ),
        (
            "merge into customers c using (select 1 as id) s on c.id = s.id when matched then delete",
            "42501",
            "no policy permits delete",
        ),
        (
            "merge into customers c using (select 1 as id) s on c.id = s.id when not matched then insert (id, tenant_id, name) values (s.id, 1, random()::text)",
            "0A000",
            "function calls in MERGE",
        ),
        (
            "merge into customers c using (select 1 as id) s on c.id = s.id when not matched then insert (id, tenant_id, name) values (s.id, length(set_config('x.n', current_setting('x.n') || 'x', false)), 'n')",
            "0A000",
            "function calls in MERGE",
        ),
        (
            "merge into customers c using (select 1 as id) s on c.id = s.id when not matched then insert (id, tenant_id, name) values (s.id, (select 1), 'n')",
            "0A000",
            "subqueries in MERGE",
        ),
        // The update check of a MERGE (as of an upsert) cannot read a generated column.
        (
            "merge into invoices i using (select 1 as id) s on i.id = s.id when matched then update set amount = 5",
            "42501",
            "generated column",
        ),
        // Bare names must be target columns (a column added since the catalog was read, or a
        // system column, would be read unfenced): the source's are named qualified.
        (
            "merge into customers c using (select 1 as k) s on c.id = k when matched then do nothing",
            "42501",
            "names \"k\"",
        ),
        (
            "merge into customers c using (select 1 as id) s on c.id = s.id when matched and xmin::text <> '' then do nothing",
            "42501",
            "names \"xmin\"",
        ),
        (
            "merge into customers c using (select 1 as id) s on c.id = s.id when matched then update set name = c::text",
            "42501",
            "whole-row",
        ),
        (
            "merge into customers c using unprotected u on c.id = u.id when matched then do nothing",
            "42501",
            "not covered",
        ),
    ] {
        let e = run(sql).unwrap_err();
        assert_eq!(e.sqlstate(), code, "{sql}: {e}");
        assert!(e.to_string().contains(text), "{sql}: {e}");
    }
}

/// A WITH query that writes, in front of a query (LangGraph's store refreshes TTLs so), is
/// checked as that write alone would be; the read-only WITH queries before it are inlined.
#[test]
fn writing_with_queries_in_front_of_a_query_are_checked_writes() {
    let out = run(
        "with passed_in as (select unnest($1::int[]) as id), \
         updated as (update customers c set name = 'x' from passed_in p where c.id = p.id returning c.id) \
         select c.id, c.name from customers c join passed_in p on c.id = p.id",
    )
    .unwrap();
    assert!(
        out.starts_with(r#"WITH passed_in AS (SELECT unnest($1::INT[]) AS id), updated AS (UPDATE "public"."customers" AS "c" SET "name" = "portcullis_new"."portcullis_set_0" FROM (SELECT "c"."portcullis_tableoid""#),
        "{out}"
    );
    assert!(out.contains("portcullis-policy-violation"), "{out}");
    assert!(
        out.contains(&format!("FROM {CUSTOMERS} AS \"c\" JOIN \"passed_in\"")),
        "{out}"
    );
    for (sql, code) in [
        ("with d as (delete from customers returning id) select count(*) from d", "42501"),
        (
            "with a as (delete from orders returning id), b as (delete from orders where id in (select id from a)) select 1",
            "0A000",
        ),
        (
            "with recursive a as (delete from orders returning id) select 1",
            "0A000",
        ),
        (
            "with a as (delete from orders returning id), b as (select id from a), \
             c as (delete from orders where id in (select id from b)) select 1",
            "0A000",
        ),
        (
            "with a as (update customers set ssn = 'x' returning id) select 1",
            "42501",
        ),
        // A name that refers to a later WITH query is a table to PostgreSQL: ambiguous.
        (
            "with u as (delete from orders where id in (select id from later) returning id), \
             later as (select 1 as id) select 1",
            "42501",
        ),
    ] {
        let e = run(sql).unwrap_err();
        assert_eq!(e.sqlstate(), code, "{sql}: {e}");
    }
    let out =
        run("with d as (delete from orders where total > 5 returning id) select count(*) from d")
            .unwrap();
    assert!(
        out.starts_with(r#"WITH d AS (DELETE FROM "public"."orders""#),
        "{out}"
    );
}

#[test]
fn three_part_names_with_the_current_database_are_read_as_postgresql_reads_them() {
    let c = catalog().with_database("shop".into());
    let out = run_in(
        &c,
        "select shop.public.customers.id from shop.public.customers",
    )
    .unwrap();
    assert_eq!(
        out,
        format!(r#"SELECT customers.id FROM {CUSTOMERS} AS "customers""#)
    );
    let out = run_in(
        &c,
        "select * from shop.public.customers c, shop.public.orders",
    )
    .unwrap();
    assert!(
        out.contains(r#"AS "c""#) && out.contains(r#"AS "orders""#),
        "{out}"
    );
    let out = run_in(
        &c,
        "select 1 as k, shop.public.customers.* from shop.public.customers \
         union all select 2, shop.public.customers.* from shop.public.customers",
    )
    .unwrap();
    assert_eq!(out.matches("customers.*").count(), 2, "{out}");
    assert!(!out.contains("shop"), "{out}");
    let e = run_in(&c, "select * from other.public.customers").unwrap_err();
    assert_eq!(e.sqlstate(), "42501", "{e}");
    // Without a known database name, nothing is stripped.
    assert!(run("select * from shop.public.customers").is_err());
}

#[test]
fn search_path_changes_are_reported_and_checked() {
    let catalog = catalog().with_search_path(vec!["public".into()]);
    let path = vec!["public".to_string()];
    let ctx = Context {
        catalog: &catalog,
        search_path: &path,
        policies: &Fixed,
        agent: "support-bot",
    };
    let changes = |sql: &str| {
        rewrite(sql, Protocol::Simple, &ctx)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .search_path_changes
    };
    for sql in [
        "set search_path to public",
        "set search_path = pg_catalog, public",
        "set local search_path to 'public'",
        "set search_path to default",
        "reset search_path",
        "reset all",
        "discard all",
        "set search_path to public; select 1",
    ] {
        assert!(changes(sql), "{sql}");
    }
    for sql in ["select 1", "set statement_timeout = 5", "show search_path"] {
        assert!(!changes(sql), "{sql}");
    }
    for (sql, state) in [
        ("set search_path to public, pg_catalog", "42501"),
        ("set search_path to \"$user\", public", "42501"),
        ("set search_path to pg_temp", "42501"),
        ("set search_path to nosuch", "42501"),
        (
            "select set_config('search_path', x, false) from (select 'public' as x) s",
            "42501",
        ),
        (
            "set (search_path, statement_timeout) = (public, 5)",
            "42601",
        ),
    ] {
        let e = rewrite(sql, Protocol::Simple, &ctx).unwrap_err();
        assert_eq!(e.sqlstate(), state, "{sql}: {e}");
    }
}

/// Statement shapes for the shape cache's differential test: `{i}` an `int4` constant, `{b}`
/// an `int8` one, `{n}` a decimal, `{s}` a string, `{g}` a setting's name. `Some(true)`: the
/// template must be used (some constants are in data positions); `Some(false)`: it must not
/// (none are); `None`: either.
const SHAPES: &[(&str, Option<bool>)] = &[
    (
        "select id, name, ssn from customers where id = {i}",
        Some(true),
    ),
    (
        "SELECT name FROM customers WHERE tenant_id = {i} AND name = {s}",
        Some(true),
    ),
    (
        "select c.name, o.total from customers c join orders o on o.customer_id = c.id \
         where o.total > {n} and c.id in ({i}, {i}, {i})",
        Some(true),
    ),
    (
        "select id from customers where name like {s} or id between {i} and -{i} \
         limit {i} offset {i}",
        Some(true),
    ),
    (
        "select count(*) from orders where total >= {n} and id <> {b}",
        Some(true),
    ),
    (
        "select id from customers where id = (select customer_id from orders where id = {i} \
         limit {i})",
        Some(true),
    ),
    (
        "select id from customers c where exists (select 1 from orders o \
         where o.customer_id = c.id and o.total < {n} + {n})",
        Some(true),
    ),
    (
        "select id from customers where lower(name) = {s} and name = lower({s})",
        Some(true),
    ),
    (
        "select id, {s} as tag from customers where id = {i}",
        Some(true),
    ),
    ("select id from customers order by 1 limit {i}", Some(true)),
    (
        "select id from invoices where amount + {i} > {i}",
        Some(true),
    ),
    (
        "select id from customers where id = {i}; select id from orders where total = {n}",
        Some(true),
    ),
    (
        "select id from customers where name = {s}::text and {s} = name",
        Some(true),
    ),
    (
        "update customers set name = {s} where id = {i}",
        Some(false),
    ),
    (
        "insert into customers (id, tenant_id, name) values ({i}, 1, {s})",
        Some(false),
    ),
    (
        "select id from customers where id = {i} for update",
        Some(true),
    ),
    ("select pg_read_file({s})", Some(false)),
    ("select set_config({g}, {s}, false)", None),
    (
        "select id from customers where current_setting({g}) = {s}",
        Some(true),
    ),
    (
        "insert into customers (id, tenant_id, name) values ({i}, {i}, {s})",
        Some(false),
    ),
];

/// `shape` with its holes filled from `values` in turn.
fn instantiate(shape: &str, values: &[String]) -> String {
    let mut out = String::new();
    let mut rest = shape;
    let mut values = values.iter();
    while let Some(at) = rest.find('{') {
        out.push_str(&rest[..at]);
        out.push_str(values.next().expect("enough values"));
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    out
}

/// A constant of each hole's kind in `shape`, as a client would spell it.
fn constants(shape: &str) -> impl proptest::strategy::Strategy<Value = Vec<String>> {
    use proptest::prelude::*;
    let kinds: Vec<char> = shape
        .match_indices('{')
        .map(|(at, _)| shape.as_bytes()[at + 1] as char)
        .collect();
    kinds
        .into_iter()
        .map(|kind| -> BoxedStrategy<String> {
            match kind {
                'i' => prop_oneof![0i32..10, Just(i32::MAX), 0i32..i32::MAX]
                    .prop_map(|v| v.to_string())
                    .boxed(),
                'b' => (i32::MAX as i64 + 2..i64::MAX)
                    .prop_map(|v| v.to_string())
                    .boxed(),
                'n' => prop_oneof![
                    (0u32..100_000, 0u32..100).prop_map(|(a, b)| format!("{a}.{b}")),
                    (1u32..9, 0u32..20).prop_map(|(a, e)| format!("{a}e{e}")),
                    Just(".5".to_string()),
                ]
                .boxed(),
                's' => prop::collection::vec(
                    prop_oneof![
                        Just("'"),
                        Just("''"),
                        Just("\\"),
                        Just("%"),
                        Just("x"),
                        Just("é"),
                        Just(" "),
                        Just("\n"),
                        Just("--"),
                        Just("1"),
                        Just("Portcullis_Sentinel_0_q"),
                    ],
                    0..6,
                )
                .prop_map(|parts| format!("'{}'", parts.concat().replace('\'', "''")))
                .boxed(),
                'g' => prop_oneof![
                    Just("'application_name'"),
                    Just("'work_mem'"),
                    Just("'role'"),
                    Just("'search_path'"),
                    Just("'data_directory'"),
                    Just("'portcullis.hash_key'"),
                ]
                .prop_map(String::from)
                .boxed(),
                other => panic!("hole kind {other}"),
            }
        })
        .collect::<Vec<_>>()
}

fn checked(sql: &str) -> Option<rewriter::Checked> {
    let path = vec!["public".to_string()];
    let catalog = catalog_with(Some("NULL"), &["current_setting", "set_config"]);
    let ctx = Context {
        catalog: &catalog,
        search_path: &path,
        policies: &Fixed,
        agent: "support-bot",
    };
    let r = rewrite(sql, Protocol::Simple, &ctx).ok()?;
    let reads: Vec<String> = r
        .reads
        .iter()
        .map(|read| format!("{} {:?}", read.entity_type, read.policy))
        .collect();
    Some(rewriter::Checked {
        sql: r.sql,
        statements: r.statements,
        shape: 0,
        prepared: r.prepared,
        search_path_changes: r.search_path_changes,
        basis: Some(Arc::new(serde_json::json!(reads))),
    })
}

/// The shape cache, differentially: for generated pairs of statements of each shape (the
/// second taking each constant from the first or its own, so that pinned constants sometimes
/// match), a template learnt from the first and filled with the second's constants gives
/// exactly the second's fresh rewrite, and is used only where that rewrite succeeds.
#[test]
fn a_filled_template_equals_a_fresh_rewrite() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestCaseError, TestRunner};
    use rewriter::{lift, ShapeCache};
    for &(shape, must_fill) in SHAPES {
        let filled = std::cell::Cell::new(0);
        let mut runner = TestRunner::new(Config {
            cases: 48,
            failure_persistence: None,
            ..Config::default()
        });
        let holes = shape.matches('{').count();
        let strategy = (
            constants(shape),
            constants(shape),
            prop::collection::vec(any::<bool>(), holes),
        );
        runner
            .run(&strategy, |(a, own, mix)| {
                let b: Vec<String> = a
                    .iter()
                    .zip(own)
                    .zip(mix)
                    .map(|((a, own), keep)| if keep { a.clone() } else { own })
                    .collect();
                let (a, b) = (instantiate(shape, &a), instantiate(shape, &b));
                let cache: ShapeCache<()> = ShapeCache::new(1 << 20);
                if let (Some(learnt), Some(lifted)) = (checked(&a), lift(&a)) {
                    cache.learn(&(), "", Protocol::Simple, &lifted, &learnt, checked);
                }
                let Some(lifted) = lift(&b) else {
                    return Ok(());
                };
                if let Some(hit) = cache.get(&(), "", Protocol::Simple, &lifted) {
                    filled.set(filled.get() + 1);
                    let fresh = checked(&b).ok_or_else(|| {
                        TestCaseError::fail(format!(
                            "a template was filled for {b}, which is refused"
                        ))
                    })?;
                    prop_assert_eq!(&hit, &fresh, "{}", b);
                }
                Ok(())
            })
            .unwrap_or_else(|e| panic!("{shape}: {e}"));
        match must_fill {
            Some(true) => assert!(filled.get() > 0, "no template was filled for {shape}"),
            Some(false) => assert_eq!(filled.get(), 0, "a template was filled for {shape}"),
            None => {}
        }
    }
}

/// Under enforcement DEALLOCATE and DISCARD ALL are accepted only as a simple Query, where the
/// proxy accounts for the upstream statements they drop (its idle ones among them).
#[test]
fn deallocate_and_discard_only_as_a_simple_query() {
    let catalog = catalog();
    let path = vec!["public".to_string()];
    let ctx = Context {
        catalog: &catalog,
        search_path: &path,
        policies: &Fixed,
        agent: "support-bot",
    };
    for sql in ["discard all", "deallocate all", "deallocate p"] {
        assert!(rewrite(sql, Protocol::Simple, &ctx).is_ok(), "{sql}");
        let e = rewrite(sql, Protocol::Extended, &ctx).unwrap_err();
        assert_eq!(e.sqlstate(), "0A000", "{sql}: {e}");
    }
}

/// Checked writes are built as sqlparser nodes (not text parsed again); what is forwarded is
/// pinned here, one statement per write form, so a change to the builders that changes the
/// forwarded SQL shows up as a diff to review.
#[test]
fn writes_print_as_they_always_have() {
    for (sql, expected) in WRITE_GOLDEN {
        let out = run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(&out, expected, "{sql}");
    }
}

const WRITE_GOLDEN: &[(&str, &str)] = &[
    (
        r##"insert into customers (id, tenant_id, name) values (1, 1, 'a'), (2, 1, 'b') returning *"##,
        r##"INSERT INTO "public"."customers" AS "customers" ("id", "tenant_id", "name") SELECT "id", "tenant_id", "name" FROM (SELECT CAST("portcullis_source"."id" AS INTEGER) AS "id", CAST("portcullis_source"."tenant_id" AS INTEGER) AS "tenant_id", CAST("portcullis_source"."name" AS TEXT) AS "name" FROM (SELECT * FROM (VALUES (CAST((1) AS INTEGER), CAST((1) AS INTEGER), CAST(('a') AS TEXT)), (CAST((2) AS INTEGER), CAST((1) AS INTEGER), CAST(('b') AS TEXT))) AS "portcullis_source" OFFSET 0) AS "portcullis_source" ("id", "tenant_id", "name")) AS "portcullis_new" WHERE CASE WHEN ("tenant_id" = 1) THEN TRUE ELSE CAST('portcullis-policy-violation: the new row violates the insert policy on public::customers for this agent or would not be readable by it (RETURNING shows it) (policies: tenant-writes, p)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END RETURNING "id", "tenant_id", "name", '***'::TEXT AS "ssn""##,
    ),
    (
        r##"insert into customers (id, tenant_id, name) select id, tenant_id, name from customers"##,
        r##"INSERT INTO "public"."customers" AS "customers" ("id", "tenant_id", "name") SELECT "id", "tenant_id", "name" FROM (SELECT CAST("portcullis_source"."id" AS INTEGER) AS "id", CAST("portcullis_source"."tenant_id" AS INTEGER) AS "tenant_id", CAST("portcullis_source"."name" AS TEXT) AS "name" FROM (SELECT * FROM (SELECT id, tenant_id, name FROM (SELECT "id", "tenant_id", "name", '***'::TEXT AS "ssn" FROM "public"."customers" WHERE ("tenant_id" = 1) OFFSET 0) AS "customers") AS "portcullis_source" OFFSET 0) AS "portcullis_source" ("id", "tenant_id", "name")) AS "portcullis_new" WHERE CASE WHEN ("tenant_id" = 1) THEN TRUE ELSE CAST('portcullis-policy-violation: the new row violates the insert policy on public::customers for this agent (policies: tenant-writes)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END"##,
    ),
    (
        r##"update customers c set name = o.id::text from orders o where o.customer_id = c.id returning *"##,
        r##"UPDATE "public"."customers" AS "c" SET "name" = "portcullis_new"."portcullis_set_0" FROM (SELECT "c"."portcullis_tableoid", "c"."portcullis_ctid", CAST((o.id::TEXT) AS TEXT) AS "portcullis_set_0" FROM (SELECT tableoid AS portcullis_tableoid, ctid AS portcullis_ctid, "id", "tenant_id", "name", '***'::TEXT AS "ssn" FROM "public"."customers" WHERE ("tenant_id" = 1) OFFSET 0) AS "c", (SELECT "id", "customer_id", "total" FROM "public"."orders" WHERE ("total" < 100.0000) OFFSET 0) AS "o" WHERE (o.customer_id = c.id) OFFSET 0) AS "portcullis_new" WHERE "c".tableoid = "portcullis_new"."portcullis_tableoid" AND "c".ctid = "portcullis_new"."portcullis_ctid" AND CASE WHEN NOT ("c".tableoid = "portcullis_new"."portcullis_tableoid" AND "c".ctid = "portcullis_new"."portcullis_ctid") THEN FALSE ELSE CASE WHEN (SELECT ("tenant_id" = 1) FROM (SELECT "c"."tenant_id" AS "tenant_id") AS "portcullis_row") THEN TRUE ELSE CAST('portcullis-policy-violation: the updated row violates the update policy on public::customers for this agent or would not be readable by it (RETURNING shows it) (policies: tenant-writes, p)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END END RETURNING "id", "tenant_id", "name", '***'::TEXT AS "ssn""##,
    ),
    (
        r##"delete from orders o using customers c where o.customer_id = c.id returning o.id"##,
        r##"DELETE FROM "public"."orders" AS "o" USING (SELECT "o"."portcullis_tableoid", "o"."portcullis_ctid" FROM (SELECT tableoid AS portcullis_tableoid, ctid AS portcullis_ctid, "id", "customer_id", "total" FROM "public"."orders" WHERE ("total" < 100.0000) OFFSET 0) AS "o", (SELECT "id", "tenant_id", "name", '***'::TEXT AS "ssn" FROM "public"."customers" WHERE ("tenant_id" = 1) OFFSET 0) AS "c" WHERE (o.customer_id = c.id) OFFSET 0) AS "portcullis_match" WHERE "o".tableoid = "portcullis_match"."portcullis_tableoid" AND "o".ctid = "portcullis_match"."portcullis_ctid" RETURNING o.id"##,
    ),
    (
        r##"insert into customers as c (id, tenant_id, name) values (1, 1, 'a') on conflict (id) do update set name = excluded.name || c.name where c.id > 0 returning *"##,
        r##"INSERT INTO "public"."customers" AS "c" ("id", "tenant_id", "name") SELECT "id", "tenant_id", "name" FROM (SELECT CAST("portcullis_source"."id" AS INTEGER) AS "id", CAST("portcullis_source"."tenant_id" AS INTEGER) AS "tenant_id", CAST("portcullis_source"."name" AS TEXT) AS "name" FROM (SELECT * FROM (VALUES (CAST((1) AS INTEGER), CAST((1) AS INTEGER), CAST(('a') AS TEXT))) AS "portcullis_source" OFFSET 0) AS "portcullis_source" ("id", "tenant_id", "name")) AS "portcullis_new" WHERE CASE WHEN ("tenant_id" = 1) THEN TRUE ELSE CAST('portcullis-policy-violation: the new row violates the insert policy on public::customers for this agent or would not be readable by it (RETURNING shows it) (policies: tenant-writes, p)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END ON CONFLICT("id") DO UPDATE SET ("name") = (SELECT "portcullis_new"."portcullis_set_0" FROM (SELECT CAST((excluded.name || c.name) AS TEXT) AS "portcullis_set_0" OFFSET 0) AS "portcullis_new" WHERE CASE WHEN (SELECT ("tenant_id" = 1) FROM (SELECT "c"."tenant_id" AS "tenant_id") AS "portcullis_row") THEN TRUE ELSE CAST('portcullis-policy-violation: the updated row violates the update policy on public::customers for this agent or would not be readable by it (RETURNING shows it) (policies: tenant-writes, p)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END) WHERE CASE WHEN (SELECT ("tenant_id" = 1) FROM (SELECT "c"."tenant_id" AS "tenant_id") AS "portcullis_row") THEN (c.id > 0) ELSE CAST('portcullis-policy-violation: the row this INSERT conflicts with is not one this agent may update under the update policy on public::customers (policies: tenant-writes, p)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END RETURNING "id", "tenant_id", "name", '***'::TEXT AS "ssn""##,
    ),
    (
        r##"insert into customers (id, tenant_id, name) values (1, 1, 'a') on conflict do nothing"##,
        r##"INSERT INTO "public"."customers" AS "customers" ("id", "tenant_id", "name") SELECT "id", "tenant_id", "name" FROM (SELECT CAST("portcullis_source"."id" AS INTEGER) AS "id", CAST("portcullis_source"."tenant_id" AS INTEGER) AS "tenant_id", CAST("portcullis_source"."name" AS TEXT) AS "name" FROM (SELECT * FROM (VALUES (CAST((1) AS INTEGER), CAST((1) AS INTEGER), CAST(('a') AS TEXT))) AS "portcullis_source" OFFSET 0) AS "portcullis_source" ("id", "tenant_id", "name")) AS "portcullis_new" WHERE CASE WHEN ("tenant_id" = 1) THEN TRUE ELSE CAST('portcullis-policy-violation: the new row violates the insert policy on public::customers for this agent (policies: tenant-writes)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END ON CONFLICT DO NOTHING"##,
    ),
    (
        r##"merge into customers c using (select 1 as id, 'n' as nm) s on c.id = s.id when matched and c.name <> s.nm then update set name = s.nm when not matched then insert (id, tenant_id, name) values (s.id, 1, s.nm)"##,
        r##"MERGE INTO "public"."customers" AS "c" USING (SELECT 1 AS id, 'n' AS nm) s ON CASE WHEN (SELECT ("tenant_id" = 1) FROM (SELECT "c"."tenant_id" AS "tenant_id") AS "portcullis_row") THEN (c.id = s.id) ELSE FALSE END WHEN MATCHED AND CASE WHEN (c.name <> s.nm) IS NOT TRUE THEN FALSE WHEN (SELECT ("tenant_id" = 1) FROM (SELECT "c"."tenant_id" AS "tenant_id") AS "portcullis_row") THEN TRUE ELSE CAST('portcullis-policy-violation: the row this MERGE matched is not one this agent may update under the update policy on public::customers (policies: tenant-writes, p)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END THEN UPDATE SET ("name") = (SELECT "portcullis_new"."portcullis_set_0" FROM (SELECT CAST((s.nm) AS TEXT) AS "portcullis_set_0" OFFSET 0) AS "portcullis_new" WHERE CASE WHEN (SELECT ("tenant_id" = 1) FROM (SELECT "c"."tenant_id" AS "tenant_id") AS "portcullis_row") THEN TRUE ELSE CAST('portcullis-policy-violation: the updated row violates the update policy on public::customers for this agent (policies: tenant-writes)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END) WHEN NOT MATCHED AND CASE WHEN TRUE IS NOT TRUE THEN FALSE ELSE CASE WHEN (SELECT ("tenant_id" = 1) FROM (SELECT CAST((1) AS INTEGER) AS "tenant_id") AS "portcullis_row") THEN TRUE ELSE CAST('portcullis-policy-violation: the new row violates the insert policy on public::customers for this agent (policies: tenant-writes)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END END THEN INSERT ("id", "tenant_id", "name") VALUES (CAST((s.id) AS INTEGER), CAST((1) AS INTEGER), CAST((s.nm) AS TEXT))"##,
    ),
    (
        r##"merge into orders o using (select 1 as id) s on o.id = s.id when matched and o.total > 5 then delete when not matched then do nothing"##,
        r##"MERGE INTO "public"."orders" AS "o" USING (SELECT 1 AS id) s ON CASE WHEN (SELECT ("total" < 100.0000) FROM (SELECT "o"."total" AS "total") AS "portcullis_row") THEN (o.id = s.id) ELSE FALSE END WHEN MATCHED AND CASE WHEN (o.total > 5) IS NOT TRUE THEN FALSE WHEN TRUE THEN TRUE ELSE CAST('portcullis-policy-violation: the row this MERGE matched is not one this agent may delete under the delete policy on public::orders (policies: tenant-writes)' || pg_catalog."left"(pg_catalog.random()::TEXT, 0) AS pg_catalog.int4) = 0 END THEN DELETE WHEN NOT MATCHED AND TRUE THEN DO NOTHING"##,
    ),
];
