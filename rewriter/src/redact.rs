//! Statements with their literals withheld, for audit records when `audit.redact_literals` is
//! set: every constant (string, number, bit string, typed literal) becomes `'?'`, so a record
//! says what was asked without holding the values (an email, an SSN) it was asked about.

use std::ops::ControlFlow;

use sqlparser::ast::{Expr, Value, VisitMut, VisitorMut};

/// `sql` with every literal replaced by `'?'`; `None` when it does not parse.
pub fn redact_literals(sql: &str) -> Option<String> {
    let mut statements = crate::parse::parse(sql).ok()?;
    for statement in &mut statements {
        let _ = statement.visit(&mut Redactor);
    }
    Some(
        statements
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; "),
    )
}

struct Redactor;

impl VisitorMut for Redactor {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        match expr {
            Expr::Value(v)
                if !matches!(
                    v.value,
                    Value::Null | Value::Boolean(_) | Value::Placeholder(_)
                ) =>
            {
                v.value = Value::SingleQuotedString("?".into());
            }
            Expr::TypedString(_) => {
                *expr = Expr::Value(Value::SingleQuotedString("?".into()).into());
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_withheld() {
        let r = redact_literals(
            "select * from customers where email = 'ann@example.com' and id > 42 and d = date '2026-01-01' and x = $1 and y is null",
        )
        .unwrap();
        assert!(
            !r.contains("ann@example.com") && !r.contains("42") && !r.contains("2026"),
            "{r}"
        );
        assert!(r.contains("$1") && r.contains("NULL"), "{r}");
        assert_eq!(
            redact_literals("select 'a'; select 2").unwrap(),
            "SELECT '?'; SELECT '?'"
        );
        assert!(redact_literals("selec x").is_none());
    }
}
