//! Session-state guard: an agent may not change who it is (`SET ROLE`, `SET SESSION
//! AUTHORIZATION`) nor the settings that change how SQL is lexed (`standard_conforming_strings`,
//! `client_encoding` other than UTF8), nor anything in Portcullis's own `portcullis.` namespace —
//! by `SET`, `RESET` or `set_config()`.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions, visit_relations, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    ObjectName, Reset, Set, Statement, Value,
};

use crate::Refusal;

/// Settings whose change is refused outright.
const PINNED: &[&str] = &[
    "role",
    "session_authorization",
    "standard_conforming_strings",
];

pub(crate) fn check(statement: &Statement) -> Result<(), Refusal> {
    match statement {
        Statement::Set(set) => check_set(set)?,
        Statement::Reset(reset) => match &reset.reset {
            Reset::SessionAuthorization => return Err(identity_refusal()),
            Reset::ConfigurationParameter(name) => check_reset_name(name)?,
            // RESET ALL returns every setting to its session default; the lexing settings'
            // defaults are the values Portcullis pinned at connection start.
            Reset::ALL => {}
        },
        _ => {}
    }
    check_set_config_calls(statement)
}

fn check_set(set: &Set) -> Result<(), Refusal> {
    match set {
        Set::SetRole { .. } | Set::SetSessionAuthorization(_) => Err(identity_refusal()),
        Set::SingleAssignment {
            variable, values, ..
        } => check_assignment(&setting_name(variable), values.first()),
        Set::MultipleAssignments { assignments } => assignments
            .iter()
            .try_for_each(|a| check_assignment(&setting_name(&a.name), Some(&a.value))),
        Set::ParenthesizedAssignments { variables, values } => variables
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_assignment(&setting_name(v), values.get(i))),
        Set::SetNames { charset_name, .. } => check_encoding(Some(&charset_name.value)),
        Set::SetNamesDefault {} => Ok(()),
        Set::SetTimeZone { .. } | Set::SetTransaction { .. } => Ok(()),
        Set::SetSessionParam(_) => Err(Refusal::Unsupported("SQL Server session options".into())),
    }
}

fn check_assignment(name: &str, value: Option<&Expr>) -> Result<(), Refusal> {
    if PINNED.contains(&name) || name.starts_with("portcullis.") {
        return Err(pinned_refusal(name));
    }
    if name == "client_encoding" {
        return check_encoding(value.and_then(literal_text).as_deref());
    }
    Ok(())
}

fn check_reset_name(name: &ObjectName) -> Result<(), Refusal> {
    let name = setting_name(name);
    if name == "role" || name == "session_authorization" {
        return Err(identity_refusal());
    }
    if name.starts_with("portcullis.") {
        return Err(pinned_refusal(&name));
    }
    // Resetting a lexing setting returns it to the value pinned at connection start.
    Ok(())
}

fn check_encoding(value: Option<&str>) -> Result<(), Refusal> {
    match value.map(normalize_encoding) {
        Some(v) if v == "utf8" || v == "unicode" => Ok(()),
        _ => Err(Refusal::Forbidden(
            "client_encoding is pinned to UTF8 by Portcullis".into(),
        )),
    }
}

/// The arguments of `expr` when it calls a function named `function` (in any schema):
/// `Some(&[])` for a call without an argument list.
fn call_args<'e>(expr: &'e Expr, function: &str) -> Option<&'e [FunctionArg]> {
    let Expr::Function(f) = expr else {
        return None;
    };
    let named = f
        .name
        .0
        .last()
        .and_then(|p| p.as_ident())
        .is_some_and(|i| i.value.eq_ignore_ascii_case(function));
    match (&f.args, named) {
        (FunctionArguments::List(list), true) => Some(&list.args),
        (_, true) => Some(&[]),
        _ => None,
    }
}

/// The `i`th argument, when it is a string constant.
fn constant_arg(args: &[FunctionArg], i: usize) -> Option<String> {
    match args.get(i) {
        Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e))) => string_constant(e),
        _ => None,
    }
}

/// `set_config('name', value, is_local)` changes a setting like `SET` does; the name must be a
/// literal, so that the gate can see which setting it is.
fn check_set_config_calls(statement: &Statement) -> Result<(), Refusal> {
    let flow = visit_expressions(statement, |expr| {
        let Some(args) = call_args(expr, "set_config") else {
            return ControlFlow::Continue(());
        };
        // A string constant: an identifier here is a column, whose value the gate cannot see
        // (`set_config(name, …) FROM (SELECT 'role' AS name) s` would set the role).
        let Some(name) = constant_arg(args, 0) else {
            return ControlFlow::Break(Refusal::Forbidden(
                "set_config needs a string constant as the setting name".into(),
            ));
        };
        let name = name.to_ascii_lowercase();
        // Likewise the value: only a string constant is read as one (for client_encoding).
        let value = match args.get(1) {
            Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(e @ Expr::Value(_)))) => Some(e),
            _ => None,
        };
        match check_assignment(&name, value) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    });
    if let ControlFlow::Break(e) = flow {
        return Err(e);
    }
    // `FROM set_config(...)` is a relation to sqlparser, without its arguments in view: refused.
    let flow = visit_relations(statement, |name| {
        let is_set_config = name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .is_some_and(|i| i.value.eq_ignore_ascii_case("set_config"));
        if is_set_config {
            ControlFlow::Break(Refusal::Forbidden("set_config as a table function".into()))
        } else {
            ControlFlow::Continue(())
        }
    });
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Settings that tell where and how the upstream server runs (its address, files, commands):
/// not the agent's business. Under enforcement `SHOW` and `current_setting` refuse them (and
/// `SHOW ALL`); `pg_settings` is not readable.
const SERVER_SETTINGS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "unix_socket_group",
    "unix_socket_permissions",
    "data_directory",
    "config_file",
    "hba_file",
    "ident_file",
    "external_pid_file",
    "cluster_name",
    "log_directory",
    "log_filename",
    "ssl_cert_file",
    "ssl_key_file",
    "ssl_ca_file",
    "ssl_crl_file",
    "ssl_crl_dir",
    "krb_server_keyfile",
    "archive_command",
    "archive_library",
    "restore_command",
    "primary_conninfo",
    "primary_slot_name",
    "shared_preload_libraries",
    "dynamic_library_path",
    "data_directory_mode",
];

/// Under enforcement: settings are read (`SHOW`, `current_setting('name')`) by constant name,
/// and not those of [`SERVER_SETTINGS`].
/// The `portcullis.` settings are Portcullis's own (the key of hash masks among them).
fn own(name: &str) -> Refusal {
    Refusal::Forbidden(format!(
        "the setting {name} belongs to Portcullis; it is not readable by agents"
    ))
}

pub(crate) fn check_reads(statement: &Statement) -> Result<(), Refusal> {
    let refuse = |name: &str| {
        Refusal::Forbidden(format!(
            "the setting {name} tells where the database server runs; it is not readable \
             through Portcullis"
        ))
    };
    if let Statement::ShowVariable { variable } = statement {
        let name = variable
            .iter()
            .map(|i| i.value.to_ascii_lowercase())
            .collect::<Vec<_>>()
            .join(" ");
        if name == "all" || SERVER_SETTINGS.contains(&name.as_str()) {
            return Err(refuse(&name));
        }
        if name.starts_with("portcullis.") {
            return Err(own(&name));
        }
    }
    let flow = visit_expressions(statement, |expr| {
        let Some(args) = call_args(expr, "current_setting") else {
            return ControlFlow::Continue(());
        };
        match constant_arg(args, 0).map(|n| n.to_ascii_lowercase()) {
            Some(n) if n.starts_with("portcullis.") => ControlFlow::Break(own(&n)),
            Some(n) if !SERVER_SETTINGS.contains(&n.as_str()) => ControlFlow::Continue(()),
            Some(n) => ControlFlow::Break(refuse(&n)),
            None => ControlFlow::Break(Refusal::Forbidden(
                "current_setting needs a string constant as the setting name".into(),
            )),
        }
    });
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The `set_config('name', value, …)` calls of `statement`: each setting's name (literal: the
/// gate refuses others), lower case, and its value when that is a string constant.
pub(crate) fn set_config_calls(statement: &Statement) -> Vec<(String, Option<String>)> {
    let mut calls = Vec::new();
    let _ = visit_expressions(statement, |expr| {
        if let Some(name) = call_args(expr, "set_config").and_then(|args| {
            constant_arg(args, 0).map(|name| (name.to_ascii_lowercase(), constant_arg(args, 1)))
        }) {
            calls.push(name);
        }
        ControlFlow::<()>::Continue(())
    });
    calls
}

/// The names a `SET` assigns, as PostgreSQL reads them (lower case, quotes dropped).
pub(crate) fn assigned(set: &Set) -> Vec<String> {
    match set {
        Set::SingleAssignment { variable, .. } => vec![setting_name(variable)],
        Set::MultipleAssignments { assignments } => {
            assignments.iter().map(|a| setting_name(&a.name)).collect()
        }
        Set::ParenthesizedAssignments { variables, .. } => {
            variables.iter().map(setting_name).collect()
        }
        _ => Vec::new(),
    }
}

/// A setting's name as PostgreSQL compares it: dotted, case-insensitive (even when quoted).
pub(crate) fn setting_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(|i| i.value.to_ascii_lowercase())
                .unwrap_or_else(|| p.to_string().to_ascii_lowercase())
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// The text of a string literal or bare identifier (`SET client_encoding TO utf8`).
/// The text of a string constant.
pub(crate) fn string_constant(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::UnicodeStringLiteral(s) => Some(s.clone()),
            Value::DollarQuotedString(d) => Some(d.value.clone()),
            _ => None,
        },
        _ => None,
    }
}

/// A `SET` value as text: a string constant, or a bare word (`SET client_encoding = utf8`).
fn literal_text(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(s.clone()),
            _ => None,
        },
        Expr::Identifier(i) => Some(i.value.clone()),
        _ => None,
    }
}

fn normalize_encoding(name: &str) -> String {
    name.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect::<String>()
        .to_ascii_lowercase()
}

fn identity_refusal() -> Refusal {
    Refusal::Forbidden("an agent cannot change its role or session authorization".into())
}

fn pinned_refusal(name: &str) -> Refusal {
    Refusal::Forbidden(format!(
        "the setting \"{name}\" cannot be changed through Portcullis"
    ))
}

#[cfg(test)]
mod tests {
    use crate::{check, Protocol};

    fn refused(sql: &str) -> bool {
        check(sql, Protocol::Simple).is_err()
    }

    #[test]
    fn identity_changes_are_refused() {
        for sql in [
            "SET ROLE postgres",
            "set local role postgres",
            "SET SESSION ROLE NONE",
            "SET SESSION AUTHORIZATION postgres",
            "SET SESSION AUTHORIZATION DEFAULT",
            "RESET ROLE",
            "RESET SESSION AUTHORIZATION",
            "SET role = 'postgres'",
            "SET \"ROLE\" TO postgres",
            "SET session_authorization TO postgres",
            "SELECT set_config('role', 'postgres', false)",
            "SELECT pg_catalog.set_config('ROLE', 'postgres', false)",
            "SELECT 1 WHERE set_config('session_authorization', 'x', true) IS NOT NULL",
            "SELECT * FROM set_config('role', 'postgres', false)",
            "SELECT * FROM pg_catalog.set_config('standard_conforming_strings', 'off', false) AS s",
            "EXPLAIN ANALYZE SELECT set_config('role', 'postgres', false)",
            "COPY (SELECT set_config('role', 'postgres', false)) TO STDOUT",
            "WITH x AS (SELECT set_config('role', 'postgres', false)) SELECT * FROM x",
        ] {
            assert!(refused(sql), "{sql} must be refused");
        }
    }

    #[test]
    fn lexing_settings_are_pinned() {
        for sql in [
            "SET standard_conforming_strings = off",
            "SET standard_conforming_strings TO on",
            "SET LOCAL standard_conforming_strings TO off",
            "SET client_encoding = 'SQL_ASCII'",
            "SET client_encoding TO 'GBK'",
            "SET NAMES 'latin1'",
            "SELECT set_config('standard_conforming_strings', 'off', false)",
            "SELECT set_config('client_encoding', 'BIG5', false)",
            "SELECT set_config(current_user, 'off', false)",
            "SELECT set_config($1, 'off', false)",
            // A column is not a constant, whatever its name.
            "SELECT set_config(name, 'x', false) FROM (SELECT 'role' AS name) s",
            "SELECT set_config(client_encoding, 'x', false) FROM (SELECT 'role' AS client_encoding) s",
            "SELECT set_config('client_encoding', enc, false) FROM (SELECT 'BIG5' AS enc) s",
            "SET portcullis.agent = 'admin'",
            "RESET portcullis.agent",
        ] {
            assert!(refused(sql), "{sql} must be refused");
        }
    }

    #[test]
    fn ordinary_settings_pass() {
        for sql in [
            "SET extra_float_digits = 3",
            "SET application_name = 'psql'",
            "SET client_encoding = 'UTF8'",
            "SET client_encoding TO 'utf-8'",
            "SET client_encoding TO unicode",
            "SET search_path TO public",
            "SET TIME ZONE 'UTC'",
            "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            "SET TRANSACTION READ ONLY",
            "RESET ALL",
            "RESET search_path",
            "SELECT set_config('search_path', 'public', false)",
            "SHOW standard_conforming_strings",
            "SHOW TRANSACTION ISOLATION LEVEL",
        ] {
            assert!(
                check(sql, Protocol::Simple).is_ok(),
                "{sql} must pass: {:?}",
                check(sql, Protocol::Simple)
            );
        }
    }
}
