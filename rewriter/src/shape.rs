//! Statements by shape: agents and ORMs send one statement over and over with new constants
//! (`… WHERE aid = 48213`), and each would be a cold rewrite. [`lift`] reads the text with
//! PostgreSQL's own scanner and lifts its constants out, leaving a key that is the same for
//! every such statement; a [`Template`] learnt from one rewrite is then filled with another
//! statement's constants instead of rewriting it again.
//!
//! What makes a filled template the rewrite the statement would have had:
//!
//! - Only constants in *data positions* are ever filled in: operands of comparisons, `LIKE`,
//!   `IN` lists and `BETWEEN` (through arithmetic, unary minus and parentheses), and `LIMIT` /
//!   `OFFSET` values, in statements that are all queries with no write inside
//!   ([`data_positions`], on the parsed statement). Any other constant (a function's argument,
//!   a cast's operand, a `SET` value, `ORDER BY 1`) is *pinned*: a template is used only for
//!   statements whose pinned constants are the ones it was learnt with (one variant per shape
//!   and version: the first learnt). The rewriter decides nothing from a constant in a data
//!   position, only from its type, and the key holds each constant's type class (`int4`,
//!   `int8`, `numeric`, string) so that every constant filled into a slot has the type the
//!   learnt ones had (numbers whose class a leading minus would change are not lifted).
//! - A template is learnt from two rewrites of the statement: as sent, and with every liftable
//!   constant replaced by a distinct sentinel of the same class. The slots are where PostgreSQL's
//!   scanner finds the sentinels in the second rewrite; the template is kept only if filling it
//!   with the statement's own constants gives the first rewrite exactly, and if no sentinel's
//!   text appears in the statement or its first rewrite (else a constant the client wrote in a
//!   pinned position could pose as a sentinel and become a slot) ([`Template::learn`]).
//! - Constants are filled in spelled as the rewriter spells them (`lexical`): strings in the
//!   one standard form, numbers as PostgreSQL 15 reads them. A string holding a backslash or a
//!   NUL, or written in any other form (`E''`, `$$`, `U&''`), is not lifted at all.
//!
//! `tests/rewrite.rs` proves it differentially: for generated statements, the filled template
//! equals a fresh rewrite.

use std::collections::HashMap;
use std::ops::ControlFlow;

use pg_query::protobuf::Token as PgToken;
use sqlparser::ast::{
    BinaryOperator, DataType, Expr, LimitClause, Query, Statement, UnaryOperator, Value, Visit,
    Visitor,
};

/// Statements with more constants than this are not lifted (the sentinels number them).
const MAX_LITERALS: usize = 1000;

/// What every string sentinel starts with (see [`Class::sentinel`]).
const STRING_SENTINEL: &str = "Portcullis_Sentinel_";

/// The type class of a lifted constant: what PostgreSQL types it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Digits that fit `int4`.
    Int4,
    /// Digits that fit `int8` but not `int4`.
    Int8,
    /// A number with a `.` or an exponent, or digits beyond `int8`: `numeric`.
    Numeric,
    /// A standard string constant (type unknown until PostgreSQL resolves it).
    String,
}

impl Class {
    fn marker(self) -> char {
        match self {
            Class::Int4 => 'i',
            Class::Int8 => 'b',
            Class::Numeric => 'n',
            Class::String => 's',
        }
    }

    /// The sentinel standing for constant `i` while a template is learnt: of this class, and
    /// found nowhere else in a rewrite.
    fn sentinel(self, i: usize) -> String {
        match self {
            Class::Int4 => format!("{}", 1_987_650_000 + i),
            Class::Int8 => format!("{}", 98_765_432_100_000u64 + i as u64),
            Class::Numeric => format!("{}.25", 1_987_650_000 + i),
            Class::String => format!("'{STRING_SENTINEL}{i}_q'"),
        }
    }
}

#[derive(Debug, Clone)]
struct Literal {
    /// Byte range of the token in the statement.
    start: usize,
    end: usize,
    class: Class,
    /// The token as spelled in the forwarded text (numbers as written, strings in standard
    /// form, which is how the client wrote them: only standard strings are lifted).
    spelled: Box<str>,
}

/// A statement with its constants lifted out.
#[derive(Debug, Clone)]
pub struct Lifted<'a> {
    sql: &'a str,
    key: String,
    literals: Vec<Literal>,
}

impl Lifted<'_> {
    /// The statement's shape: its text with each lifted constant replaced by a marker of its
    /// class. Statements with the same key differ only in those constants.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The statement.
    pub fn sql(&self) -> &str {
        self.sql
    }

    /// How many constants were lifted.
    pub fn len(&self) -> usize {
        self.literals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.literals.is_empty()
    }
}

/// Reads `sql` with PostgreSQL's scanner and lifts out its number and standard string
/// constants; `None` when it has none, does not scan, or holds a NUL.
pub fn lift(sql: &str) -> Option<Lifted<'_>> {
    if sql.contains('\0') || !sql.bytes().any(|b| b.is_ascii_digit() || b == b'\'') {
        return None;
    }
    let scan = pg_query::scan(sql).ok()?;
    let mut literals = Vec::new();
    for token in &scan.tokens {
        let (start, end) = (token.start as usize, token.end as usize);
        let text = sql.get(start..end)?;
        // PostgreSQL 15 reads `5x1F` as `5 AS x1F`, sqlparser otherwise: a number glued to
        // what follows is not lifted.
        let glued = sql[end..]
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$' || c == '.');
        let class = match PgToken::from_i32(token.token) {
            Some(PgToken::Iconst) | Some(PgToken::Fconst) if !glued => number_class(text),
            Some(PgToken::Sconst) if is_plain_string(text) => Some(Class::String),
            _ => None,
        };
        if let Some(class) = class {
            literals.push(Literal {
                start,
                end,
                class,
                spelled: text.into(),
            });
        }
    }
    if literals.is_empty() || literals.len() > MAX_LITERALS {
        return None;
    }
    let mut key = String::with_capacity(sql.len());
    let mut at = 0;
    for l in &literals {
        key.push_str(&sql[at..l.start]);
        key.push('\0');
        key.push(l.class.marker());
        at = l.end;
    }
    key.push_str(&sql[at..]);
    Some(Lifted { sql, key, literals })
}

/// The class of a number token; `None` for forms not lifted. PostgreSQL 15's scanner gives
/// only decimal forms. Integers with a leading zero, and the bounds of the integer types,
/// stay in the key: a leading minus moves them into the next smaller type (`-2147483648`,
/// `-02147483648` are `int4`), which their class would not say.
fn number_class(text: &str) -> Option<Class> {
    if !crate::lexical::is_pg15_number(text) {
        return None;
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Class::Numeric);
    }
    if (text.len() > 1 && text.starts_with('0'))
        || text == "2147483648"
        || text == "9223372036854775808"
    {
        return None;
    }
    Some(if text.parse::<i32>().is_ok() {
        Class::Int4
    } else if text.parse::<i64>().is_ok() {
        Class::Int8
    } else {
        Class::Numeric
    })
}

/// `'…'` with only doubled quotes inside and no backslash: what the rewriter forwards as
/// written (`standard_conforming_strings` is pinned on).
fn is_plain_string(text: &str) -> bool {
    let Some(inner) = text.strip_prefix('\'').and_then(|t| t.strip_suffix('\'')) else {
        return false;
    };
    !inner.contains('\\') && inner.replace("''", "").find('\'').is_none()
}

/// Which of `lifted`'s constants are in data positions of `sql` (see the module comment).
/// All false when `sql` does not parse or holds anything but queries.
pub(crate) fn data_positions(lifted: &Lifted) -> Vec<bool> {
    let sql = lifted.sql;
    let mut free = vec![false; lifted.literals.len()];
    let Ok(statements) = crate::parse::parse(sql) else {
        return free;
    };
    if statements.is_empty() || !statements.iter().all(|s| matches!(s, Statement::Query(_))) {
        return free;
    }
    let mut finder = DataPositions {
        context: Vec::new(),
        found: Vec::new(),
        writes: false,
    };
    for statement in &statements {
        let _ = statement.visit(&mut finder);
    }
    // A query holding a write (`WITH d AS (DELETE …) SELECT …`) is a write's rewrite.
    if finder.writes {
        return free;
    }
    // sqlparser's locations are 1-based lines and columns counted in characters.
    let mut by_location = HashMap::new();
    let (mut line, mut column) = (1u64, 1u64);
    let mut next = lifted.literals.iter().enumerate().peekable();
    for (offset, c) in sql.char_indices() {
        while let Some((i, l)) = next.peek() {
            if l.start > offset {
                break;
            }
            if l.start == offset {
                by_location.insert((line, column), *i);
            }
            next.next();
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    for location in finder.found {
        if let Some(&i) = by_location.get(&location) {
            free[i] = true;
        }
    }
    free
}

/// Collects the locations of constants in data positions: `context` says, for each expression
/// being visited, whether its operands are in one.
struct DataPositions {
    context: Vec<bool>,
    found: Vec<(u64, u64)>,
    /// A statement other than a query is nested inside (a data-modifying WITH).
    writes: bool,
}

impl DataPositions {
    fn in_data_position(&self) -> bool {
        self.context.last().copied().unwrap_or(false)
    }

    fn constant(&mut self, value: &sqlparser::ast::ValueWithSpan) {
        if matches!(
            value.value,
            Value::Number(..) | Value::SingleQuotedString(_)
        ) {
            let start = value.span.start;
            self.found.push((start.line, start.column));
        }
    }
}

impl Visitor for DataPositions {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        if !matches!(statement, Statement::Query(_)) {
            self.writes = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(LimitClause::LimitOffset { limit, offset, .. }) = &query.limit_clause {
            for e in limit.iter().chain(offset.iter().map(|o| &o.value)) {
                if let Expr::Value(v) = e {
                    self.constant(v);
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
        let inherited = self.in_data_position();
        let operands = match expr {
            Expr::BinaryOp { op, .. } if is_comparison(op) => true,
            Expr::BinaryOp { op, .. } if is_arithmetic(op) => inherited,
            Expr::UnaryOp {
                op: UnaryOperator::Minus | UnaryOperator::Plus,
                ..
            }
            | Expr::Nested(_) => inherited,
            Expr::InList { .. } | Expr::Between { .. } | Expr::Like { .. } | Expr::ILike { .. } => {
                true
            }
            Expr::Value(v) => {
                if inherited {
                    self.constant(v);
                }
                false
            }
            Expr::TypedString(t) => {
                if inherited && is_plain_type(&t.data_type) {
                    self.constant(&t.value);
                }
                false
            }
            Expr::Interval(i) => {
                if let (true, Expr::Value(v)) = (inherited, &*i.value) {
                    self.constant(v);
                }
                false
            }
            _ => false,
        };
        self.context.push(operands);
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.context.pop();
        ControlFlow::Continue(())
    }
}

fn is_comparison(op: &BinaryOperator) -> bool {
    use BinaryOperator as B;
    matches!(op, B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq)
}

fn is_arithmetic(op: &BinaryOperator) -> bool {
    use BinaryOperator as B;
    matches!(op, B::Plus | B::Minus | B::Multiply | B::Divide | B::Modulo)
}

/// Types whose typed constants (`date '…'`) are data to the rewriter.
fn is_plain_type(t: &DataType) -> bool {
    use DataType as D;
    matches!(
        t,
        D::Date
            | D::Time(..)
            | D::Timestamp(..)
            | D::Interval { .. }
            | D::Text
            | D::Varchar(_)
            | D::Numeric(_)
            | D::Decimal(_)
            | D::Int(_)
            | D::Integer(_)
            | D::BigInt(_)
            | D::SmallInt(_)
    )
}

/// A learnt rewrite with slots for constants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// Text around the slots: `pieces.len() == slots.len() + 1`.
    pieces: Vec<Box<str>>,
    /// The lifted constant (by index) each slot is filled with.
    slots: Vec<u16>,
    /// Constants that must be exactly these (by index, as spelled) for the template to apply.
    pinned: Vec<(u16, Box<str>)>,
    /// How many constants the statement has (its key says so too; checked all the same).
    count: usize,
}

/// What [`Template::learn`] needs rewritten: the statement with sentinels for its liftable
/// constants.
pub struct Sentinels {
    pub sql: String,
    free: Vec<bool>,
}

impl Sentinels {
    /// The statement `lifted` with each constant in a data position replaced by its
    /// sentinel; `None` if none is.
    pub fn new(lifted: &Lifted) -> Option<Sentinels> {
        let (sql, free) = (lifted.sql, data_positions(lifted));
        if !free.iter().any(|&f| f) {
            return None;
        }
        let mut out = String::with_capacity(sql.len() + 16 * lifted.literals.len());
        let mut at = 0;
        for (i, l) in lifted.literals.iter().enumerate() {
            if free[i] {
                out.push_str(&sql[at..l.start]);
                out.push_str(&l.class.sentinel(i));
                at = l.end;
            }
        }
        out.push_str(&sql[at..]);
        Some(Sentinels { sql: out, free })
    }
}

impl Template {
    /// The template of a statement (`lifted`) from its rewrite (`rewritten`) and the rewrite of
    /// its sentinel form (`sentinel_rewritten`): `None` unless filling it with the statement's
    /// own constants gives `rewritten` exactly.
    pub fn learn(
        lifted: &Lifted,
        sentinels: &Sentinels,
        rewritten: &str,
        sentinel_rewritten: &str,
    ) -> Option<Template> {
        let mut slot_of = HashMap::new();
        for (i, l) in lifted.literals.iter().enumerate() {
            if sentinels.free[i] {
                slot_of.insert(l.class.sentinel(i), i as u16);
            }
        }
        // A sentinel's text anywhere in the statement or its rewrite (a constant the client
        // wrote, in any spelling, or one of the policy's) would make a slot of a position no
        // free constant fills: nothing is learnt then.
        let collides = |text: &str| {
            text.contains(STRING_SENTINEL)
                || slot_of
                    .keys()
                    .any(|sentinel| !sentinel.starts_with('\'') && text.contains(sentinel.as_str()))
        };
        if collides(lifted.sql) || collides(rewritten) {
            return None;
        }
        let scan = pg_query::scan(sentinel_rewritten).ok()?;
        let mut pieces = Vec::new();
        let mut slots = Vec::new();
        let mut at = 0;
        for token in &scan.tokens {
            let (start, end) = (token.start as usize, token.end as usize);
            let Some(&i) = sentinel_rewritten
                .get(start..end)
                .and_then(|t| slot_of.get(t))
            else {
                continue;
            };
            pieces.push(sentinel_rewritten[at..start].into());
            slots.push(i);
            at = end;
        }
        pieces.push(sentinel_rewritten[at..].into());
        let pinned = lifted
            .literals
            .iter()
            .enumerate()
            .filter(|(i, _)| !sentinels.free[*i])
            .map(|(i, l)| (i as u16, l.spelled.clone()))
            .collect();
        let template = Template {
            pieces,
            slots,
            pinned,
            count: lifted.literals.len(),
        };
        (template.fill(lifted)? == rewritten).then_some(template)
    }

    /// The rewrite of the statement `lifted` was lifted from, if this template applies to it
    /// (same number of constants, the pinned ones equal).
    pub fn fill(&self, lifted: &Lifted) -> Option<String> {
        if lifted.literals.len() != self.count {
            return None;
        }
        for (i, spelled) in &self.pinned {
            if lifted.literals[*i as usize].spelled != *spelled {
                return None;
            }
        }
        let size = self.pieces.iter().map(|p| p.len()).sum::<usize>()
            + self
                .slots
                .iter()
                .map(|&i| lifted.literals[i as usize].spelled.len())
                .sum::<usize>();
        let mut out = String::with_capacity(size);
        for (piece, &i) in self.pieces.iter().zip(&self.slots) {
            out.push_str(piece);
            out.push_str(&lifted.literals[i as usize].spelled);
        }
        out.push_str(self.pieces.last().expect("one more piece than slots"));
        Some(out)
    }

    /// Bytes held (for cache weighing).
    pub fn size(&self) -> usize {
        self.pieces.iter().map(|p| p.len() + 16).sum::<usize>()
            + self.slots.len() * 2
            + self.pinned.iter().map(|(_, p)| p.len() + 24).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constants_are_lifted_by_class_and_form() {
        let l = lift("select a from t where a = 42 and b = 'x''y' and c > 1.5 and d = 3000000000")
            .unwrap();
        assert_eq!(
            l.key(),
            "select a from t where a = \0i and b = \0s and c > \0n and d = \0b"
        );
        let same =
            lift("select a from t where a = 7 and b = '' and c > 2e3 and d = 3000000001").unwrap();
        assert_eq!(l.key(), same.key());
        // Other string forms, and the integer bounds, stay in the key.
        for sql in [
            "select 1 where x = E'a'",
            "select 1 where x = $$a$$",
            "select 1 where x = 'a\\'",
            "select 1 where x = 2147483648",
        ] {
            let l = lift(sql).unwrap();
            assert_eq!(l.len(), 1, "{sql}: only the 1 is lifted");
        }
        assert!(lift("select a from t").is_none());
        // Comments and identifiers are not constants.
        let l = lift("select \"1\" from t -- 'x'\nwhere a = /* 2 */ 3").unwrap();
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn only_data_positions_are_free() {
        let cases: &[(&str, &[bool])] = &[
            (
                "select a from t where a = 1 and b in (2, 'x') and c between 3 and -4 limit 5 offset 6",
                &[true, true, true, true, true, true, true],
            ),
            ("select f(1) from t where a = g(2) + 3", &[false, false, true]),
            ("select a from t order by 1", &[false]),
            ("select a from t where a = '7'::int", &[false]),
            (
                "select set_config('search_path', 'x', false) = 'y'",
                &[false, false, true],
            ),
            (
                "select a from t where d >= date '1994-01-01' + interval '3' month",
                &[true, true],
            ),
            ("set work_mem = '64MB'", &[false]),
            ("select 1; update t set a = 2 where b = 3", &[false, false, false]),
            ("select a from t\nwhere b like 'x%' and\n  c = 2", &[true, true]),
        ];
        for (sql, expected) in cases {
            let l = lift(sql).unwrap();
            assert_eq!(data_positions(&l), *expected, "{sql}");
        }
    }

    #[test]
    fn a_template_fills_in_new_constants() {
        let sql = "select a from t where a = 42 and b = 'it''s'";
        let l = lift(sql).unwrap();
        let s = Sentinels::new(&l).unwrap();
        // A stand-in for the rewriter: the condition copied into a fence.
        let rewrite = |q: &str| {
            let cond = &q[q.find("where ").unwrap() + 6..];
            format!("SELECT a FROM (SELECT * FROM t WHERE {cond} OFFSET 0) t WHERE {cond}")
        };
        let t = Template::learn(&l, &s, &rewrite(sql), &rewrite(&s.sql)).unwrap();
        let other = "select a from t where a = 7 and b = 'x'";
        assert_eq!(t.fill(&lift(other).unwrap()).unwrap(), rewrite(other));
        // A rewrite that depends on the constant's value is not learnt.
        let odd = |q: &str| {
            if q.contains("42") {
                "A".into()
            } else {
                q.to_uppercase()
            }
        };
        assert!(Template::learn(&l, &s, &odd(sql), &odd(&s.sql)).is_none());
    }

    #[test]
    fn a_constant_posing_as_a_sentinel_is_never_a_slot() {
        // The pinned setting name is the free constant's sentinel: filling the "slot" would
        // let the next statement name any setting.
        for sql in [
            "select current_setting('Portcullis_Sentinel_1_q', true) where 'Portcullis_Sentinel_1_q' <> 'x'",
            "select current_setting(E'Portcullis\\x5fSentinel_1_q', true) where 'a' <> 'Portcullis_Sentinel_1_q'",
            "select f(1987650001) where 1987650001 = 5",
        ] {
            let l = lift(sql).unwrap();
            let s = Sentinels::new(&l).unwrap();
            // An identity "rewrite", as the gate is for these.
            let decoded = sql.replace("E'Portcullis\\x5fSentinel_1_q'", "'Portcullis_Sentinel_1_q'");
            let sentinel_form = s.sql.replace("E'Portcullis\\x5fSentinel_1_q'", "'Portcullis_Sentinel_1_q'");
            assert!(Template::learn(&l, &s, &decoded, &sentinel_form).is_none(), "{sql}");
        }
    }

    #[test]
    fn numbers_a_minus_would_retype_are_not_lifted() {
        for sql in [
            "select 1 where a = -02147483648",
            "select 1 where a = -2147483648",
            "select 1 where a = 5x1F",
        ] {
            assert_eq!(lift(sql).unwrap().len(), 1, "{sql}: only the 1 is lifted");
        }
        let l = lift("select 1 where a = 0 and b = 10").unwrap();
        assert_eq!(l.len(), 3);
    }

    #[test]
    fn a_write_inside_a_query_pins_everything() {
        let sql =
            "with d as (delete from t where id = 5 returning id) select id from d where id = 6";
        let l = lift(sql).unwrap();
        assert_eq!(data_positions(&l), [false, false]);
    }

    #[test]
    fn pinned_constants_must_match() {
        let sql = "select f(1) from t where a = 2";
        let l = lift(sql).unwrap();
        let s = Sentinels::new(&l).unwrap();
        let t = Template::learn(&l, &s, sql, &s.sql).unwrap();
        assert_eq!(
            t.fill(&lift("select f(1) from t where a = 9").unwrap())
                .unwrap(),
            "select f(1) from t where a = 9"
        );
        assert!(t
            .fill(&lift("select f(5) from t where a = 9").unwrap())
            .is_none());
    }
}
