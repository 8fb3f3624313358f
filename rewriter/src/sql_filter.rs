//! A [`Filter`] as a SQL boolean expression over one relation's columns, with the same
//! three-valued meaning as `Filter::eval` (a missing value is NULL, and only TRUE admits).
//! Constants are rendered as literals of the column's type, so comparisons never depend on
//! session settings (datetimes are absolute UTC instants).

use std::fmt::Write;

use policies::{CmpOp, Filter, Pattern, Value};

use crate::catalog::{quote_ident, Column, Relation};
use crate::Refusal;

/// Renders `filter` for `relation`'s columns (unqualified, quoted).
pub fn render(filter: &Filter, relation: &Relation) -> Result<String, Refusal> {
    let mut out = String::new();
    write_filter(&mut out, filter, relation)?;
    Ok(out)
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

fn write_filter(out: &mut String, f: &Filter, rel: &Relation) -> Result<(), Refusal> {
    match f {
        Filter::True => out.push_str("true"),
        Filter::False => out.push_str("false"),
        Filter::And(parts) | Filter::Or(parts) => {
            let sep = if matches!(f, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            out.push('(');
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                }
                write_filter(out, p, rel)?;
            }
            out.push(')');
        }
        Filter::Not(inner) => {
            out.push_str("(NOT ");
            write_filter(out, inner, rel)?;
            out.push(')');
        }
        Filter::Compare { attr, op, value } => {
            let col = column(rel, attr)?;
            let op = match op {
                CmpOp::Eq => "=",
                CmpOp::NotEq => "<>",
                CmpOp::Lt => "<",
                CmpOp::LtEq => "<=",
                CmpOp::Gt => ">",
                CmpOp::GtEq => ">=",
            };
            let _ = write!(
                out,
                "({} {op} {})",
                operand(col, value),
                literal(col, value)?
            );
        }
        Filter::InSet { attr, values } => {
            let col = column(rel, attr)?;
            if values.is_empty() {
                // `x IN ()` is false for a present value and NULL for a missing one.
                let _ = write!(
                    out,
                    "(CASE WHEN {} IS NULL THEN NULL ELSE false END)",
                    quote_ident(&col.name)
                );
                return Ok(());
            }
            let _ = write!(out, "({} IN (", operand(col, &values[0]));
            for (i, v) in values.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                out.push_str(&literal(col, v)?);
            }
            out.push_str("))");
        }
        Filter::Present(attr) => {
            let col = column(rel, attr)?;
            let _ = write!(out, "({} IS NOT NULL)", quote_ident(&col.name));
        }
        Filter::SetContains { attr, value } => {
            let col = array_column(rel, attr)?;
            let (set, _) = set_operand(col, &[value]);
            let _ = write!(out, "({} = ANY({set}))", scalar_literal(value)?);
        }
        Filter::SetContainsAny { attr, values } | Filter::SetContainsAll { attr, values } => {
            let col = array_column(rel, attr)?;
            let (set, ty) = set_operand(col, &values.iter().collect::<Vec<_>>());
            let op = if matches!(f, Filter::SetContainsAny { .. }) {
                "&&"
            } else {
                "@>"
            };
            let _ = write!(out, "({set} {op} {})", array_literal(&ty, values)?);
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
            let _ = write!(
                out,
                "({}::text LIKE {} ESCAPE '\\')",
                quote_ident(&col.name),
                quote_string(&p)
            );
        }
    }
    Ok(())
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
fn operand(col: &Column, value: &Value) -> String {
    match value {
        Value::String(_) if !compares_as_text(col) => {
            format!("{}::text", quote_ident(&col.name))
        }
        _ => quote_ident(&col.name),
    }
}

/// Whether `col`'s own equality is exact text equality (its values need no cast).
fn compares_as_text(col: &Column) -> bool {
    matches!(col.type_name.as_str(), "text" | "varchar")
}

/// An array column as a set of strings or other values: arrays of types whose equality is not
/// exact text equality (`char(n)[]`, `citext[]`) are cast to `text[]`, as [`operand`] does.
fn set_operand(col: &Column, values: &[&Value]) -> (String, String) {
    let element_text = matches!(col.type_name.as_str(), "_text" | "_varchar");
    if values.iter().any(|v| matches!(v, Value::String(_))) && !element_text {
        (
            format!("{}::text[]", quote_ident(&col.name)),
            "text[]".to_string(),
        )
    } else {
        (quote_ident(&col.name), col.sql_type.clone())
    }
}

fn literal(col: &Column, value: &Value) -> Result<String, Refusal> {
    Ok(match value {
        Value::Datetime(ms) => datetime_literal(col, *ms),
        other => scalar_literal(other)?,
    })
}

fn scalar_literal(value: &Value) -> Result<String, Refusal> {
    Ok(match value {
        Value::Bool(b) => b.to_string(),
        Value::Long(n) => n.to_string(),
        Value::String(s) => quote_string(s),
        Value::Decimal(scaled) => {
            let sign = if *scaled < 0 { "-" } else { "" };
            let abs = scaled.unsigned_abs();
            format!("{sign}{}.{:04}", abs / 10_000, abs % 10_000)
        }
        Value::Datetime(ms) => format!("{}::timestamptz", quote_string(&utc(*ms, true))),
    })
}

/// A datetime constant typed like the column: `timestamptz` columns compare with the instant;
/// `timestamp` and `date` columns hold UTC wall-clock time (the documented convention), so they
/// compare with the UTC wall-clock `timestamp`.
fn datetime_literal(col: &Column, ms: i64) -> String {
    if col.type_name == "timestamptz" {
        format!("{}::timestamptz", quote_string(&utc(ms, true)))
    } else {
        format!("{}::timestamp", quote_string(&utc(ms, false)))
    }
}

fn array_literal(sql_type: &str, values: &[Value]) -> Result<String, Refusal> {
    let items = values
        .iter()
        .map(scalar_literal)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(format!("ARRAY[{}]::{sql_type}", items.join(", ")))
}

/// `'…'` with quotes doubled (standard_conforming_strings is pinned on).
pub fn quote_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
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
        assert_eq!(eq("c", "EU "), r#"("c"::text = 'EU ')"#);
        assert_eq!(eq("ci", "Eu"), r#"("ci"::text = 'Eu')"#);
        let contains = |attr: &str| {
            let f = Filter::SetContains {
                attr: attr.into(),
                value: Value::String("EU".into()),
            };
            render(&f, &r).unwrap()
        };
        assert_eq!(contains("cs"), r#"('EU' = ANY("cs"::text[]))"#);
        assert_eq!(contains("ts"), r#"('EU' = ANY("ts"))"#);
        let any = Filter::SetContainsAny {
            attr: "cs".into(),
            values: vec![Value::String("EU".into())],
        };
        assert_eq!(
            render(&any, &r).unwrap(),
            r#"("cs"::text[] && ARRAY['EU']::text[])"#
        );
    }

    #[test]
    fn decimals_render_exactly() {
        assert_eq!(scalar_literal(&Value::Decimal(-15_000)).unwrap(), "-1.5000");
        assert_eq!(scalar_literal(&Value::Decimal(1)).unwrap(), "0.0001");
    }
}
