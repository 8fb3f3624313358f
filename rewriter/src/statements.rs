//! Which statements an agent may run when policy is enforced, and how each is protected:
//! queries (also under EXPLAIN and COPY … TO STDOUT) are rewritten, session and transaction
//! control passes, cursors' queries are rewritten at DECLARE, writes are checked against policy
//! (MERGE too; see [`crate::writes`]), and everything else is refused — DDL,
//! SQL-level PREPARE/EXECUTE (the statement would outlive a policy reload unseen: protocol-level
//! prepared statements, which the proxy re-prepares, serve instead), LISTEN/NOTIFY, and the rest.

use sqlparser::ast::{CopySource, Expr, Ident, Statement, UtilityOption};

use crate::catalog::quote_ident;
use crate::protect::{protect, Read};
use crate::{Context, Refusal};

/// EXPLAIN options that only describe the plan, without running the statement.
const EXPLAIN_OPTIONS: &[&str] = &[
    "verbose",
    "costs",
    "settings",
    "generic_plan",
    "summary",
    "format",
];

/// Plain EXPLAIN runs with `COSTS OFF` under enforcement. A plan's costs and row estimates
/// come from whole-table statistics, and the agent may change the cost settings
/// (`SET cpu_tuple_cost = 1` and the rest to 0 make a scan's cost its table's row count): with
/// costs shown, EXPLAIN would count the rows the policy hides. The plan's shape (which index,
/// which join) is still shown.
fn costs_off(verbose: &mut bool, options: &mut Option<Vec<UtilityOption>>) {
    let options = options.get_or_insert_with(Vec::new);
    options.retain(|o| crate::catalog::normalize(&o.name) != "costs");
    if std::mem::take(verbose) {
        options.push(UtilityOption {
            name: Ident::new("VERBOSE"),
            arg: None,
        });
    }
    options.push(UtilityOption {
        name: Ident::new("COSTS"),
        arg: Some(Expr::Identifier(Ident::new("OFF"))),
    });
}

pub(crate) fn rewrite(statement: &mut Statement, ctx: &Context<'_>) -> Result<Vec<Read>, Refusal> {
    match statement {
        Statement::Query(_) => {
            // Writing WITH queries are checked as writes, then set aside while the query is
            // protected.
            let (writes, mut reads) = crate::write_ctes::WritingCtes::take(statement, ctx)?;
            reads.extend(protect(statement, ctx)?);
            writes.restore(statement);
            Ok(reads)
        }
        Statement::Explain {
            statement: inner,
            analyze,
            verbose,
            options,
            ..
        } => {
            if !*analyze {
                costs_off(verbose, options);
            }
            match &mut **inner {
            // EXPLAIN ANALYZE runs the query and reports how many rows each filter removed:
            // the policy filter's count is the number of rows the agent may not see.
            // Options are allow-listed (PostgreSQL also reads `ANALYSE`, and later releases add
            // options): only those that do not run the statement pass.
            _ if *analyze
                || options.iter().flatten().any(|o| {
                    !EXPLAIN_OPTIONS.contains(&crate::catalog::normalize(&o.name).as_str())
                }) =>
            {
                Err(Refusal::Forbidden(
                    "EXPLAIN ANALYZE, or an EXPLAIN option other than VERBOSE, COSTS, SETTINGS, \
                     GENERIC_PLAN, SUMMARY or FORMAT (row counts of an executed plan include \
                     rows the policy hides)"
                        .into(),
                ))
            }
            Statement::Query(_) => protect(statement, ctx),
            // Plain EXPLAIN does not run the write: it shows the plan of the checked write.
            Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) => {
                crate::writes::rewrite(inner, ctx)
            }
            _ => Err(Refusal::Unsupported(
                "EXPLAIN of anything but a query or a write".into(),
            )),
            }
        }
        Statement::Copy { source, .. } => {
            if let CopySource::Table {
                table_name,
                columns,
            } = source
            {
                // `COPY t [(cols)] TO STDOUT` becomes `COPY (SELECT … FROM t) TO STDOUT`.
                let cols = if columns.is_empty() {
                    "*".to_string()
                } else {
                    columns
                        .iter()
                        .map(|c| quote_ident(&crate::catalog::normalize(c)))
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                let query = crate::parse::built(
                    &format!("SELECT {cols} FROM {}", crate::lexical::to_sql(table_name)?),
                    "COPY of this table",
                    |p| p.parse_query(),
                )?;
                *source = CopySource::Query(query);
            }
            protect(statement, ctx)
        }
        // search_path is checked with `set_config` (`settings::check_search_path`).
        Statement::Set(_)
        | Statement::Reset(_)
        | Statement::ShowVariable { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. } => Ok(Vec::new()),
        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_) => crate::writes::rewrite(statement, ctx),
        Statement::Prepare { .. } | Statement::Execute { .. } => Err(Refusal::Forbidden(
            "SQL-level PREPARE/EXECUTE (use the protocol's prepared statements)".into(),
        )),
        // A cursor's query is rewritten at DECLARE, like any query; FETCH and CLOSE only read
        // what it yields. (It runs under the policy current at DECLARE, as a portal does.)
        Statement::Declare { stmts }
            if stmts.iter().all(|d| {
                matches!(d.declare_type, Some(sqlparser::ast::DeclareType::Cursor))
                    && d.for_query.is_some()
                    && d.data_type.is_none()
                    && d.assignment.is_none()
            }) =>
        {
            protect(statement, ctx)
        }
        Statement::Declare { .. } => Err(Refusal::Unsupported("this DECLARE form".into())),
        Statement::Fetch { into: None, .. } | Statement::Close { .. } => Ok(Vec::new()),
        Statement::Fetch { .. } => Err(Refusal::Unsupported("FETCH … INTO".into())),
        Statement::LISTEN { .. } | Statement::NOTIFY { .. } | Statement::UNLISTEN { .. } => {
            Err(Refusal::Forbidden("LISTEN/NOTIFY".into()))
        }
        other => Err(Refusal::Forbidden(format!(
            "{} is not allowed through Portcullis",
            kind(other)
        ))),
    }
}

/// The statement's leading keywords (`CREATE TABLE`, `TRUNCATE`), for messages.
fn kind(statement: &Statement) -> String {
    statement
        .to_string()
        .split_whitespace()
        .take_while(|w| w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}
