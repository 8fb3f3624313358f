//! The statement gate and rewriter: parse SQL with PostgreSQL's dialect, refuse what is not
//! allowed, rewrite every read of a protected relation into its filtered, masked, fenced view,
//! and return the text to forward, re-serialized from the AST (never the client's text with
//! edits).
//!
//! This crate is pure: no I/O, no async. The proxy calls [`rewrite`] (policy enforced) or
//! [`check`] (gate only, when no policy set is configured) for every simple-protocol Query and
//! every extended-protocol Parse.

mod cache;
mod catalog;
mod catalogs;
mod copy;
mod error;
mod fence;
mod functions;
mod identity;
mod lexical;
mod locking;
mod nodes;
mod parse;
mod policy;
mod protect;
mod pushdown;
mod qualified;
mod redact;
mod search_path;
mod settings;
mod shape;
mod sql_filter;
mod statements;
mod table_shorthand;
mod vector_filter;
mod vector_request;
mod verify;
mod write_ctes;
mod writes;

pub use cache::{RewriteCache, ShapeCache};
pub use catalog::{quote_ident, Catalog, Column, Operator, RelKind, Relation, RoutineKind};
pub use catalogs::allowed_functions;
pub use error::Refusal;
pub use policy::{Policies, TablePolicy, WriteAction, WritePolicy};
pub use protect::Read;
pub use redact::redact_literals;
pub use shape::{lift, Lifted, Sentinels, Template};
pub use sql_filter::render as render_filter;
pub use vector_filter::{qdrant_filter, VectorFilterError};
pub use vector_request::{
    and_filter, field_path, filter_fields, ids_filter, order_by_field, payload_edits,
    project_payload, restrict_count, restrict_filtered, restrict_query, PayloadEdits, Projected,
    VectorRefusal,
};
pub use verify::{postgres_reading, Reading};

use sqlparser::ast::Statement;

/// Starts the text of the error a rewritten write raises when a row it would write violates
/// policy (the write's check casts this text to an integer, so PostgreSQL aborts the statement
/// with an input-syntax error carrying it); the proxy turns that error into 42501.
pub const VIOLATION_MARKER: &str = "portcullis-policy-violation: ";

/// Which wire-protocol message carried the SQL text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// A simple-protocol `Query` message: zero or more statements separated by `;`.
    Simple,
    /// An extended-protocol `Parse` message: at most one statement, `$n` parameters.
    Extended,
}

/// A statement (or several) the gate accepted, ready to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The SQL to send upstream, serialized from the checked AST.
    pub sql: String,
    /// How many statements `sql` holds (0 for an empty query).
    pub statements: usize,
    /// A fingerprint of what the rewrite exposes of each relation (its fenced columns): when
    /// it changes, a prepared statement's result columns may have changed. 0 without policy.
    pub shape: u64,
    /// What the statements do to protocol-level prepared statements (which the proxy names
    /// upstream on the client's behalf).
    pub prepared: PreparedEffect,
    /// Under enforcement: the statements may change the session's search_path.
    pub search_path_changes: bool,
    /// What the decision rested on, for the audit log (attached by the proxy under
    /// enforcement: the policy version and each relation's filter, masks and policies).
    pub basis: Option<std::sync::Arc<serde_json::Value>>,
}

/// The effect of SQL-level `DEALLOCATE` / `DISCARD ALL` on prepared statements.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PreparedEffect {
    #[default]
    None,
    /// `DEALLOCATE ALL` or `DISCARD ALL`: every prepared statement is gone.
    DropAll,
    /// `DEALLOCATE name`, the message's only statement: that statement is gone.
    Drop(String),
}

/// What `statements` do to prepared statements; `DEALLOCATE name` must come alone (the proxy
/// replaces the statement with one naming the upstream statement).
fn prepared_effect(statements: &[Statement]) -> Result<PreparedEffect, Refusal> {
    let mut effect = PreparedEffect::None;
    for statement in statements {
        match statement {
            Statement::Deallocate { name, .. }
                if name.quote_style.is_none() && name.value.eq_ignore_ascii_case("all") =>
            {
                effect = PreparedEffect::DropAll;
            }
            Statement::Discard {
                object_type: sqlparser::ast::DiscardObject::ALL,
            } => effect = PreparedEffect::DropAll,
            Statement::Deallocate { .. } if statements.len() > 1 => {
                return Err(Refusal::Unsupported(
                    "DEALLOCATE of one statement together with other statements (send it alone)"
                        .into(),
                ))
            }
            Statement::Deallocate { name, .. } => {
                effect = PreparedEffect::Drop(catalog::normalize(name));
            }
            _ => {}
        }
    }
    Ok(effect)
}

/// Parses, checks and re-serializes `sql`.
///
/// Returns the text to forward, or the reason it must be refused. The returned text is what
/// PostgreSQL will execute, so every check here applies to exactly what runs.
pub fn check(sql: &str, protocol: Protocol) -> Result<Checked, Refusal> {
    let statements = parse::parse(sql)?;
    if protocol == Protocol::Extended && statements.len() > 1 {
        return Err(Refusal::Syntax(
            "cannot insert multiple commands into a prepared statement".into(),
        ));
    }
    for statement in &statements {
        check_statement(statement)?;
    }
    let count = statements.len();
    Ok(Checked {
        sql: forward(statements, false, Vec::new(), Vec::new())?,
        statements: count,
        shape: 0,
        prepared: PreparedEffect::None,
        search_path_changes: false,
        basis: None,
    })
}

/// What the rewriter needs of the session: the catalog, the search_path names resolve with, and
/// the policy of the session's agent at the current version.
pub struct Context<'a> {
    pub catalog: &'a Catalog,
    pub search_path: &'a [String],
    pub policies: &'a dyn Policies,
    /// The agent's id: what `current_user` and `session_user` report.
    pub agent: &'a str,
}

/// A statement (or several) rewritten under policy, ready to forward.
#[derive(Debug, Clone)]
pub struct Rewritten {
    /// The SQL to send upstream.
    pub sql: String,
    /// How many statements `sql` holds.
    pub statements: usize,
    /// The protected relations read, with the rules applied (for audit and explain).
    pub reads: Vec<Read>,
    /// What the statements do to protocol-level prepared statements.
    pub prepared: PreparedEffect,
    /// The statements may change the session's search_path (`SET`, `RESET`, `set_config`,
    /// `DISCARD ALL`): the proxy reads it back after them.
    pub search_path_changes: bool,
}

/// Parses, checks and rewrites `sql` so that it can only read what `ctx`'s policy allows.
pub fn rewrite(sql: &str, protocol: Protocol, ctx: &Context<'_>) -> Result<Rewritten, Refusal> {
    let mut statements = parse::parse(sql)?;
    if protocol == Protocol::Extended && statements.len() > 1 {
        return Err(Refusal::Syntax(
            "cannot insert multiple commands into a prepared statement".into(),
        ));
    }
    qualified::strip_current_database(&mut statements, ctx);
    lexical::refuse_reserved_names(&mut statements)?;
    let prepared = prepared_effect(&statements)?;
    // The proxy names upstream statements itself and keeps idle ones for reuse: what these
    // drop is accounted for only when they come as a simple Query.
    if protocol == Protocol::Extended && prepared != PreparedEffect::None {
        return Err(Refusal::Unsupported(
            "DEALLOCATE and DISCARD ALL in a prepared statement (send them as a simple query)"
                .into(),
        ));
    }
    let mut reads = Vec::new();
    // Names resolve with the search_path in effect when each statement runs: a SET applies to
    // the statements after it in the same Query.
    let mut path: Vec<String> = ctx.search_path.to_vec();
    // Every schema any statement may resolve routines in: the login's, the session's and
    // those set here (see `verify`'s overload check).
    let mut routine_path: Vec<String> = ctx.catalog.search_path().to_vec();
    let mut search_path_changes = false;
    let count = statements.len();
    for (i, statement) in statements.iter_mut().enumerate() {
        let next = {
            let ctx = Context {
                search_path: &path,
                ..*ctx
            };
            settings::check(statement)?;
            copy::check(statement)?;
            let effect = search_path::effect(statement, &ctx)?;
            settings::check_reads(statement)?;
            identity::report_agent(statement, ctx.agent);
            write_ctes::inline(statement)?;
            qualified::shorten(statement, &ctx)?;
            reads.extend(statements::rewrite(statement, &ctx)?);
            match effect {
                search_path::Effect::None => None,
                search_path::Effect::Set(p) => Some(p),
                search_path::Effect::Reset => Some(ctx.catalog.search_path().to_vec()),
                search_path::Effect::Maybe if i + 1 < count => {
                    return Err(Refusal::Unsupported(
                        "set_config('search_path', …) followed by other statements in one \
                         query (send them separately, or use SET)"
                            .into(),
                    ))
                }
                search_path::Effect::Maybe => {
                    search_path_changes = true;
                    None
                }
            }
        };
        routine_path.extend(path.iter().cloned());
        if let Some(p) = next {
            search_path_changes = true;
            path = p;
        }
    }
    routine_path.extend(path);
    let user_routines = ctx.catalog.user_routines_on_path(&routine_path);
    let user_functions = ctx.catalog.user_functions();
    Ok(Rewritten {
        sql: forward(statements, true, user_routines, user_functions)?,
        statements: count,
        reads,
        prepared,
        search_path_changes,
    })
}

fn check_statement(statement: &Statement) -> Result<(), Refusal> {
    settings::check(statement)?;
    copy::check(statement)?;
    functions::check(statement)?;
    Ok(())
}

/// The text to forward for the checked `statements`: every token spelled by Portcullis (see
/// [`lexical`]), then read back by PostgreSQL's own parser and compared with what was checked
/// (see [`verify`]). A disagreement refuses the statement; nothing unproven is forwarded.
/// `fenced`: relations were fenced (enforcement), so PostgreSQL must read no other.
/// `user_routines`: the user-defined routines on the session's search_path (enforcement),
/// whose names the statement may not use unqualified; `user_functions`: every user-defined
/// function, which `x.f` (functional notation) may not name.
fn forward(
    mut statements: Vec<Statement>,
    fenced: bool,
    user_routines: Vec<(RoutineKind, String, String)>,
    user_functions: Vec<(String, String)>,
) -> Result<String, Refusal> {
    let (relations, functions) = verify::references(&statements);
    let mut expected = verify::Expected {
        statements: statements.len(),
        relations: fenced.then_some(relations),
        functions,
        user_routines,
        user_functions,
        ..Default::default()
    };
    for statement in &mut statements {
        let spelled = lexical::spell(statement)?;
        expected.spelled.literals.extend(spelled.literals);
        expected.spelled.quoted_idents.extend(spelled.quoted_idents);
    }
    let sql = serialize(&statements);
    verify::verify(&sql, &expected)?;
    Ok(sql)
}

fn serialize(statements: &[Statement]) -> String {
    let mut out = String::new();
    for (i, statement) in statements.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&statement.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserializes_a_plain_select() {
        let c = check("select  a ,b from t where a=$1", Protocol::Extended).unwrap();
        assert_eq!(c.sql, "SELECT a, b FROM t WHERE a = $1");
        assert_eq!(c.statements, 1);
    }

    #[test]
    fn keeps_several_statements_in_a_simple_query() {
        let c = check("select 1; select 2;", Protocol::Simple).unwrap();
        assert_eq!(c.sql, "SELECT 1; SELECT 2");
        assert_eq!(c.statements, 2);
    }

    #[test]
    fn refuses_several_statements_in_a_parse() {
        let e = check("select 1; select 2", Protocol::Extended).unwrap_err();
        assert_eq!(e.sqlstate(), "42601");
    }

    #[test]
    fn empty_query_is_empty() {
        for q in ["", "  ", ";", " ; ;"] {
            let c = check(q, Protocol::Simple).unwrap();
            assert_eq!(c.statements, 0, "{q:?}");
            assert_eq!(c.sql, "");
        }
    }

    #[test]
    fn unparseable_is_refused_not_forwarded() {
        let e = check("SELEC 1", Protocol::Simple).unwrap_err();
        assert_eq!(e.sqlstate(), "42601");
        assert!(e.to_string().contains("could not parse"), "{e}");
    }

    #[test]
    fn a_hidden_second_statement_in_a_comment_is_not_forwarded() {
        let c = check("select 1 -- ; drop table t\n", Protocol::Simple).unwrap();
        assert_eq!(c.sql, "SELECT 1");
        let c = check("select 1 /* ; drop table t */", Protocol::Simple).unwrap();
        assert_eq!(c.sql, "SELECT 1");
    }

    #[test]
    fn string_literals_are_reserialized_with_standard_quoting() {
        let c = check(r"select 'it''s', 'a\b'", Protocol::Simple).unwrap();
        assert_eq!(c.sql, r"SELECT 'it''s', 'a\b'");
    }

    #[test]
    fn gate_only_mode_passes_utility_statements_but_not_raw_printed_text() {
        // sqlparser does not visit these names as relations; without fences there is nothing
        // to compare them with.
        for sql in [
            "GRANT SELECT ON foo TO bar",
            "VACUUM foo",
            "CREATE TEMP TABLE t2 (LIKE foo)",
        ] {
            check(sql, Protocol::Simple).unwrap();
        }
        // sqlparser prints a COMMENT's text raw: PostgreSQL's scanner would read other
        // constants, so it is refused rather than forwarded.
        let e = check(
            r"COMMENT ON TABLE foo IS 'x'; DROP TABLE foo; --'",
            Protocol::Simple,
        )
        .unwrap_err();
        assert_eq!(e.sqlstate(), "42501", "{e}");
    }

    #[test]
    fn one_refused_statement_refuses_the_message() {
        let e = check("select 1; set role postgres; select 2", Protocol::Simple).unwrap_err();
        assert_eq!(e.sqlstate(), "42501");
    }
}
