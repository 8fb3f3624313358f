//! The fenced view of one protected relation: `(SELECT <columns or masks> FROM "s"."t" WHERE
//! <row filter> OFFSET 0)`. `OFFSET 0` keeps PostgreSQL from flattening the subquery, so no
//! outer expression is evaluated on a row the filter excludes; denied columns are left out,
//! masked ones replaced by an expression of the same type.

use policies::{ColumnRule, Filter, Mask};
use sqlparser::ast::{BinaryOperator, Expr, ObjectName, Query, SelectItem};

use crate::catalog::{Column, Relation};
use crate::nodes::{self, binary, case_when, cast, catalog_call, column, nested, number, string};
use crate::policy::TablePolicy;
use crate::sql_filter;
use crate::Refusal;

/// The fence of `relation` under `policy`.
pub fn build(relation: &Relation, policy: &TablePolicy) -> Result<Box<Query>, Refusal> {
    Ok(Box::new(nodes::fenced_select(
        projection(relation, policy)?,
        table_name(relation),
        sql_filter::expr(&policy.filter, relation)?,
    )))
}

/// The fence of a write's target: the rows both `policy` (reading) and `write` (the write
/// action) allow, masked, with the row's address as `portcullis_tableoid`/`portcullis_ctid`
/// (the write joins back to the table on it).
pub fn build_for_write(
    relation: &Relation,
    policy: &TablePolicy,
    write: &Filter,
) -> Result<Box<Query>, Refusal> {
    let filter = Filter::and(vec![policy.filter.clone(), write.clone()]);
    let address = |name: &str, alias: &str| SelectItem::ExprWithAlias {
        expr: Expr::Identifier(sqlparser::ast::Ident::new(name)),
        alias: sqlparser::ast::Ident::new(alias),
    };
    let mut items = vec![
        address("tableoid", "portcullis_tableoid"),
        address("ctid", "portcullis_ctid"),
    ];
    items.extend(projection(relation, policy)?);
    Ok(Box::new(nodes::fenced_select(
        items,
        table_name(relation),
        sql_filter::expr(&filter, relation)?,
    )))
}

/// `"schema"."name"`.
fn table_name(relation: &Relation) -> ObjectName {
    ObjectName::from(vec![
        nodes::ident(&relation.schema),
        nodes::ident(&relation.name),
    ])
}

/// The readable columns of `relation` as select-list items over its columns (unqualified):
/// visible ones as they are, masked ones as their mask, denied ones left out.
pub fn projection(relation: &Relation, policy: &TablePolicy) -> Result<Vec<SelectItem>, Refusal> {
    let mut projection = Vec::new();
    for col in &relation.columns {
        match column_value(relation, policy, col)? {
            Some(Readable::Column) => projection.push(SelectItem::UnnamedExpr(column(&col.name))),
            Some(Readable::Masked(value)) => projection.push(nodes::aliased(*value, &col.name)),
            None => {}
        }
    }
    if projection.is_empty() {
        return Err(Refusal::Forbidden(format!(
            "no column of {} is readable under the current policy",
            relation.entity_type()
        )));
    }
    Ok(projection)
}

/// What the agent reads of a column.
pub enum Readable {
    /// The column itself.
    Column,
    /// An expression in its place (a mask, or a mask unless a condition holds).
    Masked(Box<Expr>),
}

/// What the agent reads of `col` (unqualified): the column itself when visible, its mask when
/// masked, nothing when denied.
pub fn column_value(
    relation: &Relation,
    policy: &TablePolicy,
    col: &Column,
) -> Result<Option<Readable>, Refusal> {
    Ok(match policy.column(&col.name) {
        ColumnRule::Visible => Some(Readable::Column),
        ColumnRule::Denied => None,
        ColumnRule::Masked {
            mask,
            unless: Filter::False,
        } => Some(Readable::Masked(Box::new(masked(col, mask)?))),
        ColumnRule::Masked { mask, unless } => Some(Readable::Masked(Box::new(case_when(
            sql_filter::expr(&unless, relation)?,
            column(&col.name),
            masked(col, mask)?,
        )))),
    })
}

/// The masked value of `col`, typed as the column.
fn masked(col: &Column, mask: Mask) -> Result<Expr, Refusal> {
    let ty = nodes::data_type(&col.sql_type)?;
    if !col.is_text() {
        return Ok(cast(nodes::null(), ty));
    }
    let name = || column(&col.name);
    let length = || catalog_call("char_length", false, vec![name()]);
    let stars = |n: Expr| catalog_call("repeat", false, vec![string("*"), n]);
    Ok(match mask {
        Mask::Null => cast(nodes::null(), ty),
        Mask::Redact => cast(string("***"), ty),
        // `(CASE WHEN char_length(c) > 4 THEN repeat('*', char_length(c) - 4) || right(c, 4)
        // ELSE repeat('*', char_length(c)) END)::type`
        Mask::Last4 => cast(
            nested(case_when(
                binary(length(), BinaryOperator::Gt, number("4")),
                binary(
                    stars(binary(length(), BinaryOperator::Minus, number("4"))),
                    BinaryOperator::StringConcat,
                    catalog_call("right", true, vec![name(), number("4")]),
                ),
                stars(length()),
            )),
            ty,
        ),
        // HMAC-SHA256 keyed by the session's `portcullis.mask_key` setting (`key ⊕ ipad` then
        // `key ⊕ opad`, hex), which only Portcullis sets and agents cannot read.
        Mask::Hash => {
            let key = || {
                catalog_call(
                    "decode",
                    false,
                    vec![
                        catalog_call(
                            "current_setting",
                            false,
                            vec![string("portcullis.mask_key")],
                        ),
                        string("hex"),
                    ],
                )
            };
            let pad =
                |from: &str| catalog_call("substr", true, vec![key(), number(from), number("64")]);
            let sha = |e: Expr| catalog_call("sha256", false, vec![e]);
            let inner = sha(binary(
                pad("1"),
                BinaryOperator::StringConcat,
                catalog_call(
                    "convert_to",
                    false,
                    vec![cast(name(), nodes::text()), string("UTF8")],
                ),
            ));
            cast(
                catalog_call(
                    "encode",
                    false,
                    vec![
                        sha(binary(pad("65"), BinaryOperator::StringConcat, inner)),
                        string("hex"),
                    ],
                ),
                ty,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use policies::{CmpOp, Pattern, Value};

    use super::*;
    use crate::catalog::RelKind;

    fn col(name: &str, sql_type: &str, type_name: &str, category: char) -> Column {
        Column {
            name: name.into(),
            sql_type: sql_type.into(),
            type_name: type_name.into(),
            category,
            generated: false,
            default: None,
        }
    }

    fn relation() -> Relation {
        Relation {
            schema: "Sales".into(),
            name: "order \"lines\"".into(),
            kind: RelKind::Table,
            columns: vec![
                col("id", "integer", "int4", 'N'),
                col("Name", "text", "text", 'S'),
                col("code", "character varying(20)", "varchar", 'S'),
                col("flag", "character(3)", "bpchar", 'S'),
                col("tags", "text[]", "_text", 'A'),
                col("tags3", "character(3)[]", "_bpchar", 'A'),
                col("amount", "numeric(12,2)", "numeric", 'N'),
                col("at", "timestamp with time zone", "timestamptz", 'D'),
                col("day", "date", "date", 'D'),
                col("mood", "\"Mood\"", "Mood", 'E'),
                col("note", "text", "text", 'S'),
                col("secret", "text", "text", 'S'),
            ],
            has_children: false,
        }
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

    /// Every filter form, every mask, a conditional mask and a denied column.
    fn policy() -> TablePolicy {
        let filter = Filter::And(vec![
            cmp("id", CmpOp::Eq, Value::Long(-5)),
            cmp("id", CmpOp::LtEq, Value::Long(i64::MIN)),
            cmp("Name", CmpOp::NotEq, s("O'Brien")),
            cmp("flag", CmpOp::Eq, s("ab")),
            Filter::InSet {
                attr: "code".into(),
                values: vec![s("a"), s("b\\c")],
            },
            Filter::InSet {
                attr: "id".into(),
                values: vec![Value::Long(1), Value::Long(2)],
            },
            Filter::InSet {
                attr: "id".into(),
                values: vec![],
            },
            Filter::Present("Name".into()),
            Filter::Not(Box::new(cmp(
                "at",
                CmpOp::Lt,
                Value::Datetime(1_767_323_045_250),
            ))),
            cmp("day", CmpOp::GtEq, Value::Datetime(-62_200_000_000_000)),
            Filter::Or(vec![
                cmp("amount", CmpOp::Gt, Value::Decimal(-12_345)),
                cmp("amount", CmpOp::Lt, Value::Decimal(7)),
                Filter::True,
                Filter::False,
            ]),
            Filter::SetContains {
                attr: "tags".into(),
                value: s("x"),
            },
            Filter::SetContains {
                attr: "tags".into(),
                value: Value::Datetime(0),
            },
            Filter::SetContainsAny {
                attr: "tags3".into(),
                values: vec![s("a"), s("b")],
            },
            Filter::SetContainsAll {
                attr: "tags".into(),
                values: vec![s("a"), Value::Bool(true)],
            },
            Filter::Like {
                attr: "code".into(),
                pattern: vec![
                    Pattern::Wildcard,
                    Pattern::Char('%'),
                    Pattern::Char('_'),
                    Pattern::Char('\\'),
                    Pattern::Char('\''),
                    Pattern::Char('z'),
                    Pattern::Wildcard,
                ],
            },
        ]);
        let masked = |mask| ColumnRule::Masked {
            mask,
            unless: Filter::False,
        };
        let columns = BTreeMap::from([
            ("id".to_string(), ColumnRule::Visible),
            ("Name".to_string(), masked(Mask::Last4)),
            ("code".to_string(), masked(Mask::Hash)),
            ("flag".to_string(), masked(Mask::Redact)),
            ("tags".to_string(), ColumnRule::Visible),
            ("tags3".to_string(), masked(Mask::Redact)),
            ("amount".to_string(), masked(Mask::Null)),
            ("at".to_string(), ColumnRule::Visible),
            ("day".to_string(), masked(Mask::Hash)),
            (
                "mood".to_string(),
                ColumnRule::Masked {
                    mask: Mask::Redact,
                    unless: cmp("id", CmpOp::Eq, Value::Long(1)),
                },
            ),
            (
                "note".to_string(),
                ColumnRule::Masked {
                    mask: Mask::Last4,
                    unless: Filter::Present("secret".into()),
                },
            ),
            ("secret".to_string(), ColumnRule::Denied),
        ]);
        TablePolicy {
            filter,
            columns: Some(columns),
            determining: vec![],
            row_checks: vec![],
        }
    }

    const READ_FENCE: &str = r#"SELECT "id", (CASE WHEN pg_catalog.char_length("Name") > 4 THEN pg_catalog.repeat('*', pg_catalog.char_length("Name") - 4) || pg_catalog."right"("Name", 4) ELSE pg_catalog.repeat('*', pg_catalog.char_length("Name")) END)::TEXT AS "Name", pg_catalog.encode(pg_catalog.sha256(pg_catalog."substr"(pg_catalog.decode(pg_catalog.current_setting('portcullis.mask_key'), 'hex'), 65, 64) || pg_catalog.sha256(pg_catalog."substr"(pg_catalog.decode(pg_catalog.current_setting('portcullis.mask_key'), 'hex'), 1, 64) || pg_catalog.convert_to("code"::TEXT, 'UTF8'))), 'hex')::CHARACTER VARYING(20) AS "code", '***'::CHARACTER(3) AS "flag", "tags", NULL::CHARACTER(3)[] AS "tags3", NULL::NUMERIC(12,2) AS "amount", "at", NULL::DATE AS "day", CASE WHEN ("id" = 1) THEN "mood" ELSE NULL::"Mood" END AS "mood", CASE WHEN ("secret" IS NOT NULL) THEN "note" ELSE (CASE WHEN pg_catalog.char_length("note") > 4 THEN pg_catalog.repeat('*', pg_catalog.char_length("note") - 4) || pg_catalog."right"("note", 4) ELSE pg_catalog.repeat('*', pg_catalog.char_length("note")) END)::TEXT END AS "note" FROM "Sales"."order ""lines""" WHERE (("id" = -5) AND ("id" <= -9223372036854775808) AND ("Name" <> 'O''Brien') AND ("flag"::TEXT = 'ab') AND ("code" IN ('a', 'b\c')) AND ("id" IN (1, 2)) AND (CASE WHEN "id" IS NULL THEN NULL ELSE false END) AND ("Name" IS NOT NULL) AND (NOT ("at" < '2026-01-02 03:04:05.250+00'::TIMESTAMPTZ)) AND ("day" >= '0003-12-17 14:13:20.000 BC'::TIMESTAMP) AND (("amount" > -1.2345) OR ("amount" < 0.0007) OR true OR false) AND ('x' = ANY("tags")) AND ('1970-01-01 00:00:00.000+00'::TIMESTAMPTZ = ANY("tags")) AND ("tags3"::TEXT[] && ARRAY['a', 'b']::TEXT[]) AND ("tags" @> ARRAY['a', true]::TEXT[]) AND ("code"::TEXT LIKE '%\%\_\\'z%' ESCAPE '\')) OFFSET 0"#;
    const WRITE_FENCE: &str = r#"SELECT tableoid AS portcullis_tableoid, ctid AS portcullis_ctid, "id", (CASE WHEN pg_catalog.char_length("Name") > 4 THEN pg_catalog.repeat('*', pg_catalog.char_length("Name") - 4) || pg_catalog."right"("Name", 4) ELSE pg_catalog.repeat('*', pg_catalog.char_length("Name")) END)::TEXT AS "Name", pg_catalog.encode(pg_catalog.sha256(pg_catalog."substr"(pg_catalog.decode(pg_catalog.current_setting('portcullis.mask_key'), 'hex'), 65, 64) || pg_catalog.sha256(pg_catalog."substr"(pg_catalog.decode(pg_catalog.current_setting('portcullis.mask_key'), 'hex'), 1, 64) || pg_catalog.convert_to("code"::TEXT, 'UTF8'))), 'hex')::CHARACTER VARYING(20) AS "code", '***'::CHARACTER(3) AS "flag", "tags", NULL::CHARACTER(3)[] AS "tags3", NULL::NUMERIC(12,2) AS "amount", "at", NULL::DATE AS "day", CASE WHEN ("id" = 1) THEN "mood" ELSE NULL::"Mood" END AS "mood", CASE WHEN ("secret" IS NOT NULL) THEN "note" ELSE (CASE WHEN pg_catalog.char_length("note") > 4 THEN pg_catalog.repeat('*', pg_catalog.char_length("note") - 4) || pg_catalog."right"("note", 4) ELSE pg_catalog.repeat('*', pg_catalog.char_length("note")) END)::TEXT END AS "note" FROM "Sales"."order ""lines""" WHERE (("id" = -5) AND ("id" <= -9223372036854775808) AND ("Name" <> 'O''Brien') AND ("flag"::TEXT = 'ab') AND ("code" IN ('a', 'b\c')) AND ("id" IN (1, 2)) AND (CASE WHEN "id" IS NULL THEN NULL ELSE false END) AND ("Name" IS NOT NULL) AND (NOT ("at" < '2026-01-02 03:04:05.250+00'::TIMESTAMPTZ)) AND ("day" >= '0003-12-17 14:13:20.000 BC'::TIMESTAMP) AND (("amount" > -1.2345) OR ("amount" < 0.0007) OR true OR false) AND ('x' = ANY("tags")) AND ('1970-01-01 00:00:00.000+00'::TIMESTAMPTZ = ANY("tags")) AND ("tags3"::TEXT[] && ARRAY['a', 'b']::TEXT[]) AND ("tags" @> ARRAY['a', true]::TEXT[]) AND ("code"::TEXT LIKE '%\%\_\\'z%' ESCAPE '\') AND ("id" >= 3)) OFFSET 0"#;

    #[test]
    fn fences_print_as_they_always_have() {
        let rel = relation();
        let read = build(&rel, &policy()).unwrap().to_string();
        let write = build_for_write(&rel, &policy(), &cmp("id", CmpOp::GtEq, Value::Long(3)))
            .unwrap()
            .to_string();
        assert_eq!(read, READ_FENCE);
        assert_eq!(write, WRITE_FENCE);
    }
}
