//! What a statement does to the session's search_path, and which paths an agent may set.
//!
//! Under enforcement the rewriter resolves unqualified names with the session's search_path,
//! which the proxy tracks (it reads the setting back after any statement that may change it,
//! see `proxy/src/pg/search_path.rs`). Within one simple Query, a `SET` applies to the
//! statements after it, as in PostgreSQL. An agent may set the path to schemas the catalog
//! knows, `pg_catalog` first or not named (searched first anyway), never `pg_temp`, and never
//! to a schema outside the login's own path that defines a function or operator PostgreSQL
//! could prefer to a built-in (see `verify`'s overload check, which knows the login's path).

use sqlparser::ast::{Expr, Reset, Set, Statement};

use crate::catalog::RoutineKind;
use crate::settings::{assigned, set_config_calls, setting_name, string_constant};
use crate::{Context, Refusal};

/// What a statement does to the search_path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Effect {
    None,
    /// `SET [LOCAL] search_path`: these schemas, for the statements after it.
    Set(Vec<String>),
    /// `RESET search_path`, `SET search_path TO DEFAULT`, `RESET ALL`, `DISCARD ALL`.
    Reset,
    /// `set_config('search_path', …)`: a checked path, set only if the call runs.
    Maybe,
}

/// The statement's effect on the search_path, or why it may not have it.
pub(crate) fn effect(statement: &Statement, ctx: &Context<'_>) -> Result<Effect, Refusal> {
    let mut effect = Effect::None;
    match statement {
        Statement::Set(set) if assigned(set).iter().any(|n| n == "search_path") => {
            effect = set_effect(set, ctx)?;
        }
        Statement::Reset(reset) => match &reset.reset {
            Reset::ALL => effect = Effect::Reset,
            Reset::ConfigurationParameter(name) if setting_name(name) == "search_path" => {
                effect = Effect::Reset
            }
            _ => {}
        },
        Statement::Discard {
            object_type: sqlparser::ast::DiscardObject::ALL,
        } => effect = Effect::Reset,
        _ => {}
    }
    for (name, value) in set_config_calls(statement) {
        if name != "search_path" {
            continue;
        }
        let path = value.as_deref().and_then(of_text).ok_or_else(|| {
            Refusal::Forbidden(
                "set_config('search_path', …) needs a constant list of plain schema names".into(),
            )
        })?;
        check(&path, ctx)?;
        effect = Effect::Maybe;
    }
    Ok(effect)
}

fn set_effect(set: &Set, ctx: &Context<'_>) -> Result<Effect, Refusal> {
    let Set::SingleAssignment { values, .. } = set else {
        return Err(Refusal::Unsupported(
            "search_path set together with other settings (set it alone)".into(),
        ));
    };
    if let [Expr::Identifier(i)] = values.as_slice() {
        if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default") {
            return Ok(Effect::Reset);
        }
    }
    let path = values
        .iter()
        .map(|v| match v {
            Expr::Identifier(i) => Some(crate::catalog::normalize(i)),
            e => string_constant(e),
        })
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| Refusal::Forbidden("search_path may be set only to schema names".into()))?;
    check(&path, ctx)?;
    Ok(Effect::Set(path))
}

/// The schemas `set_config('search_path', text, …)` assigns: a comma-separated list of plain
/// names (folded to lower case, as PostgreSQL splits it); `None` for anything else.
fn of_text(text: &str) -> Option<Vec<String>> {
    text.split(',')
        .map(|part| {
            let part = part.trim();
            crate::lexical::is_unquoted_identifier(part).then(|| part.to_ascii_lowercase())
        })
        .collect()
}

/// Whether an agent may set the search_path to `path`.
fn check(path: &[String], ctx: &Context<'_>) -> Result<(), Refusal> {
    let refuse = |why: String| Err(Refusal::Forbidden(format!("search_path: {why}")));
    let login = ctx.catalog.search_path();
    for (i, schema) in path.iter().enumerate() {
        match schema.as_str() {
            "pg_catalog" if i == 0 => continue,
            "pg_catalog" => {
                return refuse(
                    "pg_catalog must come first or not be named (a schema before it could \
                     hold look-alikes of built-in functions)"
                        .into(),
                )
            }
            "information_schema" => continue,
            s if s.starts_with("pg_temp") || s.starts_with("pg_toast") => {
                return refuse(format!("{s} cannot be on the path through Portcullis"))
            }
            "$user" => {
                return refuse(
                    "\"$user\" stands for the upstream login's schema, not the agent's; name \
                     the schemas"
                        .into(),
                )
            }
            s if !ctx.catalog.has_schema(s) => {
                return refuse(format!(
                    "schema {s} is not known to Portcullis (no table or view of it is in the \
                     catalog)"
                ))
            }
            s if login.iter().any(|l| l == s) => {}
            s => {
                if let Some((kind, name)) = ctx.catalog.shadowing_routine(s) {
                    let what = match kind {
                        RoutineKind::Function => format!("function {s}.{name}()"),
                        RoutineKind::Operator => format!("operator {s}.{name}"),
                    };
                    return refuse(format!(
                        "schema {s} defines {what}, which PostgreSQL could call in place of a \
                         built-in; qualify names with {s}. instead"
                    ));
                }
            }
        }
    }
    Ok(())
}
