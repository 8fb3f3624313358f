//! Writes under policy: INSERT (VALUES and SELECT), UPDATE (incl. FROM) and DELETE (incl.
//! USING), with RETURNING.
//!
//! - UPDATE and DELETE only touch rows that are both readable and allowed for the action: the
//!   agent's WHERE, SET expressions and FROM/USING items run in a subquery over the target's
//!   fence (masked values, hidden rows absent), which yields the addresses (`tableoid`, `ctid`)
//!   of the rows to change; the statement joins the table back on them.
//! - INSERT and UPDATE may only produce rows the action allows (like RLS `WITH CHECK`), and
//!   rows the agent could read when RETURNING is asked for: each new row is checked by an
//!   expression that aborts the whole statement with the policy-violation error (see
//!   [`crate::VIOLATION_MARKER`]), so a violation changes nothing.
//! - RETURNING `*` returns the readable columns, masked, and so does a masked column named
//!   alone; other RETURNING expressions may name only columns read in clear.
//! - `INSERT … ON CONFLICT` follows PostgreSQL's RLS rules for upserts (see [`upsert`]), and
//!   `MERGE` its rules for MERGE, action by action (see [`merge`]).
//!
//! Refused: writes to views and system catalogs, a `DEFAULT` the check would have to read, a
//! multi-column SET from a sub-SELECT, an INSERT … SELECT * without a column list, and an
//! INSERT that leaves to a non-constant default a column the policy checks.

use std::collections::BTreeSet;
use std::sync::Arc;

use policies::{ColumnRule, Filter};
use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, Expr, FromTable, Insert, ObjectName, Query, SelectItem,
    SetExpr, Statement, TableFactor, TableObject, TableWithJoins, Update, UpdateTableFromKind,
};

use crate::catalog::{normalize, quote_ident, Catalog, Column, RelKind, Relation, Resolved};
use crate::fence;
use crate::lexical::to_sql;
use crate::policy::{TablePolicy, WriteAction};
use crate::protect::{protect, Read};
use crate::pushdown::{self, FenceInfo, Frame, Item};
use crate::sql_filter::{quote_string, render};
use crate::{Context, Refusal, VIOLATION_MARKER};

mod defaults;
mod merge;
mod refs;
mod upsert;

/// A write rewritten as text, with the reads it makes and its target's fence (for pushdown).
struct Built {
    sql: String,
    reads: Vec<Read>,
    target_fence: Option<TargetFence>,
}

/// The write target's fence, as pushdown sees it.
struct TargetFence {
    info: FenceInfo,
    item: Item,
}

pub(crate) fn rewrite(statement: &mut Statement, ctx: &Context<'_>) -> Result<Vec<Read>, Refusal> {
    let Built {
        sql,
        reads,
        target_fence,
    } = match statement {
        Statement::Insert(insert) => rewrite_insert(insert, ctx)?,
        Statement::Update(update) => rewrite_update(update, ctx)?,
        Statement::Delete(delete) => rewrite_delete(delete, ctx)?,
        Statement::Merge(merge) => merge::rewrite_merge(merge, ctx)?,
        _ => return Err(Refusal::Unsupported("this write".into())),
    };
    let mut rewritten = crate::parse::built(&sql, "the checked write", |p| p.parse_statement())?;
    if let Some(fence) = target_fence {
        push_into_target_fence(&mut rewritten, fence, ctx.catalog);
    }
    *statement = rewritten;
    Ok(reads)
}

/// The target of a write: a table (or partitioned table) covered by policy.
fn target<'c>(name: &ObjectName, ctx: &Context<'c>) -> Result<&'c Relation, Refusal> {
    match ctx.catalog.resolve(name, ctx.search_path) {
        Some(Resolved::Protected(rel))
            if matches!(rel.kind, RelKind::Table | RelKind::PartitionedTable) =>
        {
            Ok(rel)
        }
        Some(Resolved::Protected(rel)) => Err(Refusal::Forbidden(format!(
            "writes to {} (not a table) are not allowed through Portcullis",
            rel.qualified()
        ))),
        Some(Resolved::System(rel)) => Err(Refusal::Forbidden(format!(
            "the system catalog {}.{} cannot be written through Portcullis",
            rel.schema, rel.name
        ))),
        None => Err(Refusal::Forbidden(
            ctx.catalog.unresolved(name, ctx.search_path),
        )),
    }
}

/// The rules for `action` on `rel`: its filter, the read policy, and the policies to name.
struct Rules {
    read: Arc<TablePolicy>,
    write: Filter,
    determining: Vec<String>,
    /// `write`'s conjuncts with the policies behind each.
    checks: Vec<policies::Check>,
}

impl Rules {
    /// The target, as a read (the write's fence reads it under the read policy).
    fn target_read(&self, rel: &Relation) -> Read {
        Read {
            entity_type: rel.entity_type(),
            policy: self.read.clone(),
        }
    }

    /// The SQL of the target's write fence, and the fence as pushdown sees it.
    fn write_fence(&self, rel: &Relation, alias: &str) -> Result<(String, TargetFence), Refusal> {
        let fence = fence::build_for_write(rel, &self.read, &self.write)?;
        let target = TargetFence {
            info: FenceInfo {
                alias: alias.to_string(),
                relation: rel.name.clone(),
            },
            item: pushdown::item(rel, &self.read, alias.to_string()),
        };
        Ok((to_sql(&*fence)?, target))
    }
}

fn rules(rel: &Relation, action: WriteAction, ctx: &Context<'_>) -> Result<Rules, Refusal> {
    let read = ctx.policies.read(rel)?;
    let write = ctx.policies.write(rel, action)?;
    if write.filter == Filter::False {
        return Err(Refusal::Forbidden(format!(
            "no policy permits {} on {} for this agent{}",
            action.as_str(),
            rel.entity_type(),
            named(&write.determining)
        )));
    }
    Ok(Rules {
        read,
        write: write.filter.clone(),
        determining: write.determining.clone(),
        checks: write.checks.clone(),
    })
}

fn named(ids: &[String]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!(" (policies: {})", ids.join(", "))
    }
}

/// What a new (inserted or updated) row must pass: the action's filter, and the read filter
/// when RETURNING shows the row; with the error for each conjunct that can fail, naming the
/// policies that decided it (a row of another tenant names the permit it fails, not a forbid
/// it passes).
struct NewRow {
    filter: Filter,
    /// (conjunct, error): checked in order once `filter` has failed, to say why.
    parts: Vec<(Filter, String)>,
    /// The error when no part explains the failure: every policy involved.
    fallback: String,
}

fn new_row(action: WriteAction, rel: &Relation, rules: &Rules, returning: bool) -> NewRow {
    let row = match action {
        WriteAction::Insert => "new",
        _ => "updated",
    };
    let mut ids = rules.determining.clone();
    let mut filter = rules.write.clone();
    let mut parts: Vec<(Filter, String)> = rules
        .checks
        .iter()
        .map(|c| {
            let message = format!(
                "the {row} row violates the {} policy on {} for this agent: {}",
                action.as_str(),
                rel.entity_type(),
                c.reason
            );
            (c.ok.clone(), message)
        })
        .collect();
    if returning {
        for id in &rules.read.determining {
            if !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        filter = Filter::and(vec![filter, rules.read.filter.clone()]);
        parts.extend(rules.read.row_checks.iter().map(|c| {
            let message = format!(
                "the {row} row would not be readable by this agent on {}, and RETURNING shows \
                 it: {}",
                rel.entity_type(),
                c.reason
            );
            (c.ok.clone(), message)
        }));
    }
    NewRow {
        filter,
        parts,
        fallback: violation(action, rel, &ids, returning),
    }
}

impl NewRow {
    /// The check as SQL, with `ok` rendering a filter over the new row: TRUE when the row
    /// passes; otherwise aborts with the first failing part's error. The decision is
    /// `filter`'s alone; the parts only choose the message.
    fn sql(&self, ok: impl Fn(&Filter) -> Result<String, Refusal>) -> Result<String, Refusal> {
        let full = ok(&self.filter)?;
        if self.parts.is_empty() {
            return Ok(check(&full, &self.fallback));
        }
        let mut sql = format!("CASE WHEN {full} THEN true");
        for (part, message) in &self.parts {
            sql.push_str(&format!(
                " WHEN ({}) IS NOT TRUE THEN {}",
                ok(part)?,
                abort(message)
            ));
        }
        sql.push_str(&format!(" ELSE {} END", abort(&self.fallback)));
        Ok(sql)
    }
}

/// `CASE WHEN <ok> THEN true ELSE <abort> END`: aborts the statement with the violation error
/// for a row where `ok` is not TRUE.
fn check(ok: &str, message: &str) -> String {
    format!("CASE WHEN {ok} THEN true ELSE {} END", abort(message))
}

/// An expression that aborts the statement with the violation error carrying `message`. It
/// casts text to int4, with a volatile operand so PostgreSQL cannot fold it (and raise) at
/// plan time.
fn abort(message: &str) -> String {
    format!(
        "CAST({} || pg_catalog.\"left\"(pg_catalog.random()::text, 0) AS pg_catalog.int4) = 0",
        quote_string(&format!("{VIOLATION_MARKER}{message}"))
    )
}

/// `filter` over a row whose columns are given as SQL by `value` (a column's new value, or a
/// qualified reference to its old one).
fn row_check(
    filter: &Filter,
    rel: &Relation,
    value: impl Fn(&str) -> String,
) -> Result<String, Refusal> {
    let mut identity = true;
    let row: Vec<String> = filter
        .columns()
        .into_iter()
        .map(|name| {
            let v = stored(rel, name, value(name));
            identity &= v == quote_ident(name);
            format!("{v} AS {}", quote_ident(name))
        })
        .collect();
    if row.is_empty() || identity {
        return render(filter, rel);
    }
    Ok(format!(
        "(SELECT {} FROM (SELECT {}) AS \"portcullis_row\")",
        render(filter, rel)?,
        row.join(", ")
    ))
}

/// `value` (of `rel`'s column `name`) as the column will store it. Values are typed without
/// their length modifier (see [`cast_type`]) so that an over-long value fails the write as it
/// would in PostgreSQL; but assigning to `varchar(n)` or `char(n)` silently drops trailing
/// spaces beyond `n`, so the check sees the value cut to `n` (`'closed '` is stored, and
/// checked, as `'closed'`). Where the cut drops more than spaces, the write itself fails.
fn stored(rel: &Relation, name: &str, value: String) -> String {
    match rel.columns.iter().find(|c| c.name == name) {
        Some(c)
            if matches!(
                c.type_name.as_str(),
                "varchar" | "_varchar" | "bpchar" | "_bpchar"
            ) && c.sql_type.contains('(') =>
        {
            format!("CAST(({value}) AS {})", c.sql_type)
        }
        _ => value,
    }
}

fn violation(action: WriteAction, rel: &Relation, ids: &[String], returning: bool) -> String {
    let readable = if returning {
        " or would not be readable by it (RETURNING shows it)"
    } else {
        ""
    };
    format!(
        "the {} row violates the {} policy on {} for this agent{readable}{}",
        match action {
            WriteAction::Insert => "new",
            _ => "updated",
        },
        action.as_str(),
        rel.entity_type(),
        named(ids)
    )
}

/// A type to cast an agent's value to so it is typed as `col` (as INSERT/UPDATE would type
/// it, and as the check must see it). Numeric and datetime types keep their modifier (an
/// explicit cast rounds as the assignment will, so the check sees the stored value);
/// character and bit types lose it (an explicit cast to `varchar(5)` would truncate where the
/// assignment raises an error), which the assignment to the column then enforces.
fn cast_type(col: &Column) -> String {
    match col.type_name.as_str() {
        // Without a modifier these mean char(1) and bit(1).
        "bpchar" => "pg_catalog.bpchar".into(),
        "_bpchar" => "pg_catalog.bpchar[]".into(),
        "bit" => "pg_catalog.varbit".into(),
        "_bit" => "pg_catalog.varbit[]".into(),
        "varchar" => "pg_catalog.varchar".into(),
        "_varchar" => "pg_catalog.varchar[]".into(),
        "varbit" => "pg_catalog.varbit".into(),
        "_varbit" => "pg_catalog.varbit[]".into(),
        _ => col.sql_type.clone(),
    }
}

fn column<'r>(rel: &'r Relation, name: &str) -> Result<&'r Column, Refusal> {
    rel.columns.iter().find(|c| c.name == name).ok_or_else(|| {
        Refusal::Forbidden(format!(
            "column {name:?} of {} is not known to Portcullis",
            rel.qualified()
        ))
    })
}

fn is_default(e: &Expr) -> bool {
    matches!(e, Expr::Identifier(i) if i.quote_style.is_none() && i.value.eq_ignore_ascii_case("default"))
}

/// The RETURNING clause: `*` (or `alias.*`) becomes the readable columns, masked; a masked
/// column named alone is returned masked; other expressions may name only columns the agent
/// reads in clear (see [`refs`]).
fn returning(
    items: &mut Option<Vec<SelectItem>>,
    rel: &Relation,
    policy: &TablePolicy,
    alias: &str,
    ctx: &Context<'_>,
    reads: &mut Vec<Read>,
) -> Result<String, Refusal> {
    let Some(items) = items else {
        return Ok(String::new());
    };
    reads.extend(protect(items, ctx)?);
    let target = refs::Target::new(rel, policy, vec![alias.to_string()]);
    let mut out = Vec::new();
    let mut checked = Vec::new();
    for item in items.iter() {
        let (expr, name) = match item {
            SelectItem::Wildcard(_) => (None, None),
            SelectItem::QualifiedWildcard(
                sqlparser::ast::SelectItemQualifiedWildcardKind::ObjectName(n),
                _,
            ) if n
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(normalize)
                .as_deref()
                == Some(alias) =>
            {
                (None, None)
            }
            SelectItem::QualifiedWildcard(..) => {
                return Err(Refusal::Unsupported(
                    "RETURNING of another relation's columns".into(),
                ))
            }
            SelectItem::UnnamedExpr(e) => (Some(e), None),
            SelectItem::ExprWithAlias { expr: e, alias } => (Some(e), Some(normalize(alias))),
            SelectItem::ExprWithAliases { .. } => {
                return Err(Refusal::Unsupported("this RETURNING item".into()))
            }
        };
        let Some(e) = expr else {
            let items = fence::projection(rel, policy)?
                .iter()
                .map(to_sql)
                .collect::<Result<Vec<_>, _>>()?;
            out.push(items.join(", "));
            continue;
        };
        // A masked column named alone: its mask, under the column's name (or the alias).
        if let Some(col) = target_column(e, rel, alias) {
            if !target.clear.contains(col.name.as_str()) {
                let value = fence::column_value(rel, policy, col)?.ok_or_else(|| {
                    Refusal::Forbidden(format!(
                        "RETURNING names {:?}, a column of {} this agent may not read",
                        col.name,
                        rel.entity_type()
                    ))
                })?;
                let value = match value {
                    fence::Readable::Column => quote_ident(&col.name),
                    fence::Readable::Masked(e) => to_sql(&*e)?,
                };
                let name = name.unwrap_or_else(|| col.name.clone());
                out.push(format!("{value} AS {}", quote_ident(&name)));
                continue;
            }
        }
        let sql = to_sql(item)?;
        checked.push(sql.clone());
        out.push(sql);
    }
    if !checked.is_empty() {
        target.check(&format!("SELECT {}", checked.join(", ")), "RETURNING")?;
    }
    Ok(format!(" RETURNING {}", out.join(", ")))
}

/// The target's column that `e` names alone (`c`, `alias.c`), if it does.
fn target_column<'r>(e: &Expr, rel: &'r Relation, alias: &str) -> Option<&'r Column> {
    let name = match e {
        Expr::Identifier(c) => normalize(c),
        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
            [q, c] if normalize(q) == alias => normalize(c),
            _ => return None,
        },
        _ => return None,
    };
    rel.columns.iter().find(|c| c.name == name)
}

fn rewrite_insert(insert: &mut Insert, ctx: &Context<'_>) -> Result<Built, Refusal> {
    if insert.or.is_some()
        || insert.ignore
        || insert.overwrite
        || insert.partitioned.is_some()
        || !insert.after_columns.is_empty()
        || !insert.assignments.is_empty()
        || insert.replace_into
        || insert.priority.is_some()
        || insert.insert_alias.is_some()
        || insert.settings.is_some()
        || insert.format_clause.is_some()
        || insert.output.is_some()
        || insert.multi_table_insert_type.is_some()
    {
        return Err(Refusal::Unsupported("this INSERT form".into()));
    }
    let TableObject::TableName(name) = &insert.table else {
        return Err(Refusal::Unsupported("INSERT INTO a table function".into()));
    };
    let rel = target(name, ctx)?;
    let rules = rules(rel, WriteAction::Insert, ctx)?;
    let alias = insert
        .table_alias
        .as_ref()
        .map(|a| normalize(&a.alias))
        .unwrap_or_else(|| rel.name.clone());
    let mut reads = vec![rules.target_read(rel)];
    let checked = new_row(WriteAction::Insert, rel, &rules, insert.returning.is_some());
    let filter = checked.filter.clone();
    let returning_sql = returning(
        &mut insert.returning,
        rel,
        &rules.read,
        &alias,
        ctx,
        &mut reads,
    )?;
    let conflict = upsert::on_conflict(
        insert.on.as_mut(),
        rel,
        &alias,
        ctx,
        &mut reads,
        insert.returning.is_some(),
    )?;
    // Always aliased: an unaliased target can be named `db.schema.table`, a form the
    // reference checks do not read as the target.
    let table = format!("{} AS {}", rel.qualified(), quote_ident(&alias));

    let Some(source) = insert.source.as_mut() else {
        // DEFAULT VALUES: every column from its default; those the check reads must be
        // constants, written explicitly and checked.
        if filter == Filter::True {
            return Ok(Built {
                sql: format!("INSERT INTO {table} DEFAULT VALUES{conflict}{returning_sql}"),
                reads,
                target_fence: None,
            });
        }
        let defaulted = checked_defaults(&filter, &BTreeSet::new(), rel)?;
        let (names, casts) = default_items(&defaulted)?;
        let ok = checked.sql(|f| row_check(f, rel, quote_ident))?;
        return Ok(Built {
            sql: format!(
                "INSERT INTO {table} ({names}) SELECT {names} FROM (SELECT {casts}) AS \"portcullis_new\" WHERE {ok}{conflict}{returning_sql}"
            ),
            reads,
            target_fence: None,
        });
    };

    let mut columns = insert_columns(rel, &insert.columns)?;
    let values = match &mut *source.body {
        SetExpr::Values(v)
            if source.with.is_none()
                && source.order_by.is_none()
                && source.limit_clause.is_none()
                && source.fetch.is_none() =>
        {
            Some(v)
        }
        _ => None,
    };
    let source_sql = match values {
        Some(values) => {
            let width = values.rows.first().map_or(0, |r| r.len());
            if columns.is_empty() {
                columns = leading_columns(rel, width)?;
            }
            if values.rows.iter().any(|r| r.len() != columns.len()) {
                return Err(Refusal::Syntax(
                    "each VALUES row must have one value per target column".into(),
                ));
            }
            // A column every row sets to DEFAULT is left to its default (as if not listed).
            for i in (0..columns.len()).rev() {
                let defaults = values.rows.iter().filter(|r| is_default(&r[i])).count();
                if defaults == values.rows.len() {
                    columns.remove(i);
                    for row in values.rows.iter_mut() {
                        row.content.remove(i);
                    }
                } else if defaults > 0 {
                    return Err(Refusal::Unsupported(format!(
                        "DEFAULT for column {:?} in some VALUES rows but not in others (the \
                         check cannot see a default's value; insert those rows separately)",
                        columns[i].name
                    )));
                }
            }
            if columns.is_empty() {
                return Err(Refusal::Unsupported(
                    "VALUES rows of DEFAULT only (write INSERT … DEFAULT VALUES)".into(),
                ));
            }
            reads.extend(protect(&mut values.rows, ctx)?);
            // Typed as the columns, so literals and parameters are read as INSERT reads them.
            let rows: Vec<String> = values
                .rows
                .iter()
                .map(|row| {
                    let items: Vec<String> = row
                        .iter()
                        .zip(&columns)
                        .map(|(e, c)| Ok(format!("CAST(({}) AS {})", to_sql(e)?, cast_type(c))))
                        .collect::<Result<_, Refusal>>()?;
                    Ok(format!("({})", items.join(", ")))
                })
                .collect::<Result<_, Refusal>>()?;
            format!("VALUES {}", rows.join(", "))
        }
        None => {
            if columns.is_empty() {
                // As PostgreSQL reads it: the table's first columns, as many as the SELECT has.
                let width = output_width(source).ok_or_else(|| {
                    Refusal::Unsupported(
                        "INSERT … SELECT * without a column list (name the target columns)".into(),
                    )
                })?;
                columns = leading_columns(rel, width)?;
            }
            reads.extend(protect(&mut **source, ctx)?);
            to_sql(&**source)?
        }
    };
    refuse_unclear_columns(&columns, &rules, rel)?;
    let supplied: BTreeSet<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let defaulted = checked_defaults(&filter, &supplied, rel)?;
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let names = names.join(", ");
    let mut casts: Vec<String> = columns
        .iter()
        .map(|c| {
            let n = quote_ident(&c.name);
            format!("CAST(\"portcullis_source\".{n} AS {}) AS {n}", cast_type(c))
        })
        .collect();
    let mut targets = names.clone();
    if !defaulted.is_empty() {
        let (default_names, default_casts) = default_items(&defaulted)?;
        targets = format!("{targets}, {default_names}");
        casts.push(default_casts);
    }
    let ok = checked.sql(|f| row_check(f, rel, quote_ident))?;
    Ok(Built {
        sql: format!(
            "INSERT INTO {table} ({targets}) SELECT {targets} FROM (SELECT {} FROM (SELECT * FROM ({source_sql}) AS \"portcullis_source\" OFFSET 0) AS \"portcullis_source\"({names})) AS \"portcullis_new\" WHERE {ok}{conflict}{returning_sql}",
            casts.join(", "),
        ),
        reads,
        target_fence: None,
    })
}

/// The columns the new-row check reads that the INSERT leaves to their defaults (not in
/// `supplied`), each with its constant default (see [`defaults`]).
fn checked_defaults<'r>(
    filter: &Filter,
    supplied: &BTreeSet<&str>,
    rel: &'r Relation,
) -> Result<Vec<(&'r Column, Expr)>, Refusal> {
    filter
        .columns()
        .into_iter()
        .filter(|c| !supplied.contains(c))
        .map(|name| {
            let col = column(rel, name)?;
            Ok((col, defaults::constant(col, rel, "inserting into")?))
        })
        .collect()
}

/// The column list and the `CAST(default AS type) AS column` items that write `defaulted`.
fn default_items(defaulted: &[(&Column, Expr)]) -> Result<(String, String), Refusal> {
    let mut names = Vec::new();
    let mut casts = Vec::new();
    for (col, value) in defaulted {
        let n = quote_ident(&col.name);
        casts.push(format!(
            "CAST(({}) AS {}) AS {n}",
            to_sql(value)?,
            cast_type(col)
        ));
        names.push(n);
    }
    Ok((names.join(", "), casts.join(", ")))
}

/// The target columns an INSERT names (unqualified).
fn insert_columns<'r>(rel: &'r Relation, names: &[ObjectName]) -> Result<Vec<&'r Column>, Refusal> {
    names
        .iter()
        .map(|c| {
            let [part] = c.0.as_slice() else {
                return Err(Refusal::Unsupported("qualified INSERT column names".into()));
            };
            let ident = part
                .as_ident()
                .ok_or_else(|| Refusal::Unsupported("this INSERT column name".into()))?;
            column(rel, &normalize(ident))
        })
        .collect()
}

/// Without a column list, an INSERT fills the table's first `width` columns.
fn leading_columns(rel: &Relation, width: usize) -> Result<Vec<&Column>, Refusal> {
    if width > rel.columns.len() {
        return Err(Refusal::Syntax(
            "INSERT has more expressions than target columns".into(),
        ));
    }
    Ok(rel.columns.iter().take(width).collect())
}

/// A column the agent cannot read in clear cannot be written blind either (nor probed: a
/// unique constraint on it would tell whether a value exists).
fn refuse_unclear_columns(
    columns: &[&Column],
    rules: &Rules,
    rel: &Relation,
) -> Result<(), Refusal> {
    match columns
        .iter()
        .find(|c| rules.read.column(&c.name) != ColumnRule::Visible)
    {
        Some(c) => Err(Refusal::Forbidden(format!(
            "INSERT into column {:?} of {}, which this agent may not read in clear",
            c.name,
            rel.entity_type()
        ))),
        None => Ok(()),
    }
}

/// How many columns `query` yields, where its text says so (no `*`).
fn output_width(query: &Query) -> Option<usize> {
    fn body(b: &SetExpr) -> Option<usize> {
        match b {
            SetExpr::Select(s) => s
                .projection
                .iter()
                .all(|i| {
                    matches!(
                        i,
                        SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
                    )
                })
                .then_some(s.projection.len()),
            SetExpr::SetOperation { left, .. } => body(left),
            SetExpr::Query(q) => output_width(q),
            SetExpr::Values(v) => v.rows.first().map(|r| r.len()),
            _ => None,
        }
    }
    body(&query.body)
}

/// The target of an UPDATE or DELETE: the relation, and the name the statement knows it by.
fn named_target<'c>(
    factor: &TableFactor,
    ctx: &Context<'c>,
) -> Result<(&'c Relation, String), Refusal> {
    let TableFactor::Table {
        name,
        alias,
        args: None,
        with_hints,
        version: None,
        partitions,
        json_path: None,
        sample: None,
        index_hints,
        with_ordinality: false,
    } = factor
    else {
        return Err(Refusal::Unsupported("this write target".into()));
    };
    if !with_hints.is_empty() || !partitions.is_empty() || !index_hints.is_empty() {
        return Err(Refusal::Unsupported("this write target".into()));
    }
    if alias.as_ref().is_some_and(|a| !a.columns.is_empty()) {
        return Err(Refusal::Unsupported(
            "column aliases on a write target".into(),
        ));
    }
    let rel = target(name, ctx)?;
    let alias = alias
        .as_ref()
        .map(|a| normalize(&a.name))
        .unwrap_or_else(|| rel.name.clone());
    Ok((rel, alias))
}

/// The write's target as a whole row (`t`, `t.*`, `t::text`, `to_jsonb(t)`) would carry the
/// write fence's row address (`portcullis_tableoid`, `portcullis_ctid`) into values the agent
/// reads back: refused. Read by PostgreSQL's grammar, so every place a column reference can
/// stand is covered.
fn refuse_whole_row<T>(write: &T, alias: &str, rel: &Relation) -> Result<(), Refusal>
where
    T: sqlparser::ast::VisitMut + Clone + std::fmt::Display,
{
    let is_column = rel.columns.iter().any(|c| c.name == alias);
    for parts in crate::verify::column_refs(&to_sql(write)?)? {
        let schema = &rel.schema;
        let whole_row = match parts.as_slice() {
            [Some(name)] => name == alias && !is_column,
            [Some(name), None] => name == alias,
            [Some(s), Some(name)] | [Some(s), Some(name), None] => s == schema && name == alias,
            _ => false,
        };
        if whole_row {
            return Err(Refusal::Forbidden(format!(
                "a whole-row reference to the write's target {} (name its columns)",
                rel.entity_type()
            )));
        }
    }
    Ok(())
}

fn from_items(
    items: &mut [TableWithJoins],
    ctx: &Context<'_>,
    reads: &mut Vec<Read>,
) -> Result<String, Refusal> {
    let mut out = String::new();
    for item in items.iter_mut() {
        reads.extend(protect(item, ctx)?);
        out.push_str(", ");
        out.push_str(&to_sql(item)?);
    }
    Ok(out)
}

/// One SET item: the column, and its new value as SQL (`None`: `DEFAULT`).
struct Set<'r> {
    col: &'r Column,
    value: Option<String>,
}

/// The SET items of an UPDATE (or of `ON CONFLICT DO UPDATE`): each target a column the agent
/// may read in clear (a blind overwrite of a masked or denied column is refused), each value
/// protected. `(a, b) = (x, y)` is read as `a = x, b = y`.
fn assignments<'r>(
    items: &mut [Assignment],
    rel: &'r Relation,
    rules: &Rules,
    ctx: &Context<'_>,
    reads: &mut Vec<Read>,
) -> Result<Vec<Set<'r>>, Refusal> {
    let mut sets = Vec::new();
    for assignment in items.iter_mut() {
        let pairs: Vec<(&ObjectName, &mut Expr)> =
            match (&assignment.target, &mut assignment.value) {
                (AssignmentTarget::ColumnName(target), value) => vec![(target, value)],
                (AssignmentTarget::Tuple(targets), Expr::Tuple(values))
                    if targets.len() == values.len() =>
                {
                    targets.iter().zip(values.iter_mut()).collect()
                }
                (AssignmentTarget::Tuple(_), Expr::Tuple(_)) => {
                    return Err(Refusal::Syntax(
                        "number of columns does not match number of values".into(),
                    ))
                }
                (AssignmentTarget::Tuple(_), _) => return Err(Refusal::Unsupported(
                    "multi-column SET (a, b) = (SELECT …) from a sub-SELECT; assign each column"
                        .into(),
                )),
            };
        for (target, value) in pairs {
            let [part] = target.0.as_slice() else {
                return Err(Refusal::Unsupported("qualified SET targets".into()));
            };
            let Some(ident) = part.as_ident() else {
                return Err(Refusal::Unsupported("this SET target".into()));
            };
            let col = column(rel, &normalize(ident))?;
            if rules.read.column(&col.name) != ColumnRule::Visible {
                return Err(Refusal::Forbidden(format!(
                    "UPDATE of column {:?} of {}, which this agent may not read in clear",
                    col.name,
                    rel.entity_type()
                )));
            }
            if is_default(value) {
                sets.push(Set { col, value: None });
                continue;
            }
            reads.extend(protect(value, ctx)?);
            sets.push(Set {
                col,
                value: Some(to_sql(value)?),
            });
        }
    }
    Ok(sets)
}

/// A generated column's new value exists only after the write: an update check that reads one
/// is refused.
fn refuse_checked_generated(filter: &Filter, rel: &Relation) -> Result<(), Refusal> {
    match filter
        .columns()
        .into_iter()
        .find(|name| rel.columns.iter().any(|c| c.name == *name && c.generated))
    {
        Some(g) => Err(Refusal::Forbidden(format!(
            "the policy for updating {} checks generated column {g:?}, whose new value exists \
             only after the write",
            rel.entity_type()
        ))),
        None => Ok(()),
    }
}

/// A column set to `DEFAULT` gets its value only in the write, where the check cannot see it:
/// refused when the new-row check reads it.
fn refuse_checked_defaults(
    sets: &[Set<'_>],
    filter: &Filter,
    rel: &Relation,
) -> Result<(), Refusal> {
    let checked = filter.columns();
    match sets
        .iter()
        .find(|s| s.value.is_none() && checked.contains(&s.col.name.as_str()))
    {
        Some(s) => Err(Refusal::Forbidden(format!(
            "the policy for updating {} checks column {:?}, which this SET leaves to its \
             default; set it explicitly",
            rel.entity_type(),
            s.col.name
        ))),
        None => Ok(()),
    }
}

fn rewrite_update(update: &mut Update, ctx: &Context<'_>) -> Result<Built, Refusal> {
    if update.or.is_some()
        || update.output.is_some()
        || !update.order_by.is_empty()
        || update.limit.is_some()
        || !update.table.joins.is_empty()
    {
        return Err(Refusal::Unsupported("this UPDATE form".into()));
    }
    let (rel, alias) = named_target(&update.table.relation, ctx)?;
    refuse_whole_row(&*update, &alias, rel)?;
    let rules = rules(rel, WriteAction::Update, ctx)?;
    let a = quote_ident(&alias);
    let mut reads = vec![rules.target_read(rel)];

    let sets = assignments(&mut update.assignments, rel, &rules, ctx, &mut reads)?;
    let from = match update.from.as_mut() {
        None => String::new(),
        Some(UpdateTableFromKind::AfterSet(items)) => from_items(items, ctx, &mut reads)?,
        Some(UpdateTableFromKind::BeforeSet(_)) => {
            return Err(Refusal::Syntax("FROM before SET".into()))
        }
    };
    let cond = where_clause(&mut update.selection, ctx, &mut reads)?;
    let checked = new_row(WriteAction::Update, rel, &rules, update.returning.is_some());
    let filter = checked.filter.clone();
    refuse_checked_generated(&filter, rel)?;
    refuse_checked_defaults(&sets, &filter, rel)?;
    let returning_sql = returning(
        &mut update.returning,
        rel,
        &rules.read,
        &alias,
        ctx,
        &mut reads,
    )?;

    let (fence, target_fence) = rules.write_fence(rel, &alias)?;
    let new_values: Vec<String> = sets
        .iter()
        .enumerate()
        .filter_map(|(i, set)| {
            let e = set.value.as_ref()?;
            Some(format!(
                "CAST(({e}) AS {}) AS \"portcullis_set_{i}\"",
                cast_type(set.col)
            ))
        })
        .collect();
    let assignments: Vec<String> = sets
        .iter()
        .enumerate()
        .map(|(i, set)| match set.value {
            Some(_) => format!(
                "{} = \"portcullis_new\".\"portcullis_set_{i}\"",
                quote_ident(&set.col.name)
            ),
            None => format!("{} = DEFAULT", quote_ident(&set.col.name)),
        })
        .collect();
    // The new row's values of the columns the check reads: the SET value, or the old value.
    let value = |name: &str| match sets.iter().position(|set| set.col.name == name) {
        Some(i) => format!("\"portcullis_new\".\"portcullis_set_{i}\""),
        None => format!("{a}.{}", quote_ident(name)),
    };
    let ok = checked.sql(|f| row_check(f, rel, value))?;
    let same_row = format!(
        "{a}.tableoid = \"portcullis_new\".\"portcullis_tableoid\" AND {a}.ctid = \"portcullis_new\".\"portcullis_ctid\""
    );
    // The check is guarded by the row match, so it never runs on a row that is not updated.
    let guarded = format!("CASE WHEN NOT ({same_row}) THEN false ELSE {} END", ok);
    let mut projection = vec![
        format!("{a}.\"portcullis_tableoid\""),
        format!("{a}.\"portcullis_ctid\""),
    ];
    projection.extend(new_values);
    Ok(Built {
        sql: format!(
            "UPDATE {} AS {a} SET {} FROM (SELECT {} FROM ({fence}) AS {a}{from} WHERE {cond} OFFSET 0) AS \"portcullis_new\" WHERE {same_row} AND {guarded}{returning_sql}",
            rel.qualified(),
            assignments.join(", "),
            projection.join(", "),
        ),
        reads,
        target_fence: Some(target_fence),
    })
}

fn where_clause(
    selection: &mut Option<Expr>,
    ctx: &Context<'_>,
    reads: &mut Vec<Read>,
) -> Result<String, Refusal> {
    match selection {
        None => Ok("true".into()),
        Some(e) => {
            reads.extend(protect(e, ctx)?);
            Ok(format!("({})", to_sql(e)?))
        }
    }
}

fn rewrite_delete(delete: &mut Delete, ctx: &Context<'_>) -> Result<Built, Refusal> {
    if !delete.tables.is_empty()
        || delete.output.is_some()
        || !delete.order_by.is_empty()
        || delete.limit.is_some()
    {
        return Err(Refusal::Unsupported("this DELETE form".into()));
    }
    let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
    let [target_item] = from.as_slice() else {
        return Err(Refusal::Unsupported("DELETE from several tables".into()));
    };
    if !target_item.joins.is_empty() {
        return Err(Refusal::Unsupported("this DELETE form".into()));
    }
    let (rel, alias) = named_target(&target_item.relation, ctx)?;
    refuse_whole_row(&*delete, &alias, rel)?;
    let rules = rules(rel, WriteAction::Delete, ctx)?;
    let a = quote_ident(&alias);
    let mut reads = vec![rules.target_read(rel)];
    let using = match delete.using.as_mut() {
        None => String::new(),
        Some(items) => from_items(items, ctx, &mut reads)?,
    };
    let cond = where_clause(&mut delete.selection, ctx, &mut reads)?;
    let returning_sql = returning(
        &mut delete.returning,
        rel,
        &rules.read,
        &alias,
        ctx,
        &mut reads,
    )?;
    let (fence, target_fence) = rules.write_fence(rel, &alias)?;
    let target_fence = Some(target_fence);
    Ok(Built {
        sql: format!(
            "DELETE FROM {} AS {a} USING (SELECT {a}.\"portcullis_tableoid\", {a}.\"portcullis_ctid\" FROM ({fence}) AS {a}{using} WHERE {cond} OFFSET 0) AS \"portcullis_match\" WHERE {a}.tableoid = \"portcullis_match\".\"portcullis_tableoid\" AND {a}.ctid = \"portcullis_match\".\"portcullis_ctid\"{returning_sql}",
            rel.qualified(),
        ),
        reads,
        target_fence,
    })
}

/// Copies the agent's leakproof key comparisons into the target's fence (as reads get), so an
/// UPDATE or DELETE by primary key uses the key's index.
fn push_into_target_fence(statement: &mut Statement, fence: TargetFence, catalog: &Catalog) {
    let factor = match statement {
        Statement::Update(u) => match u.from.as_mut() {
            Some(UpdateTableFromKind::AfterSet(items)) => items.first_mut(),
            _ => None,
        },
        Statement::Delete(d) => d.using.as_mut().and_then(|u| u.first_mut()),
        _ => None,
    };
    let Some(TableFactor::Derived { subquery, .. }) = factor.map(|f| &mut f.relation) else {
        return;
    };
    let Some(inner) = inner_select(subquery) else {
        return;
    };
    // The other items of the match's FROM (the agent's FROM or USING, fenced) are opaque:
    // only conditions naming the target's columns qualified are copied.
    let mut items = vec![fence.item];
    let others = inner
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)));
    items.extend(others.skip(1).map(|_| Item::Opaque { alias: None }));
    pushdown::pushdown(inner, &[fence.info], &[Frame::Level(items)], catalog);
}

fn inner_select(query: &mut Query) -> Option<&mut sqlparser::ast::Select> {
    match &mut *query.body {
        SetExpr::Select(s) => Some(s),
        _ => None,
    }
}
