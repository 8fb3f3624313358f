//! Parsing with sqlparser's PostgreSQL dialect, bounded in nesting depth; identifiers come out
//! truncated as PostgreSQL's scanner truncates them.

use sqlparser::ast::Statement;
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::Refusal;

/// Deepest expression/query nesting accepted; deeper input is refused, not parsed recursively.
const RECURSION_LIMIT: usize = 64;

/// Parses `sql` into statements; an empty string (or only `;`) yields none.
pub(crate) fn parse(sql: &str) -> Result<Vec<Statement>, Refusal> {
    if sql
        .trim_matches(|c: char| c.is_whitespace() || c == ';')
        .is_empty()
    {
        return Ok(Vec::new());
    }
    if sql.contains('\0') {
        return Err(Refusal::Syntax("statement contains a NUL byte".into()));
    }
    let mut statements = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Refusal::Syntax(e.to_string()))?;
    crate::lexical::truncate_identifiers(&mut statements);
    Ok(statements)
}

/// Parses SQL the rewriter built (a fence, a checked write) with `read`, which must consume all
/// of it: a parser that stopped early would silently drop the rest (a fence's WHERE, say).
/// `what` names the construct in the refusal.
pub(crate) fn built<T>(
    sql: &str,
    what: &str,
    read: impl FnOnce(&mut Parser<'_>) -> Result<T, sqlparser::parser::ParserError>,
) -> Result<T, Refusal> {
    let fail = |e: String| Refusal::Unsupported(format!("cannot build {what}: {e}"));
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .with_recursion_limit(RECURSION_LIMIT * 4)
        .try_with_sql(sql)
        .map_err(|e| fail(e.to_string()))?;
    let value = read(&mut parser).map_err(|e| fail(e.to_string()))?;
    let rest = parser.peek_token();
    if rest.token != sqlparser::tokenizer::Token::EOF {
        return Err(fail(format!("the parser stopped at {rest}")));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_nesting_is_refused_without_overflowing_the_stack() {
        let sql = format!("SELECT {}1{}", "(".repeat(5000), ")".repeat(5000));
        assert!(matches!(parse(&sql), Err(Refusal::Syntax(_))));
    }

    #[test]
    fn built_sql_must_be_read_to_its_end() {
        assert!(built("SELECT 1 FROM t WHERE x", "a test", |p| p.parse_query()).is_ok());
        assert!(built("SELECT 1 ) WHERE x", "a test", |p| p.parse_query()).is_err());
    }

    #[test]
    fn nul_is_refused() {
        assert!(parse("select 1\0; drop table x").is_err());
    }
}
