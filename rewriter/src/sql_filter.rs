//! A [`Filter`] as a SQL boolean expression over one relation's columns, with the same
//! three-valued meaning as `Filter::eval` (a missing value is NULL, and only TRUE admits).
//! Constants are rendered as literals of the column's type, so comparisons never depend on
//! session settings (datetimes are absolute UTC instants).

use policies::{CmpOp, Filter, Pattern, Value};
use sqlparser::ast::{BinaryOperator, DataType, Expr};

use crate::catalog::{Column, Relation};
use crate::nodes::{self, binary, boolean, cast, column as col_expr, nested, null, string};
use crate::Refusal;

/// `filter` for `relation`'s columns (unqualified, quoted), as SQL text (spelled as everything
/// forwarded is): what audit records and `portcullis explain` show.
pub fn render(filter: &Filter, relation: &Relation) -> Result<String, Refusal> {
    crate::lexical::to_sql(&expr(filter, relation)?)
}

fn column<'r>(relation: &'r Relation, attr: &str) -> Result<&'r Column, Refusal> {
    relation
        .columns
        .iter()
        .find(|c| c.name == attr)
        .ok_or_else(|| {
            Refusal::Forbidden(format!(
                "the policy for {} refers to column {attr:?}, which the table does not have \
                 (re-run `portcullis schema import`)",
                relation.entity_type()
            ))
        })
}

/// `filter` as a boolean expression over `rel`'s columns (unqualified, quoted).
pub fn expr(f: &Filter, rel: &Relation) -> Result<Expr, Refusal> {
    Ok(match f {
        Filter::True => boolean(true),
        Filter::False => boolean(false),
        Filter::And(parts) | Filter::Or(parts) => {
            let op = if matches!(f, Filter::And(_)) {
                BinaryOperator::And
            } else {
                BinaryOperator::Or
            };
            let mut parts = parts.iter().map(|p| expr(p, rel));
            let Some(first) = parts.next() else {
                // An empty conjunction is true, an empty disjunction false.
                return Ok(boolean(op == BinaryOperator::And));
            };
            let mut joined = first?;
            for p in parts {
                joined = binary(joined, op.clone(), p?);
            }
            nested(joined)
        }
        Filter::Not(inner) => nested(Expr::UnaryOp {
            op: sqlparser::ast::UnaryOperator::Not,
            expr: Box::new(expr(inner, rel)?),
        }),
        Filter::Compare { attr, op, value } => {
            let col = column(rel, attr)?;
            let op = match op {
                CmpOp::Eq => BinaryOperator::Eq,
                CmpOp::NotEq => BinaryOperator::NotEq,
                CmpOp::Lt => BinaryOperator::Lt,
                CmpOp::LtEq => BinaryOperator::LtEq,
                CmpOp::Gt => BinaryOperator::Gt,
                CmpOp::GtEq => BinaryOperator::GtEq,
            };
            nested(binary(operand(col, value), op, literal(col, value)?))
        }
        Filter::InSet { attr, values } => {
            let col = column(rel, attr)?;
            if values.is_empty() {
                // `x IN ()` is false for a present value and NULL for a missing one.
                return Ok(nested(nodes::case_when(
                    Expr::IsNull(Box::new(col_expr(&col.name))),
                    null(),
                    boolean(false),
                )));
            }
            nested(Expr::InList {
                expr: Box::new(operand(col, &values[0])),
                list: values
                    .iter()
                    .map(|v| literal(col, v))
                    .collect::<Result<_, _>>()?,
                negated: false,
            })
        }
        Filter::Present(attr) => {
            let col = column(rel, attr)?;
            nested(Expr::IsNotNull(Box::new(col_expr(&col.name))))
        }
        Filter::SetContains { attr, value } => {
            let col = array_column(rel, attr)?;
            let (set, _) = set_operand(col, &[value])?;
            nested(Expr::AnyOp {
                left: Box::new(scalar_literal(value)?),
                compare_op: BinaryOperator::Eq,
                right: Box::new(set),
                is_some: false,
            })
        }
        Filter::SetContainsAny { attr, values } | Filter::SetContainsAll { attr, values } => {
            let col = array_column(rel, attr)?;
            let (set, ty) = set_operand(col, &values.iter().collect::<Vec<_>>())?;
            let op = if matches!(f, Filter::SetContainsAny { .. }) {
                BinaryOperator::PGOverlap
            } else {
                BinaryOperator::AtArrow
            };
            nested(binary(set, op, array_literal(ty, values)?))
        }
        Filter::Like { attr, pattern } => {
            let col = column(rel, attr)?;
            let mut p = String::new();
            for e in pattern {
                match e {
                    Pattern::Wildcard => p.push('%'),
                    Pattern::Char(c @ ('%' | '_' | '\\')) => {
                        p.push('\\');
                        p.push(*c);
                    }
                    Pattern::Char(c) => p.push(*c),
                }
            }
            nested(Expr::Like {
                negated: false,
                any: false,
                expr: Box::new(cast(col_expr(&col.name), nodes::text())),
                pattern: Box::new(string(&p)),
                escape_char: Some(Box::new(string("\\"))),
            })
        }
    })
}

fn array_column<'r>(rel: &'r Relation, attr: &str) -> Result<&'r Column, Refusal> {
    let col = column(rel, attr)?;
    if col.category != 'A' {
        return Err(Refusal::Forbidden(format!(
            "the policy for {} uses column {attr:?} as a set, but it is not an array",
            rel.entity_type()
        )));
    }
    Ok(col)
}

/// The column as the left operand. Strings compare as Cedar compares them, exactly, on the
/// column's text: for `text` and `varchar` that is the column itself; other types are cast to
/// text, so that `char(n)` (whose comparisons ignore trailing blanks; its text drops them),
/// `citext` (case-insensitive) and `name` compare exactly, and a constant that is not a valid
/// value of a type such as uuid or json cannot raise an error.
fn operand(col: &Column, value: &Value) -> Expr {
    match value {
        Value::String(_) if !compares_as_text(col) => cast(col_expr(&col.name), nodes::text()),
        _ => col_expr(&col.name),
    }
}

/// Whether `col`'s own equality is exact text equality (its values need no cast).
fn compares_as_text(col: &Column) -> bool {
    matches!(col.type_name.as_str(), "text" | "varchar")
}

/// An array column as a set of strings or other values, and the array type to compare it
/// with: arrays of types whose equality is not exact text equality (`char(n)[]`, `citext[]`)
/// are cast to `text[]`, as [`operand`] does.
fn set_operand(col: &Column, values: &[&Value]) -> Result<(Expr, DataType), Refusal> {
    let element_text = matches!(col.type_name.as_str(), "_text" | "_varchar");
    let text_array = || {
        DataType::Array(sqlparser::ast::ArrayElemTypeDef::SquareBracket(
            Box::new(nodes::text()),
            None,
        ))
    };
    Ok(
        if values.iter().any(|v| matches!(v, Value::String(_))) && !element_text {
            (cast(col_expr(&col.name), text_array()), text_array())
        } else {
            (col_expr(&col.name), nodes::data_type(&col.sql_type)?)
        },
    )
}

fn literal(col: &Column, value: &Value) -> Result<Expr, Refusal> {
    Ok(match value {
        Value::Datetime(ms) => datetime_literal(col, *ms),
        other => scalar_literal(other)?,
    })
}

fn scalar_literal(value: &Value) -> Result<Expr, Refusal> {
    Ok(match value {
        Value::Bool(b) => boolean(*b),
        Value::Long(n) => nodes::number(&n.to_string()),
        Value::String(s) => string(s),
        Value::Decimal(scaled) => nodes::number(&decimal(*scaled)),
        Value::Datetime(ms) => cast(
            string(&utc(*ms, true)),
            DataType::Timestamp(None, sqlparser::ast::TimezoneInfo::Tz),
        ),
    })
}

/// `'…'` with quotes doubled (standard_conforming_strings is pinned on), for the SQL text the
/// write rewriter still builds.
pub fn quote_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// A decimal scaled by 10⁴ (Cedar's), written exactly.
fn decimal(scaled: i64) -> String {
    let sign = if scaled < 0 { "-" } else { "" };
    let abs = scaled.unsigned_abs();
    format!("{sign}{}.{:04}", abs / 10_000, abs % 10_000)
}

/// A datetime constant typed like the column: `timestamptz` columns compare with the instant;
/// `timestamp` and `date` columns hold UTC wall-clock time (the documented convention), so they
/// compare with the UTC wall-clock `timestamp`.
fn datetime_literal(col: &Column, ms: i64) -> Expr {
    use sqlparser::ast::TimezoneInfo;
    if col.type_name == "timestamptz" {
        cast(
            string(&utc(ms, true)),
            DataType::Timestamp(None, TimezoneInfo::Tz),
        )
    } else {
        cast(
            string(&utc(ms, false)),
            DataType::Timestamp(None, TimezoneInfo::None),
        )
    }
}

fn array_literal(sql_type: DataType, values: &[Value]) -> Result<Expr, Refusal> {
    let elem = values
        .iter()
        .map(scalar_literal)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(cast(
        Expr::Array(sqlparser::ast::Array { elem, named: true }),
        sql_type,
    ))
}

/// Milliseconds since the epoch as `YYYY-MM-DD HH:MM:SS.mmm` (+ `+00` for an instant).
fn utc(ms: i64, zone: bool) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, m, d) = policies::civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    let year = if y <= 0 {
        format!("{:04}", 1 - y)
    } else {
        format!("{y:04}")
    };
    let era = if y <= 0 { " BC" } else { "" };
    format!(
        "{year}-{m:02}-{d:02} {h:02}:{mi:02}:{s:02}.{milli:03}{}{era}",
        if zone { "+00" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_renders_instants_and_wall_clock() {
        assert_eq!(utc(0, true), "1970-01-01 00:00:00.000+00");
        assert_eq!(utc(1_767_323_045_250, false), "2026-01-02 03:04:05.250");
        assert_eq!(utc(-1, false), "1969-12-31 23:59:59.999");
    }

    fn rel(columns: &[(&str, &str, &str)]) -> Relation {
        Relation {
            schema: "public".into(),
            name: "t".into(),
            kind: crate::catalog::RelKind::Table,
            columns: columns
                .iter()
                .map(|(name, type_name, sql_type)| Column {
                    name: name.to_string(),
                    sql_type: sql_type.to_string(),
                    type_name: type_name.to_string(),
                    category: if type_name.starts_with('_') { 'A' } else { 'S' },
                    generated: false,
                    default: None,
                })
                .collect(),
            has_children: false,
        }
    }

    /// Strings compare exactly, as in Cedar (and `policy test`): `char(n)` and `citext`
    /// columns compare by their text, not by their own padded or case-insensitive equality.
    #[test]
    fn strings_compare_as_cedar_compares_them() {
        let r = rel(&[
            ("t", "text", "text"),
            ("v", "varchar", "character varying(10)"),
            ("c", "bpchar", "character(3)"),
            ("ci", "citext", "citext"),
            ("cs", "_bpchar", "character(3)[]"),
            ("ts", "_text", "text[]"),
        ]);
        let eq = |attr: &str, s: &str| {
            let f = Filter::Compare {
                attr: attr.into(),
                op: policies::CmpOp::Eq,
                value: Value::String(s.into()),
            };
            render(&f, &r).unwrap()
        };
        assert_eq!(eq("t", "EU"), r#"("t" = 'EU')"#);
        assert_eq!(eq("v", "EU"), r#"("v" = 'EU')"#);
        assert_eq!(eq("c", "EU "), r#"("c"::TEXT = 'EU ')"#);
        assert_eq!(eq("ci", "Eu"), r#"("ci"::TEXT = 'Eu')"#);
        let contains = |attr: &str| {
            let f = Filter::SetContains {
                attr: attr.into(),
                value: Value::String("EU".into()),
            };
            render(&f, &r).unwrap()
        };
        assert_eq!(contains("cs"), r#"('EU' = ANY("cs"::TEXT[]))"#);
        assert_eq!(contains("ts"), r#"('EU' = ANY("ts"))"#);
        let any = Filter::SetContainsAny {
            attr: "cs".into(),
            values: vec![Value::String("EU".into())],
        };
        assert_eq!(
            render(&any, &r).unwrap(),
            r#"("cs"::TEXT[] && ARRAY['EU']::TEXT[])"#
        );
    }

    #[test]
    fn decimals_render_exactly() {
        assert_eq!(decimal(-15_000), "-1.5000");
        assert_eq!(decimal(1), "0.0001");
    }
}
