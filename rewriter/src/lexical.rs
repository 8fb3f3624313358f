//! The lexical form of everything Portcullis forwards, spelled by Portcullis itself.
//!
//! sqlparser's printer is not a PostgreSQL lexer's inverse: it prints a string or quoted
//! identifier holding a backslash before a quote so that PostgreSQL ends it early (and runs
//! the rest as SQL), prints `- -1` as `--1` (a comment), prints type modifiers as raw text, and
//! keeps number forms PostgreSQL 15 reads differently (`1_000`). So before anything is printed,
//! [`spell`] rewrites every leaf token of the AST into text Portcullis has spelled in one
//! canonical form and proven (`tests` here, the differential tests against PostgreSQL in
//! `tests/lexical.rs`):
//!
//! - string constants of every kind (standard, `E''`, `U&''`, dollar-quoted) become standard
//!   strings with only `''` doubled (`standard_conforming_strings` is pinned on);
//! - quoted identifiers become `"…"` with only `""` doubled; unquoted ones must be made of
//!   PostgreSQL's identifier characters and are printed as written (PostgreSQL folds them);
//! - numbers must be PostgreSQL 15's decimal forms; parameters `$n`; bit strings `B'01'`;
//! - an operand of a prefix operator is parenthesized unless it is atomic (no `--`, no `-@`);
//! - type modifiers must be numbers or identifiers.
//!
//! Identifiers longer than PostgreSQL's 63 bytes are truncated as PostgreSQL truncates them,
//! right after parsing. Anything else is refused: a form Portcullis cannot spell safely never
//! reaches PostgreSQL.
//! The spelled tokens are recorded so that [`crate::verify`] can check PostgreSQL's own lexer
//! reads them back as exactly those tokens.

use std::ops::ControlFlow;

use sqlparser::ast::{
    DataType, Expr, Ident, ObjectNamePart, UnaryOperator, Value, ValueWithSpan, VisitMut,
    VisitorMut,
};

use crate::Refusal;

/// PostgreSQL truncates longer identifiers (NAMEDATALEN − 1 bytes). Portcullis truncates them
/// the same way right after parsing ([`truncate_identifiers`]), so that it resolves the names
/// PostgreSQL will; a longer one at printing time is refused (it would be a rewriter bug).
const MAX_IDENT_BYTES: usize = 63;

/// Truncates every identifier in `statements` as PostgreSQL's scanner does: to 63 bytes, at a
/// character boundary (`truncate_identifier`, `pg_mbcliplen`). PostgreSQL folds unquoted names
/// to lower case first, which changes no byte count.
pub(crate) fn truncate_identifiers(statements: &mut [sqlparser::ast::Statement]) {
    struct Truncate;
    impl VisitorMut for Truncate {
        type Break = ();
        fn post_visit_ident(&mut self, ident: &mut Ident) -> ControlFlow<()> {
            if matches!(ident.quote_style, None | Some('"')) && ident.value.len() > MAX_IDENT_BYTES
            {
                let mut end = MAX_IDENT_BYTES;
                while !ident.value.is_char_boundary(end) {
                    end -= 1;
                }
                ident.value.truncate(end);
            }
            ControlFlow::Continue(())
        }
    }
    for statement in statements {
        let _ = statement.visit(&mut Truncate);
    }
}

/// The prefix of the names Portcullis gives the relations and columns it adds to a statement
/// (`portcullis_lock_1`, `portcullis_ctid`, …).
pub(crate) const RESERVED_PREFIX: &str = "portcullis_";

/// Refuses a statement that names anything with the reserved prefix, as PostgreSQL would fold
/// it: such a name could reach a relation Portcullis added (a row-lock's unfenced table).
pub(crate) fn refuse_reserved_names(
    statements: &mut [sqlparser::ast::Statement],
) -> Result<(), Refusal> {
    struct Reserved;
    impl VisitorMut for Reserved {
        type Break = String;
        fn post_visit_ident(&mut self, ident: &mut Ident) -> ControlFlow<String> {
            let folded = match ident.quote_style {
                None => ident.value.to_lowercase(),
                Some('"') => ident.value.clone(),
                Some(_) => return ControlFlow::Continue(()),
            };
            if folded.starts_with(RESERVED_PREFIX) {
                return ControlFlow::Break(folded);
            }
            ControlFlow::Continue(())
        }
    }
    for statement in statements {
        if let ControlFlow::Break(name) = statement.visit(&mut Reserved) {
            return Err(Refusal::Forbidden(format!(
                "the name {name:?}: names beginning with {RESERVED_PREFIX} are reserved for the \
                 relations and columns Portcullis adds to statements"
            )));
        }
    }
    Ok(())
}

/// The tokens [`spell`] wrote whose text came from the client (or the catalog): what
/// PostgreSQL's lexer must read back, token for token.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Spelled {
    /// String and bit-string constants, as spelled (`'it''s'`, `B'01'`).
    pub literals: Vec<String>,
    /// Quoted identifiers, as spelled (`"a""b"`).
    pub quoted_idents: Vec<String>,
}

/// Rewrites every value and identifier in `node` into its canonical spelling (printed verbatim
/// from then on) and returns what was spelled. `node` must not be inspected as SQL afterwards:
/// spelled identifiers carry their quotes in their text.
pub(crate) fn spell<T: VisitMut>(node: &mut T) -> Result<Spelled, Refusal> {
    let mut speller = Speller::default();
    match node.visit(&mut speller) {
        ControlFlow::Break(refusal) => Err(refusal),
        ControlFlow::Continue(()) => Ok(speller.spelled),
    }
}

/// `node` printed with canonical spelling, for SQL text the rewriter builds and parses again.
pub(crate) fn to_sql<T: VisitMut + Clone + std::fmt::Display>(node: &T) -> Result<String, Refusal> {
    let mut node = node.clone();
    spell(&mut node)?;
    Ok(node.to_string())
}

#[derive(Default)]
struct Speller {
    spelled: Spelled,
}

impl VisitorMut for Speller {
    type Break = Refusal;

    fn post_visit_value(&mut self, value: &mut ValueWithSpan) -> ControlFlow<Refusal> {
        match spell_value(&value.value) {
            Ok(Token::Literal(text)) => {
                self.spelled.literals.push(text.clone());
                value.value = Value::Placeholder(text);
            }
            Ok(Token::Other(text)) => value.value = Value::Placeholder(text),
            Err(refusal) => return ControlFlow::Break(refusal),
        }
        ControlFlow::Continue(())
    }

    fn post_visit_ident(&mut self, ident: &mut Ident) -> ControlFlow<Refusal> {
        match spell_ident(ident) {
            Ok(Token::Literal(text)) => {
                self.spelled.quoted_idents.push(text.clone());
                *ident = Ident::new(text);
            }
            Ok(Token::Other(text)) => *ident = Ident::new(text),
            Err(refusal) => return ControlFlow::Break(refusal),
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Refusal> {
        match expr {
            // sqlparser prints a prefix operator glued to its operand: `- -1` as `--1`.
            Expr::UnaryOp { op, expr: operand }
                if !matches!(op, UnaryOperator::Not) && !is_atomic(operand) =>
            {
                let inner = std::mem::replace(&mut **operand, Expr::Value(Value::Null.into()));
                **operand = Expr::Nested(Box::new(inner));
            }
            Expr::Cast { data_type, .. } => {
                if let Err(refusal) = check_data_type(data_type) {
                    return ControlFlow::Break(refusal);
                }
            }
            Expr::TypedString(typed) => {
                if let Err(refusal) = check_data_type(&typed.data_type) {
                    return ControlFlow::Break(refusal);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// Whether `expr` prints as one token (or a parenthesized group) that cannot glue to a
/// preceding operator character.
fn is_atomic(expr: &Expr) -> bool {
    matches!(
        expr,
        Expr::Identifier(_)
            | Expr::CompoundIdentifier(_)
            | Expr::Value(_)
            | Expr::Nested(_)
            | Expr::Function(_)
            | Expr::Subquery(_)
    )
}

enum Token {
    /// A token whose text holds arbitrary characters between delimiters (checked against
    /// PostgreSQL's lexer).
    Literal(String),
    /// A token made of a fixed alphabet (number, parameter, keyword, unquoted identifier).
    Other(String),
}

fn spell_value(value: &Value) -> Result<Token, Refusal> {
    Ok(match value {
        Value::SingleQuotedString(s)
        | Value::EscapedStringLiteral(s)
        | Value::UnicodeStringLiteral(s) => Token::Literal(quote_string(s)?),
        Value::DollarQuotedString(d) => Token::Literal(quote_string(&d.value)?),
        Value::Number(n, false) if is_pg15_number(n) => Token::Other(n.to_string()),
        Value::Boolean(true) => Token::Other("TRUE".into()),
        Value::Boolean(false) => Token::Other("FALSE".into()),
        Value::Null => Token::Other("NULL".into()),
        Value::Placeholder(p) if is_parameter(p) => Token::Other(p.clone()),
        Value::SingleQuotedByteStringLiteral(b) if b.bytes().all(|c| c == b'0' || c == b'1') => {
            Token::Literal(format!("B'{b}'"))
        }
        other => {
            return Err(Refusal::Unsupported(format!(
                "the constant {} (Portcullis forwards only forms it can spell exactly)",
                describe(other)
            )))
        }
    })
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Number(..) => "number form (PostgreSQL 15 reads only decimal digits, `.`, `e`)",
        Value::Placeholder(_) => "parameter form (only $1, $2, …)",
        Value::NationalStringLiteral(_) => "N'…'",
        Value::SingleQuotedByteStringLiteral(_) => "bit string",
        // sqlparser reads `0x1F` (in PostgreSQL 15: `0 AS x1F`) and `X'1F'` as one thing.
        Value::HexStringLiteral(_) => "X'…' (sqlparser cannot tell it from 0x…)",
        _ => "of this kind",
    }
}

/// `'…'` with only quotes doubled: the one form PostgreSQL reads back as `s` whatever `s`
/// holds, with `standard_conforming_strings` on (pinned by the proxy).
pub(crate) fn quote_string(s: &str) -> Result<String, Refusal> {
    if s.contains('\0') {
        return Err(Refusal::Forbidden(
            "a string constant holding a NUL character".into(),
        ));
    }
    Ok(format!("'{}'", s.replace('\'', "''")))
}

fn spell_ident(ident: &Ident) -> Result<Token, Refusal> {
    let value = &ident.value;
    if value.len() > MAX_IDENT_BYTES {
        return Err(Refusal::Forbidden(format!(
            "an identifier longer than {MAX_IDENT_BYTES} bytes (PostgreSQL would truncate it)"
        )));
    }
    match ident.quote_style {
        Some('"') => {
            if value.is_empty() || value.contains('\0') {
                return Err(Refusal::Syntax(
                    "an empty quoted identifier, or one holding a NUL character".into(),
                ));
            }
            Ok(Token::Literal(format!(
                "\"{}\"",
                value.replace('"', "\"\"")
            )))
        }
        // A name sqlparser read from a string constant (`SET x TO 'a'` and the like).
        Some('\'') => Ok(Token::Literal(quote_string(value)?)),
        None if is_unquoted_identifier(value) => Ok(Token::Other(value.clone())),
        _ => Err(Refusal::Unsupported(
            "this identifier form (only \"quoted\" and plain identifiers)".into(),
        )),
    }
}

/// PostgreSQL's `identifier`: `[A-Za-z\200-\377_][A-Za-z\200-\377_0-9$]*` (in UTF-8 every
/// non-ASCII character is made of bytes ≥ 0x80).
pub(crate) fn is_unquoted_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == '_' || !first.is_ascii())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || !c.is_ascii())
}

/// `$` followed by decimal digits.
fn is_parameter(s: &str) -> bool {
    s.strip_prefix('$')
        .is_some_and(|d| !d.is_empty() && d.bytes().all(|c| c.is_ascii_digit()))
}

/// PostgreSQL 15's `integer`, `decimal` and `real`: `12`, `1.`, `.5`, `1.5e-3` (no sign, no
/// `_`, no `0x`, nothing glued after).
pub(crate) fn is_pg15_number(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    let digits = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i - start
    };
    let mut mantissa = digits(&mut i);
    if i < b.len() && b[i] == b'.' {
        i += 1;
        mantissa += digits(&mut i);
    }
    if mantissa == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

/// Type modifiers are printed as raw text by sqlparser: only numbers and plain identifiers
/// pass.
fn check_data_type(data_type: &DataType) -> Result<(), Refusal> {
    match data_type {
        DataType::Custom(name, modifiers) => {
            for part in &name.0 {
                if !matches!(part, ObjectNamePart::Identifier(_)) {
                    return Err(Refusal::Unsupported("this type name".into()));
                }
            }
            if let Some(m) = modifiers
                .iter()
                .find(|m| !is_pg15_number(m) && !is_unquoted_identifier(m))
            {
                return Err(Refusal::Unsupported(format!(
                    "the type modifier {m:?} (only numbers and plain names)"
                )));
            }
            Ok(())
        }
        DataType::Array(sqlparser::ast::ArrayElemTypeDef::AngleBracket(inner))
        | DataType::Array(sqlparser::ast::ArrayElemTypeDef::SquareBracket(inner, _))
        | DataType::Array(sqlparser::ast::ArrayElemTypeDef::Parenthesis(inner)) => {
            check_data_type(inner)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{check, Protocol};

    fn forwarded(sql: &str) -> String {
        check(sql, Protocol::Simple).unwrap().sql
    }

    #[test]
    fn a_backslash_before_a_quote_stays_inside_the_string() {
        assert_eq!(
            forwarded(r"SELECT 'x\''; SELECT ssn FROM customers; -- '"),
            r"SELECT 'x\''; SELECT ssn FROM customers; -- '"
        );
        assert_eq!(
            forwarded(r"SELECT 'a\b', 'it''s'"),
            r"SELECT 'a\b', 'it''s'"
        );
    }

    #[test]
    fn quoted_identifiers_double_only_quotes() {
        assert_eq!(
            forwarded(r#"SELECT 1 AS "a\""; SELECT 2 --""#),
            r#"SELECT 1 AS "a\""; SELECT 2 --""#
        );
    }

    #[test]
    fn every_string_form_becomes_a_standard_string() {
        assert_eq!(
            forwarded(r"SELECT E'a\'b\\', U&'d\0061t', $x$a'b\$x$, $$$$"),
            r"SELECT 'a''b\', 'dat', 'a''b\', ''"
        );
    }

    #[test]
    fn a_prefix_operator_never_glues_to_its_operand() {
        assert_eq!(forwarded("SELECT - -1"), "SELECT -(-1)");
        assert_eq!(forwarded("SELECT -(-1)"), "SELECT -(-1)");
        assert_eq!(forwarded("SELECT - - - x"), "SELECT -(-(-x))");
    }

    #[test]
    fn unspellable_forms_are_refused() {
        for sql in [
            "SELECT 1_000",
            "SELECT N'x'",
            "SELECT CAST(y AS mytype('a) ; select 1 --'))",
            "SELECT E'\\0'",
            "SELECT 0x1F",
            "SELECT X'1F'",
        ] {
            assert!(check(sql, Protocol::Simple).is_err(), "{sql}");
        }
    }

    #[test]
    fn long_identifiers_are_truncated_as_postgresql_truncates_them() {
        assert_eq!(
            forwarded(&format!("SELECT 1 AS {}", "a".repeat(70))),
            format!("SELECT 1 AS {}", "a".repeat(63))
        );
        // At a character boundary: 31 two-byte characters (62 bytes), not half of the 32nd.
        assert_eq!(
            forwarded(&format!("SELECT 1 AS \"{}\"", "é".repeat(40))),
            format!("SELECT 1 AS \"{}\"", "é".repeat(31))
        );
    }

    #[test]
    fn numbers_are_postgresql_15_forms() {
        for ok in ["0", "12", "1.", ".5", "1.5e-3", "2E10", "007"] {
            assert!(is_pg15_number(ok), "{ok}");
        }
        for bad in ["", ".", "1e", "1_0", "0x1F", "1.2.3", "-1", "1e+", "١"] {
            assert!(!is_pg15_number(bad), "{bad}");
        }
    }
}
