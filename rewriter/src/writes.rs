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
//! - RETURNING `*` returns the readable columns, masked; a RETURNING expression naming a masked
//!   or denied column is refused.
//!
//! Refused: ON CONFLICT, MERGE, writes to views and system catalogs, `DEFAULT` in VALUES or
//! SET, multi-column SET, an INSERT … SELECT without a column list, and an INSERT that leaves
//! to its defaults a column the policy checks.

use std::collections::BTreeSet;
use std::sync::Arc;

use policies::{ColumnRule, Filter};
use sqlparser::ast::{
    AssignmentTarget, Delete, Expr, FromTable, Insert, ObjectName, Query, SelectItem, SetExpr,
    Statement, TableFactor, TableObject, TableWithJoins, Update, UpdateTableFromKind,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::catalog::{normalize, quote_ident, Column, RelKind, Relation, Resolved};
use crate::fence;
use crate::lexical::to_sql;
use crate::policy::{TablePolicy, WriteAction};
use crate::protect::{protect, pushdown, FenceInfo, Read};
use crate::sql_filter::{quote_string, render};
use crate::{Context, Refusal, VIOLATION_MARKER};

/// A write rewritten as text, with the reads it makes and its target's fence (for pushdown).
struct Built {
    sql: String,
    reads: Vec<Read>,
    target_fence: Option<FenceInfo>,
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
        _ => return Err(Refusal::Unsupported("this write".into())),
    };
    let mut rewritten = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(&sql)
        .and_then(|mut p| p.parse_statement())
        .map_err(|e| Refusal::Unsupported(format!("cannot build the checked write: {e}")))?;
    if let Some(fence) = target_fence {
        push_into_target_fence(&mut rewritten, fence);
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
        None => Err(Refusal::Forbidden(format!(
            "relation {name} is not known to Portcullis (it may not exist; if it was just \
             created, Portcullis learns of it when its catalog is refreshed)"
        ))),
    }
}

/// The rules for `action` on `rel`: its filter, the read policy, and the policies to name.
struct Rules {
    read: Arc<TablePolicy>,
    write: Filter,
    determining: Vec<String>,
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
    fn write_fence(&self, rel: &Relation, alias: &str) -> Result<(String, FenceInfo), Refusal> {
        let fence = fence::build_for_write(rel, &self.read, &self.write)?;
        let info = FenceInfo {
            alias: alias.to_string(),
            clear: fence.clear_columns,
        };
        Ok((fence.sql, info))
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
    })
}

fn named(ids: &[String]) -> String {
    if ids.is_empty() {
        String::new()
    } else {
        format!(" (policies: {})", ids.join(", "))
    }
}

/// The filter a new row must pass, with the policies to name when it does not: the action's,
/// and the read policy's when RETURNING shows the row.
fn new_row_filter(rules: &Rules, returning: bool) -> (Filter, Vec<String>) {
    let mut ids = rules.determining.clone();
    if !returning {
        return (rules.write.clone(), ids);
    }
    for id in &rules.read.determining {
        if !ids.contains(id) {
            ids.push(id.clone());
        }
    }
    (
        Filter::and(vec![rules.write.clone(), rules.read.filter.clone()]),
        ids,
    )
}

/// `CASE WHEN <ok> THEN true ELSE <abort> END`: aborts the statement with the violation error
/// for a row where `ok` is not TRUE. The abort casts text to int4, with a volatile operand so
/// PostgreSQL cannot fold it (and raise) at plan time.
fn check(ok: &str, message: &str) -> String {
    format!(
        "CASE WHEN {ok} THEN true ELSE CAST({} || pg_catalog.\"left\"(pg_catalog.random()::text, 0) AS pg_catalog.int4) = 0 END",
        quote_string(&format!("{VIOLATION_MARKER}{message}"))
    )
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

/// The RETURNING clause: `*` (or `alias.*`) becomes the readable columns, masked; expressions
/// may not name a masked or denied column.
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
    let clear: BTreeSet<&str> = rel
        .columns
        .iter()
        .filter(|c| policy.column(&c.name) == ColumnRule::Visible)
        .map(|c| c.name.as_str())
        .collect();
    let mut out = Vec::new();
    for item in items.iter() {
        let expr = match item {
            SelectItem::Wildcard(_) => None,
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
                None
            }
            SelectItem::QualifiedWildcard(..) => {
                return Err(Refusal::Unsupported(
                    "RETURNING of another relation's columns".into(),
                ))
            }
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
            SelectItem::ExprWithAliases { .. } => {
                return Err(Refusal::Unsupported("this RETURNING item".into()))
            }
        };
        match expr {
            None => out.push(fence::projection(rel, policy)?.0.join(", ")),
            Some(e) => {
                // Only the columns the agent reads in clear, by name (bare or qualified by the
                // target's name): no whole-row reference, no column the catalog snapshot does
                // not know (it may be newer than the snapshot), no other relation's columns.
                let refused = sqlparser::ast::visit_expressions(e, |x| {
                    let column = match x {
                        Expr::Identifier(i) => Some(normalize(i)),
                        Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                            [q, c] if normalize(q) == alias => Some(normalize(c)),
                            _ => return std::ops::ControlFlow::Break(x.to_string()),
                        },
                        Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => {
                            return std::ops::ControlFlow::Break(x.to_string())
                        }
                        _ => None,
                    };
                    match column {
                        Some(c) if !clear.contains(c.as_str()) => std::ops::ControlFlow::Break(c),
                        _ => std::ops::ControlFlow::Continue(()),
                    }
                });
                if let std::ops::ControlFlow::Break(n) = refused {
                    return Err(Refusal::Forbidden(format!(
                        "RETURNING names {n:?}: RETURNING may name only columns of {} this \
                         agent reads in clear (RETURNING * returns the row as policy shows it)",
                        rel.entity_type()
                    )));
                }
                out.push(to_sql(item)?);
            }
        }
    }
    Ok(format!(" RETURNING {}", out.join(", ")))
}

fn rewrite_insert(insert: &mut Insert, ctx: &Context<'_>) -> Result<Built, Refusal> {
    if insert.on.is_some() {
        return Err(Refusal::Unsupported(
            "INSERT … ON CONFLICT (write the INSERT without it)".into(),
        ));
    }
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
    let (filter, ids) = new_row_filter(&rules, insert.returning.is_some());
    let returning_sql = returning(
        &mut insert.returning,
        rel,
        &rules.read,
        &alias,
        ctx,
        &mut reads,
    )?;
    let table = match &insert.table_alias {
        Some(_) => format!("{} AS {}", rel.qualified(), quote_ident(&alias)),
        None => rel.qualified(),
    };

    let Some(source) = insert.source.as_mut() else {
        // DEFAULT VALUES: every column from its default, which the proxy cannot see.
        if filter != Filter::True {
            return Err(Refusal::Forbidden(format!(
                "INSERT … DEFAULT VALUES into {}: the policy checks columns {:?}; name them",
                rel.entity_type(),
                filter.columns()
            )));
        }
        return Ok(Built {
            sql: format!("INSERT INTO {table} DEFAULT VALUES{returning_sql}"),
            reads,
            target_fence: None,
        });
    };

    let mut columns: Vec<&Column> = Vec::new();
    for c in &insert.columns {
        let [part] = c.0.as_slice() else {
            return Err(Refusal::Unsupported("qualified INSERT column names".into()));
        };
        let ident = part
            .as_ident()
            .ok_or_else(|| Refusal::Unsupported("this INSERT column name".into()))?;
        columns.push(column(rel, &normalize(ident))?);
    }
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
                if width > rel.columns.len() {
                    return Err(Refusal::Syntax(
                        "INSERT has more expressions than target columns".into(),
                    ));
                }
                columns = rel.columns.iter().take(width).collect();
            }
            if values.rows.iter().any(|r| r.len() != columns.len()) {
                return Err(Refusal::Syntax(
                    "each VALUES row must have one value per target column".into(),
                ));
            }
            if values
                .rows
                .iter()
                .flat_map(|r| r.content.iter())
                .any(is_default)
            {
                return Err(Refusal::Unsupported(
                    "DEFAULT in VALUES (leave the column out of the column list instead)".into(),
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
                return Err(Refusal::Unsupported(
                    "INSERT … SELECT without a column list (name the target columns)".into(),
                ));
            }
            reads.extend(protect(&mut **source, ctx)?);
            to_sql(&**source)?
        }
    };
    // A column the agent cannot read in clear cannot be written blind either (nor probed:
    // a unique constraint on it would tell whether a value exists).
    if let Some(c) = columns
        .iter()
        .find(|c| rules.read.column(&c.name) != ColumnRule::Visible)
    {
        return Err(Refusal::Forbidden(format!(
            "INSERT into column {:?} of {}, which this agent may not read in clear",
            c.name,
            rel.entity_type()
        )));
    }
    let supplied: BTreeSet<&str> = columns.iter().map(|c| c.name.as_str()).collect();
    if let Some(missing) = filter.columns().into_iter().find(|c| !supplied.contains(c)) {
        return Err(Refusal::Forbidden(format!(
            "the policy for inserting into {} checks column {missing:?}, which this INSERT \
             leaves to its default; set it explicitly",
            rel.entity_type()
        )));
    }
    let names: Vec<String> = columns.iter().map(|c| quote_ident(&c.name)).collect();
    let names = names.join(", ");
    let casts: Vec<String> = columns
        .iter()
        .map(|c| {
            let n = quote_ident(&c.name);
            format!("CAST(\"portcullis_source\".{n} AS {}) AS {n}", cast_type(c))
        })
        .collect();
    let ok = render(&filter, rel)?;
    Ok(Built {
        sql: format!(
            "INSERT INTO {table} ({names}) SELECT {names} FROM (SELECT {} FROM (SELECT * FROM ({source_sql}) AS \"portcullis_source\" OFFSET 0) AS \"portcullis_source\"({names})) AS \"portcullis_new\" WHERE {}{returning_sql}",
            casts.join(", "),
            check(&ok, &violation(WriteAction::Insert, rel, &ids, !returning_sql.is_empty()))
        ),
        reads,
        target_fence: None,
    })
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

    // SET: each target a column the agent may read in clear (a blind overwrite of a masked or
    // denied column is refused), each value computed over the fence.
    let mut sets: Vec<(&Column, String)> = Vec::new();
    for assignment in update.assignments.iter_mut() {
        let AssignmentTarget::ColumnName(target) = &assignment.target else {
            return Err(Refusal::Unsupported(
                "multi-column SET (a, b) = (…); assign each column".into(),
            ));
        };
        let Some(ident) = target.0.last().and_then(|p| p.as_ident()) else {
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
        if is_default(&assignment.value) {
            return Err(Refusal::Unsupported("SET … = DEFAULT".into()));
        }
        reads.extend(protect(&mut assignment.value, ctx)?);
        sets.push((col, to_sql(&assignment.value)?));
    }
    let from = match update.from.as_mut() {
        None => String::new(),
        Some(UpdateTableFromKind::AfterSet(items)) => from_items(items, ctx, &mut reads)?,
        Some(UpdateTableFromKind::BeforeSet(_)) => {
            return Err(Refusal::Syntax("FROM before SET".into()))
        }
    };
    let cond = where_clause(&mut update.selection, ctx, &mut reads)?;
    let (filter, ids) = new_row_filter(&rules, update.returning.is_some());
    if let Some(g) = filter
        .columns()
        .into_iter()
        .find(|name| rel.columns.iter().any(|c| c.name == *name && c.generated))
    {
        return Err(Refusal::Forbidden(format!(
            "the policy for updating {} checks generated column {g:?}, whose new value exists \
             only after the write",
            rel.entity_type()
        )));
    }
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
        .map(|(i, (c, e))| format!("CAST(({e}) AS {}) AS \"portcullis_set_{i}\"", cast_type(c)))
        .collect();
    let assignments: Vec<String> = sets
        .iter()
        .enumerate()
        .map(|(i, (c, _))| {
            format!(
                "{} = \"portcullis_new\".\"portcullis_set_{i}\"",
                quote_ident(&c.name)
            )
        })
        .collect();
    // The new row's values of the columns the check reads: the SET value, or the old value.
    let row: Vec<String> = filter
        .columns()
        .into_iter()
        .map(|name| {
            let n = quote_ident(name);
            match sets.iter().position(|(c, _)| c.name == name) {
                Some(i) => format!("\"portcullis_new\".\"portcullis_set_{i}\" AS {n}"),
                None => format!("{a}.{n} AS {n}"),
            }
        })
        .collect();
    let ok = if row.is_empty() {
        render(&filter, rel)?
    } else {
        format!(
            "(SELECT {} FROM (SELECT {}) AS \"portcullis_row\")",
            render(&filter, rel)?,
            row.join(", ")
        )
    };
    let same_row = format!(
        "{a}.tableoid = \"portcullis_new\".\"portcullis_tableoid\" AND {a}.ctid = \"portcullis_new\".\"portcullis_ctid\""
    );
    // The check is guarded by the row match, so it never runs on a row that is not updated.
    let guarded = format!(
        "CASE WHEN NOT ({same_row}) THEN false ELSE {} END",
        check(
            &ok,
            &violation(WriteAction::Update, rel, &ids, !returning_sql.is_empty())
        )
    );
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
fn push_into_target_fence(statement: &mut Statement, fence: FenceInfo) {
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
    pushdown(inner, &[fence]);
}

fn inner_select(query: &mut Query) -> Option<&mut sqlparser::ast::Select> {
    match &mut *query.body {
        SetExpr::Select(s) => Some(s),
        _ => None,
    }
}
