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

use std::sync::LazyLock;

use policies::{ColumnRule, Filter};
use sqlparser::ast::{
    Assignment, AssignmentTarget, BinaryOperator, DataType, Delete, Expr, FromTable, Ident, Insert,
    ObjectName, Query, SelectItem, SetExpr, Statement, TableAliasWithoutColumns, TableFactor,
    TableObject, TableWithJoins, Update, UpdateTableFromKind,
};

use crate::catalog::{normalize, Catalog, Column, RelKind, Relation, Resolved};
use crate::fence;
use crate::lexical::to_sql;
use crate::nodes::{
    self, aliased, binary, boolean, case, case_when, cast_as, catalog_call, ident, is_not_true,
    nested, number, qualified_column, string,
};
use crate::policy::{TablePolicy, WriteAction};
use crate::protect::{protect, Read};
use crate::pushdown::{self, FenceInfo, Frame, Item};
use crate::sql_filter;
use crate::{Context, Refusal, VIOLATION_MARKER};

mod defaults;
mod merge;
mod refs;
mod upsert;

/// What rewriting a write (in place) found: the reads it makes and its target's fence (for
/// pushdown).
struct Built {
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
        reads,
        target_fence,
    } = match statement {
        Statement::Insert(insert) => rewrite_insert(insert, ctx)?,
        Statement::Update(update) => rewrite_update(update, ctx)?,
        Statement::Delete(delete) => rewrite_delete(delete, ctx)?,
        Statement::Merge(merge) => merge::rewrite_merge(merge, ctx)?,
        _ => return Err(Refusal::Unsupported("this write".into())),
    };
    if let Some(fence) = target_fence {
        push_into_target_fence(statement, fence, ctx.catalog);
    }
    Ok(reads)
}

/// Takes `e` out of the statement (leaving `NULL`) to put it into the rewritten one.
fn take(e: &mut Expr) -> Expr {
    std::mem::replace(e, nodes::null())
}

/// The write's target, `"schema"."name" AS "alias"` (always aliased: an unaliased target can
/// be named `db.schema.table`, a form the reference checks do not read as the target).
fn target_table(rel: &Relation, alias: &str) -> TableWithJoins {
    nodes::table(nodes::table_name(&rel.schema, &rel.name), alias)
}

/// `"column"` as a column-list entry.
fn column_name(name: &str) -> ObjectName {
    ObjectName::from(vec![ident(name)])
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

    /// The target's write fence, and the fence as pushdown sees it.
    fn write_fence(&self, rel: &Relation, alias: &str) -> Result<(Query, TargetFence), Refusal> {
        let fence = fence::build_for_write(rel, &self.read, &self.write)?;
        let target = TargetFence {
            info: FenceInfo {
                alias: alias.to_string(),
                relation: rel.name.clone(),
            },
            item: pushdown::item(rel, &self.read, alias.to_string()),
        };
        Ok((*fence, target))
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
    /// The check, with `ok` building a filter over the new row: TRUE when the row passes;
    /// otherwise aborts with the first failing part's error. The decision is `filter`'s alone;
    /// the parts only choose the message.
    fn expr(&self, ok: impl Fn(&Filter) -> Result<Expr, Refusal>) -> Result<Expr, Refusal> {
        let full = ok(&self.filter)?;
        if self.parts.is_empty() {
            return Ok(check(full, &self.fallback));
        }
        let mut whens = vec![(full, boolean(true))];
        for (part, message) in &self.parts {
            whens.push((is_not_true(nested(ok(part)?)), abort(message)));
        }
        Ok(case(whens, abort(&self.fallback)))
    }
}

/// `CASE WHEN <ok> THEN true ELSE <abort> END`: aborts the statement with the violation error
/// for a row where `ok` is not TRUE.
fn check(ok: Expr, message: &str) -> Expr {
    case_when(ok, boolean(true), abort(message))
}

/// An expression that aborts the statement with the violation error carrying `message`:
/// `CAST('<marker><message>' || pg_catalog."left"(pg_catalog.random()::text, 0) AS
/// pg_catalog.int4) = 0`. It casts text to int4, with a volatile operand so PostgreSQL cannot
/// fold it (and raise) at plan time.
fn abort(message: &str) -> Expr {
    static INT4: LazyLock<DataType> = LazyLock::new(|| {
        nodes::data_type("pg_catalog.int4").expect("pg_catalog.int4 parses as a type")
    });
    let volatile = catalog_call(
        "left",
        true,
        vec![
            nodes::cast(catalog_call("random", false, vec![]), nodes::text()),
            number("0"),
        ],
    );
    let text = binary(
        string(&format!("{VIOLATION_MARKER}{message}")),
        BinaryOperator::StringConcat,
        volatile,
    );
    binary(cast_as(text, INT4.clone()), BinaryOperator::Eq, number("0"))
}

/// `filter` over a row whose columns are given by `value` (a column's new value, or a
/// qualified reference to its old one): the filter itself when every value is the column, or
/// `(SELECT <filter> FROM (SELECT <value> AS "column", …) AS "portcullis_row")`.
fn row_check(
    filter: &Filter,
    rel: &Relation,
    value: impl Fn(&str) -> Expr,
) -> Result<Expr, Refusal> {
    let mut identity = true;
    let row: Vec<SelectItem> = filter
        .columns()
        .into_iter()
        .map(|name| {
            let v = stored(rel, name, value(name))?;
            identity &= v == nodes::column(name);
            Ok(aliased(v, name))
        })
        .collect::<Result<_, Refusal>>()?;
    let checked = sql_filter::expr(filter, rel)?;
    if row.is_empty() || identity {
        return Ok(checked);
    }
    let row = nodes::derived(
        nodes::select(row, vec![], None, false),
        "portcullis_row",
        &[],
    );
    Ok(Expr::Subquery(Box::new(nodes::select(
        vec![SelectItem::UnnamedExpr(checked)],
        vec![row],
        None,
        false,
    ))))
}

/// `a.tableoid = "<other>"."portcullis_tableoid" AND a.ctid = "<other>"."portcullis_ctid"`:
/// the target row `a` is the row `other` found.
fn same_row(alias: &str, other: &str) -> Expr {
    let system = |name: &str| Expr::CompoundIdentifier(vec![ident(alias), Ident::new(name)]);
    binary(
        binary(
            system("tableoid"),
            BinaryOperator::Eq,
            qualified_column(other, "portcullis_tableoid"),
        ),
        BinaryOperator::And,
        binary(
            system("ctid"),
            BinaryOperator::Eq,
            qualified_column(other, "portcullis_ctid"),
        ),
    )
}

/// The row address columns a write fence adds, read through `alias`.
fn address(alias: &str) -> Vec<SelectItem> {
    vec![
        SelectItem::UnnamedExpr(qualified_column(alias, "portcullis_tableoid")),
        SelectItem::UnnamedExpr(qualified_column(alias, "portcullis_ctid")),
    ]
}

/// `"portcullis_new"."portcullis_set_<i>"`: the i-th SET value, computed once.
fn set_value(i: usize) -> Expr {
    qualified_column("portcullis_new", &format!("portcullis_set_{i}"))
}

/// `CAST((value) AS <col's type>) AS "portcullis_set_<i>"`.
fn set_item(i: usize, value: Expr, col: &Column) -> Result<SelectItem, Refusal> {
    Ok(aliased(
        cast_as(nested(value), cast_type(col)?),
        &format!("portcullis_set_{i}"),
    ))
}

/// `value` (of `rel`'s column `name`) as the column will store it. Values are typed without
/// their length modifier (see [`cast_type`]) so that an over-long value fails the write as it
/// would in PostgreSQL; but assigning to `varchar(n)` or `char(n)` silently drops trailing
/// spaces beyond `n`, so the check sees the value cut to `n` (`'closed '` is stored, and
/// checked, as `'closed'`). Where the cut drops more than spaces, the write itself fails.
fn stored(rel: &Relation, name: &str, value: Expr) -> Result<Expr, Refusal> {
    Ok(match rel.columns.iter().find(|c| c.name == name) {
        Some(c)
            if matches!(
                c.type_name.as_str(),
                "varchar" | "_varchar" | "bpchar" | "_bpchar"
            ) && c.sql_type.contains('(') =>
        {
            cast_as(nested(value), nodes::data_type(&c.sql_type)?)
        }
        _ => value,
    })
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
fn cast_type(col: &Column) -> Result<DataType, Refusal> {
    nodes::data_type(match col.type_name.as_str() {
        // Without a modifier these mean char(1) and bit(1).
        "bpchar" => "pg_catalog.bpchar",
        "_bpchar" => "pg_catalog.bpchar[]",
        "bit" => "pg_catalog.varbit",
        "_bit" => "pg_catalog.varbit[]",
        "varchar" => "pg_catalog.varchar",
        "_varchar" => "pg_catalog.varchar[]",
        "varbit" => "pg_catalog.varbit",
        "_varbit" => "pg_catalog.varbit[]",
        _ => &col.sql_type,
    })
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

/// The RETURNING clause, rewritten in place: `*` (or `alias.*`) becomes the readable columns,
/// masked; a masked column named alone is returned masked; other expressions may name only
/// columns the agent reads in clear (see [`refs`]).
fn returning(
    items: &mut Option<Vec<SelectItem>>,
    rel: &Relation,
    policy: &TablePolicy,
    alias: &str,
    ctx: &Context<'_>,
    reads: &mut Vec<Read>,
) -> Result<(), Refusal> {
    let Some(items) = items else {
        return Ok(());
    };
    reads.extend(protect(items, ctx)?);
    let target = refs::Target::new(rel, policy, vec![alias.to_string()]);
    let mut out = Vec::new();
    let mut checked = Vec::new();
    for item in std::mem::take(items) {
        let (expr, name) = match &item {
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
            out.extend(fence::projection(rel, policy)?);
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
                    fence::Readable::Column => nodes::column(&col.name),
                    fence::Readable::Masked(e) => *e,
                };
                let name = name.unwrap_or_else(|| col.name.clone());
                out.push(aliased(value, &name));
                continue;
            }
        }
        checked.push(to_sql(&item)?);
        out.push(item);
    }
    if !checked.is_empty() {
        target.check(&format!("SELECT {}", checked.join(", ")), "RETURNING")?;
    }
    *items = out;
    Ok(())
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
    let is_returning = insert.returning.is_some();
    returning(
        &mut insert.returning,
        rel,
        &rules.read,
        &alias,
        ctx,
        &mut reads,
    )?;
    insert.on = upsert::on_conflict(insert.on.take(), rel, &alias, ctx, &mut reads, is_returning)?;
    // Always aliased: an unaliased target can be named `db.schema.table`, a form the
    // reference checks do not read as the target.
    insert.table = TableObject::TableName(nodes::table_name(&rel.schema, &rel.name));
    insert.table_alias = Some(TableAliasWithoutColumns {
        explicit: true,
        alias: ident(&alias),
    });
    insert.into = true;
    insert.has_table_keyword = false;
    insert.optimizer_hints.clear();
    let row_ok = |f: &Filter| row_check(f, rel, nodes::column);

    let Some(source) = insert.source.as_mut() else {
        // DEFAULT VALUES: every column from its default; those the check reads must be
        // constants, written explicitly and checked.
        if filter == Filter::True {
            return Ok(Built {
                reads,
                target_fence: None,
            });
        }
        let defaulted = checked_defaults(&filter, &BTreeSet::new(), rel)?;
        let (names, casts) = default_items(defaulted)?;
        let new = nodes::select(casts, vec![], None, false);
        insert_checked_rows(insert, &names, new, checked.expr(row_ok)?);
        return Ok(Built {
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
    match values {
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
            for row in values.rows.iter_mut() {
                for (e, c) in row.content.iter_mut().zip(&columns) {
                    *e = cast_as(nested(take(e)), cast_type(c)?);
                }
            }
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
        }
    }
    refuse_unclear_columns(&columns, &rules, rel)?;
    let supplied: BTreeSet<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let defaulted = checked_defaults(&filter, &supplied, rel)?;
    let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    let mut casts: Vec<SelectItem> = columns
        .iter()
        .map(|c| {
            let value = qualified_column("portcullis_source", &c.name);
            Ok(aliased(cast_as(value, cast_type(c)?), &c.name))
        })
        .collect::<Result<_, Refusal>>()?;
    let mut targets: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let (default_names, default_casts) = default_items(defaulted)?;
    targets.extend(default_names);
    casts.extend(default_casts);
    let ok = checked.expr(row_ok)?;
    // SELECT <targets> FROM (SELECT <casts> FROM (SELECT * FROM (<source>) AS
    // "portcullis_source" OFFSET 0) AS "portcullis_source"(<names>)) AS "portcullis_new"
    // WHERE <ok>
    let source = std::mem::replace(&mut **source, nodes::select(vec![], vec![], None, false));
    let source = nodes::select(
        vec![nodes::wildcard()],
        vec![nodes::derived(source, "portcullis_source", &[])],
        None,
        true,
    );
    let typed = nodes::select(
        casts,
        vec![nodes::derived(source, "portcullis_source", &names)],
        None,
        false,
    );
    insert_checked_rows(insert, &targets, typed, ok);
    Ok(Built {
        reads,
        target_fence: None,
    })
}

/// Makes the INSERT write `targets` from `SELECT <targets> FROM (<new>) AS "portcullis_new"
/// WHERE <ok>`: only the new rows that pass the check.
fn insert_checked_rows(insert: &mut Insert, targets: &[String], new: Query, ok: Expr) {
    insert.columns = targets.iter().map(|n| column_name(n)).collect();
    insert.source = Some(Box::new(nodes::select(
        targets
            .iter()
            .map(|n| SelectItem::UnnamedExpr(nodes::column(n)))
            .collect(),
        vec![nodes::derived(new, "portcullis_new", &[])],
        Some(ok),
        false,
    )));
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

/// The column names and the `CAST((default) AS type) AS column` items that write `defaulted`.
fn default_items(
    defaulted: Vec<(&Column, Expr)>,
) -> Result<(Vec<String>, Vec<SelectItem>), Refusal> {
    let mut names = Vec::new();
    let mut casts = Vec::new();
    for (col, value) in defaulted {
        casts.push(aliased(cast_as(nested(value), cast_type(col)?), &col.name));
        names.push(col.name.clone());
    }
    Ok((names, casts))
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

/// The agent's FROM (or USING) items, protected, taken out of the statement.
fn from_items(
    items: &mut Vec<TableWithJoins>,
    ctx: &Context<'_>,
    reads: &mut Vec<Read>,
) -> Result<Vec<TableWithJoins>, Refusal> {
    for item in items.iter_mut() {
        reads.extend(protect(item, ctx)?);
    }
    Ok(std::mem::take(items))
}

/// One SET item: the column, and its new value (`None`: `DEFAULT`).
struct Set<'r> {
    col: &'r Column,
    value: Option<Expr>,
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
                value: Some(take(value)),
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
    let mut reads = vec![rules.target_read(rel)];

    let sets = assignments(&mut update.assignments, rel, &rules, ctx, &mut reads)?;
    let from = match update.from.as_mut() {
        None => Vec::new(),
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
    returning(
        &mut update.returning,
        rel,
        &rules.read,
        &alias,
        ctx,
        &mut reads,
    )?;

    let (fence, target_fence) = rules.write_fence(rel, &alias)?;
    // The new row's values of the columns the check reads: the SET value, or the old value.
    let value = |name: &str| match sets.iter().position(|set| set.col.name == name) {
        Some(i) => set_value(i),
        None => qualified_column(&alias, name),
    };
    let ok = checked.expr(|f| row_check(f, rel, value))?;
    // The check is guarded by the row match, so it never runs on a row that is not updated.
    let guarded = case_when(
        nodes::not(nested(same_row(&alias, "portcullis_new"))),
        boolean(false),
        ok,
    );
    let mut projection = address(&alias);
    let mut assignments = Vec::new();
    for (i, set) in sets.into_iter().enumerate() {
        let target = AssignmentTarget::ColumnName(column_name(&set.col.name));
        match set.value {
            Some(e) => {
                projection.push(set_item(i, e, set.col)?);
                assignments.push(Assignment {
                    target,
                    value: set_value(i),
                });
            }
            None => assignments.push(Assignment {
                target,
                value: nodes::default(),
            }),
        }
    }
    // UPDATE <target> AS a SET … FROM (SELECT <address>, <new values> FROM (<fence>) AS a,
    // <from> WHERE <cond> OFFSET 0) AS "portcullis_new" WHERE <same row> AND <guarded>
    let mut sources = vec![nodes::derived(fence, &alias, &[])];
    sources.extend(from);
    let new = nodes::select(projection, sources, Some(cond), true);
    update.table = target_table(rel, &alias);
    update.assignments = assignments;
    update.from = Some(UpdateTableFromKind::AfterSet(vec![nodes::derived(
        new,
        "portcullis_new",
        &[],
    )]));
    update.selection = Some(binary(
        same_row(&alias, "portcullis_new"),
        BinaryOperator::And,
        guarded,
    ));
    update.optimizer_hints.clear();
    Ok(Built {
        reads,
        target_fence: Some(target_fence),
    })
}

/// The agent's WHERE, protected and taken out of the statement: `(<where>)`, or `true`.
fn where_clause(
    selection: &mut Option<Expr>,
    ctx: &Context<'_>,
    reads: &mut Vec<Read>,
) -> Result<Expr, Refusal> {
    match selection {
        None => Ok(boolean(true)),
        Some(e) => {
            reads.extend(protect(e, ctx)?);
            Ok(nested(take(e)))
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
    let mut reads = vec![rules.target_read(rel)];
    let using = match delete.using.as_mut() {
        None => Vec::new(),
        Some(items) => from_items(items, ctx, &mut reads)?,
    };
    let cond = where_clause(&mut delete.selection, ctx, &mut reads)?;
    returning(
        &mut delete.returning,
        rel,
        &rules.read,
        &alias,
        ctx,
        &mut reads,
    )?;
    let (fence, target_fence) = rules.write_fence(rel, &alias)?;
    // DELETE FROM <target> AS a USING (SELECT <address> FROM (<fence>) AS a, <using> WHERE
    // <cond> OFFSET 0) AS "portcullis_match" WHERE <same row>
    let mut sources = vec![nodes::derived(fence, &alias, &[])];
    sources.extend(using);
    let matched = nodes::select(address(&alias), sources, Some(cond), true);
    delete.from = FromTable::WithFromKeyword(vec![target_table(rel, &alias)]);
    delete.using = Some(vec![nodes::derived(matched, "portcullis_match", &[])]);
    delete.selection = Some(same_row(&alias, "portcullis_match"));
    delete.optimizer_hints.clear();
    Ok(Built {
        reads,
        target_fence: Some(target_fence),
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
