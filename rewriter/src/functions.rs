//! Function guard: functions that execute SQL text the gate never sees (`query_to_xml`,
//! `ts_stat`, `dblink`, …) are refused, whatever schema qualifies them, and so is creating
//! functions, procedures and triggers, whose bodies are SQL the gate never parses. This is the
//! gate-only mode's guard; with policy enforced, `catalogs.rs` allow-lists functions (and denies
//! these too).

use std::ops::ControlFlow;

use sqlparser::ast::{visit_expressions, visit_relations, Expr, ObjectName, Statement};

use crate::Refusal;

/// Functions whose arguments are SQL text that PostgreSQL will run.
pub(crate) const EXECUTES_SQL: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "ts_stat",
    "ts_rewrite",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_send_query",
];

pub(crate) fn check(statement: &Statement) -> Result<(), Refusal> {
    if matches!(
        statement,
        Statement::CreateFunction(_)
            | Statement::CreateProcedure { .. }
            | Statement::CreateTrigger(_)
    ) {
        return Err(Refusal::Forbidden(
            "creating functions, procedures or triggers (their bodies run SQL Portcullis cannot check)".into(),
        ));
    }
    // Calls in expressions…
    let flow = visit_expressions(statement, |expr| match expr {
        Expr::Function(f) => refuse_if_executes_sql(&f.name),
        _ => ControlFlow::Continue(()),
    });
    if let ControlFlow::Break(e) = flow {
        return Err(e);
    }
    // …and set-returning calls in FROM, which sqlparser treats as relations.
    match visit_relations(statement, refuse_if_executes_sql) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

fn refuse_if_executes_sql(name: &ObjectName) -> ControlFlow<Refusal> {
    let last = name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.to_ascii_lowercase())
        .unwrap_or_default();
    if EXECUTES_SQL.contains(&last.as_str()) {
        return ControlFlow::Break(Refusal::Forbidden(format!(
            "{last}() runs SQL text that Portcullis cannot check"
        )));
    }
    ControlFlow::Continue(())
}

#[cfg(test)]
mod tests {
    use crate::{check, Protocol};

    #[test]
    fn sql_executing_functions_are_refused_wherever_they_appear() {
        for sql in [
            "SELECT query_to_xml('select 1', true, true, '')",
            "SELECT pg_catalog.query_to_xml('select 1', true, true, '')",
            "SELECT 1 WHERE \"QUERY_TO_XML\"('x', true, true, '') IS NOT NULL",
            "SELECT * FROM ts_stat('select v from t')",
            "SELECT (SELECT table_to_xml('customers', true, true, ''))",
            "SELECT * FROM dblink('host=x', 'select 1') AS t(a int)",
        ] {
            let e = check(sql, Protocol::Simple).unwrap_err();
            assert_eq!(e.sqlstate(), "42501", "{sql}");
        }
        assert!(check(
            "SELECT upper('x'), g FROM generate_series(1, 3) AS g",
            Protocol::Simple
        )
        .is_ok());
    }
}
