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
    refuse_unicode_identifiers(sql)?;
    let mut statements = Parser::new(&PostgreSqlDialect {})
        .with_recursion_limit(RECURSION_LIMIT)
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_statements())
        .map_err(|e| Refusal::Syntax(e.to_string()))?;
    crate::table_shorthand::expand(sql, &mut statements)?;
    crate::lexical::truncate_identifiers(&mut statements);
    Ok(statements)
}

/// `U&"…"` identifiers: sqlparser reads `U&"x"` as a column `u` and-ed with `"x"`, so a
/// statement naming one would be checked as something else than the agent meant (and refused
/// upstream with a baffling error). PostgreSQL's scanner finds them; they are refused plainly.
/// (`U&'…'` strings are read right, and spelled as standard strings: see `lexical`.)
fn refuse_unicode_identifiers(sql: &str) -> Result<(), Refusal> {
    let maybe = sql
        .as_bytes()
        .windows(3)
        .any(|w| w[0].eq_ignore_ascii_case(&b'u') && w[1] == b'&' && w[2] == b'"');
    if !maybe {
        return Ok(());
    }
    let scan = pg_query::scan(sql).map_err(|e| Refusal::Syntax(format!("PostgreSQL: {e}")))?;
    if scan.tokens.iter().any(|t| {
        pg_query::protobuf::Token::from_i32(t.token) == Some(pg_query::protobuf::Token::Uident)
    }) {
        return Err(Refusal::Unsupported(
            "U&\"…\" identifiers (write the identifier in plain double quotes)".into(),
        ));
    }
    Ok(())
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
    fn unicode_identifiers_are_refused_and_unicode_strings_are_not() {
        for sql in [
            r#"SELECT U&"customers".id FROM customers"#,
            r#"select u&"d\0061t" from t"#,
            r#"SELECT 1 AS U&"x!0061" UESCAPE '!'"#,
        ] {
            let e = parse(sql).unwrap_err();
            assert_eq!(e.sqlstate(), "0A000", "{sql}: {e}");
        }
        for sql in [
            r#"SELECT U&'d\0061t'"#,
            r#"SELECT 'U&"x"' AS a"#,
            r#"SELECT "U&""x""" FROM t"#,
        ] {
            assert!(parse(sql).is_ok(), "{sql}");
        }
    }

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
