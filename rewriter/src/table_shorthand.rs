//! `TABLE t`, PostgreSQL's shorthand for `SELECT * FROM t`. sqlparser keeps only the name's
//! text, not whether it was quoted (`TABLE "Foo"` and `TABLE foo` read alike), so the name is
//! taken from PostgreSQL's own scanner instead: each `TABLE` keyword of the statement text,
//! in order, with the name tokens after it (quoted ones kept as written, unquoted ones folded
//! to lower case as PostgreSQL folds them). The shorthand then becomes `SELECT * FROM name`,
//! which is checked and fenced like any query. If the scanner's `TABLE` keywords and
//! sqlparser's do not pair up one to one, the statement is refused.

use std::ops::ControlFlow;

use pg_query::protobuf::Token;
use sqlparser::ast::{Ident, ObjectName, Query, SetExpr, Statement, VisitMut, VisitorMut};

use crate::Refusal;

/// Expands every `TABLE name` of `statements` (parsed from `sql`).
pub(crate) fn expand(sql: &str, statements: &mut [Statement]) -> Result<(), Refusal> {
    if !sql
        .as_bytes()
        .windows(5)
        .any(|w| w.eq_ignore_ascii_case(b"table"))
    {
        return Ok(());
    }
    let mut count = Count(0);
    for statement in statements.iter_mut() {
        let _ = statement.visit(&mut count);
    }
    if count.0 == 0 {
        return Ok(());
    }
    let names = scanned_names(sql)?;
    if names.len() != count.0 {
        return Err(Refusal::Unsupported(
            "this use of TABLE (write SELECT * FROM t)".into(),
        ));
    }
    let mut expand = Expand {
        names: names.into_iter(),
    };
    for statement in statements.iter_mut() {
        if let ControlFlow::Break(e) = statement.visit(&mut expand) {
            return Err(e);
        }
    }
    Ok(())
}

struct Count(usize);

impl VisitorMut for Count {
    type Break = ();
    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<()> {
        count_tables(&query.body, &mut self.0);
        ControlFlow::Continue(())
    }
}

/// `TABLE t` operands of a query body, set operations included (their nested queries are
/// visited as queries).
fn count_tables(body: &SetExpr, n: &mut usize) {
    match body {
        SetExpr::Table(_) => *n += 1,
        SetExpr::SetOperation { left, right, .. } => {
            count_tables(left, n);
            count_tables(right, n);
        }
        _ => {}
    }
}

struct Expand {
    names: std::vec::IntoIter<Vec<Ident>>,
}

impl VisitorMut for Expand {
    type Break = Refusal;
    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<Refusal> {
        match self.expand_body(&mut query.body) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }
}

impl Expand {
    fn expand_body(&mut self, body: &mut SetExpr) -> Result<(), Refusal> {
        match body {
            SetExpr::Table(_) => {
                let parts = self.names.next().ok_or_else(|| {
                    Refusal::Unsupported("this use of TABLE (write SELECT * FROM t)".into())
                })?;
                let name = ObjectName::from(parts);
                let query = crate::parse::built(
                    &format!("SELECT * FROM {name}"),
                    "TABLE t as SELECT * FROM t",
                    |p| p.parse_query(),
                )?;
                *body = *query.body;
                Ok(())
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.expand_body(left)?;
                self.expand_body(right)
            }
            _ => Ok(()),
        }
    }
}

/// The name after each `TABLE` keyword of `sql`, in order, as PostgreSQL's scanner reads it.
fn scanned_names(sql: &str) -> Result<Vec<Vec<Ident>>, Refusal> {
    let scan = pg_query::scan(sql).map_err(|e| Refusal::Syntax(format!("PostgreSQL: {e}")))?;
    let text = |t: &pg_query::protobuf::ScanToken| -> Result<&str, Refusal> {
        sql.get(t.start as usize..t.end as usize)
            .ok_or_else(|| Refusal::Syntax("a token outside the text".into()))
    };
    let unsupported = || Refusal::Unsupported("this use of TABLE (write SELECT * FROM t)".into());
    let mut names = Vec::new();
    let tokens = &scan.tokens;
    let mut i = 0;
    while i < tokens.len() {
        if Token::from_i32(tokens[i].token) != Some(Token::Table) {
            i += 1;
            continue;
        }
        let mut parts = Vec::new();
        let mut j = i + 1;
        loop {
            let Some(tok) = tokens.get(j) else {
                return Err(unsupported());
            };
            let word = text(tok)?;
            if let Some(quoted) = word.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
                parts.push(Ident::with_quote('"', quoted.replace("\"\"", "\"")));
            } else if word
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && word
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '$')
                && Token::from_i32(tok.token) != Some(Token::Only)
            {
                // PostgreSQL folds ASCII letters only (in UTF-8).
                parts.push(Ident::with_quote('"', word.to_ascii_lowercase()));
            } else {
                return Err(unsupported());
            }
            match tokens.get(j + 1).map(|t| Token::from_i32(t.token)) {
                Some(Some(Token::Ascii46)) => j += 2,
                _ => break,
            }
        }
        // `TABLE t *` (descendants, the default) is not spelled back.
        if tokens.get(j + 1).is_some_and(|t| text(t).ok() == Some("*")) {
            return Err(unsupported());
        }
        names.push(parts);
        i = j + 1;
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(sql: &str) -> Vec<Vec<String>> {
        scanned_names(sql)
            .unwrap()
            .into_iter()
            .map(|p| p.into_iter().map(|i| i.value).collect())
            .collect()
    }

    #[test]
    fn names_are_read_as_postgresql_reads_them() {
        assert_eq!(names("TABLE Customers"), [["customers"]]);
        assert_eq!(names(r#"table "Cu""st".x"#), [["Cu\"st", "x"]]);
        assert_eq!(
            names("table public.t union all (table s.name)"),
            [vec!["public", "t"], vec!["s", "name"]]
        );
        assert!(names("select 'table x' as \"table\"").is_empty());
        assert!(scanned_names("table only t").is_err());
    }
}
