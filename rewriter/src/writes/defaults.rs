//! Column defaults the new-row check must see. An INSERT that omits a column (or sets it to
//! `DEFAULT`) stores the column's default, which the statement text does not show. When that
//! default is a constant (`3`, `'open'::text`, `false`, `NULL`), the checked INSERT names the
//! column and writes the constant itself, so the row checked is the row stored even if the
//! default changes after the catalog was read. Any other default (`now()`, `nextval(…)`, an
//! identity column, a domain's default) is refused when the check reads the column.

use sqlparser::ast::{CastKind, Expr, UnaryOperator, Value};

use crate::catalog::{Column, Relation};
use crate::lexical::to_sql;
use crate::Refusal;

/// The SQL of `col`'s default when it is a constant, or the refusal explaining why the check
/// cannot read it (`action` names the statement: "inserting into").
pub(super) fn constant(col: &Column, rel: &Relation, action: &str) -> Result<Expr, Refusal> {
    let refuse = |what: String| {
        Refusal::Forbidden(format!(
            "the policy for {action} {} checks column {:?}, which this statement leaves to its \
             default{what}; set it explicitly",
            rel.entity_type(),
            col.name
        ))
    };
    if col.generated {
        return Err(Refusal::Forbidden(format!(
            "the policy for {action} {} checks generated column {:?}, whose value exists only \
             after the write",
            rel.entity_type(),
            col.name
        )));
    }
    let Some(text) = col.default.as_deref() else {
        return Err(refuse(String::new()));
    };
    let expr = crate::parse::built(text, "a column default", |p| p.parse_expr())
        .map_err(|_| refuse(String::new()))?;
    if !is_constant(&expr) {
        return Err(refuse(format!(" ({}, not a constant)", to_sql(&expr)?)));
    }
    Ok(expr)
}

/// Literals, casts of constants and signs: what the value is does not depend on when or where
/// it is computed.
fn is_constant(expr: &Expr) -> bool {
    match expr {
        Expr::Value(v) => !matches!(v.value, Value::Placeholder(_)),
        Expr::Cast {
            kind: CastKind::Cast | CastKind::DoubleColon,
            expr,
            format: None,
            ..
        } => is_constant(expr),
        Expr::Nested(e) => is_constant(e),
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => is_constant(expr),
        Expr::TypedString { .. } => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(sql: &str) -> Expr {
        crate::parse::built(sql, "test", |p| p.parse_expr()).unwrap()
    }

    #[test]
    fn only_constants_count() {
        for sql in [
            "3",
            "'-1'::integer",
            "'EUR'::bpchar",
            "NULL",
            "false",
            "'{}'::jsonb",
            "(- 1.5)",
        ] {
            assert!(is_constant(&expr(sql)), "{sql}");
        }
        for sql in [
            "now()",
            "nextval('t_id_seq'::regclass)",
            "CURRENT_TIMESTAMP",
            "(random() * 10)::integer",
            "current_setting('x')",
        ] {
            assert!(!is_constant(&expr(sql)), "{sql}");
        }
    }
}
