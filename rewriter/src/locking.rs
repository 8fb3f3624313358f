//! Row locks under policy: `SELECT … FOR UPDATE | NO KEY UPDATE | SHARE | KEY SHARE [OF t]
//! [NOWAIT | SKIP LOCKED]`, as agent work queues take jobs.
//!
//! As with PostgreSQL's row security, a row can be locked only if it passes both the `select`
//! and the `update` policy. A lock cannot simply name a fence: PostgreSQL pushes it into the
//! fence's subquery, which then locks every row the fence yields before the outer WHERE, ORDER
//! BY and LIMIT apply (a work queue's first worker would lock the whole queue). So a locked
//! table's fence (filtered by both policies) also yields each row's address, the table is joined
//! back on that address under a reserved alias (`portcullis_lock_N`, a name agents cannot write,
//! see [`crate::lexical::refuse_reserved_names`]), and the lock names that alias: exactly the rows
//! the query returns are locked. `*` is expanded to the fences' columns, so the joined table is
//! never output. A row updated concurrently while the query waits for its lock is left out of
//! the result (its address changed), never returned unchecked.

use std::ops::ControlFlow;
use std::sync::Arc;

use sqlparser::ast::{
    BinaryOperator, Expr, JoinConstraint, JoinOperator, LockClause, ObjectName, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, TableAlias, TableAliasColumnDef,
    TableFactor, TableWithJoins, WildcardAdditionalOptions,
};

use crate::catalog::{normalize, Relation};
use crate::fence;
use crate::nodes::{ident as quoted, qualified_column as column};
use crate::policy::{TablePolicy, WriteAction};
use crate::{Context, Refusal};

/// A fence in a locking SELECT's FROM.
pub(crate) struct Fenced<'a> {
    pub alias: String,
    pub rel: &'a Relation,
    pub policy: Arc<TablePolicy>,
}

/// A locking query level, as the protector walks it.
pub(crate) struct Frame<'a> {
    locks: Vec<LockClause>,
    /// The fences of the query's SELECT, and which of them are locked (by alias).
    fences: Vec<Fenced<'a>>,
    locked: Vec<String>,
}

impl<'a> Frame<'a> {
    pub fn new(query: &Query) -> Result<Option<Self>, Refusal> {
        if query.locks.is_empty() {
            return Ok(None);
        }
        if !matches!(&*query.body, SetExpr::Select(_)) {
            return Err(Refusal::Unsupported(
                "FOR UPDATE/SHARE on a set operation or VALUES".into(),
            ));
        }
        Ok(Some(Frame {
            locks: query.locks.clone(),
            fences: Vec::new(),
            locked: Vec::new(),
        }))
    }
}

const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax", "tableoid"];

fn unsupported(what: &str) -> Refusal {
    Refusal::Unsupported(format!("{what} (row locks through Portcullis)"))
}

/// Every FROM item of `select`, as (alias, factor).
fn factors(select: &Select) -> Vec<&TableFactor> {
    select
        .from
        .iter()
        .flat_map(|t| std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)))
        .collect()
}

fn derived_alias(factor: &TableFactor) -> Option<String> {
    match factor {
        TableFactor::Derived { alias: Some(a), .. } => Some(normalize(&a.name)),
        _ => None,
    }
}

/// Decides which fences of the locking `select` are locked and gives each its lock fence (both
/// policies, with the row address), before the WHERE conjuncts are copied into the fences.
pub(crate) fn lock_fences<'a>(
    frame: &mut Frame<'a>,
    select: &mut Select,
    fences: Vec<Fenced<'a>>,
    ctx: &Context<'_>,
) -> Result<(), Refusal> {
    for join in select.from.iter().flat_map(|t| &t.joins) {
        match &join.join_operator {
            JoinOperator::Join(c) | JoinOperator::Inner(c) | JoinOperator::CrossJoin(c) => {
                if matches!(c, JoinConstraint::Natural | JoinConstraint::Using(_)) {
                    return Err(unsupported("NATURAL or USING joins in a locking SELECT"));
                }
            }
            _ => return Err(unsupported("outer and other joins in a locking SELECT")),
        }
    }
    // The joined tables' system columns answer to their plain names (`xmax` tells who holds a
    // lock): not in a locking SELECT.
    let system = sqlparser::ast::visit_expressions(&*select, |e| match e {
        Expr::Identifier(i) if SYSTEM_COLUMNS.contains(&normalize(i).as_str()) => {
            ControlFlow::Break(normalize(i))
        }
        _ => ControlFlow::Continue(()),
    });
    if let ControlFlow::Break(name) = system {
        return Err(Refusal::Forbidden(format!(
            "the system column {name} in a locking SELECT"
        )));
    }
    let is_fence = |alias: &str| fences.iter().any(|f| f.alias == alias);
    let mut locked: Vec<String> = Vec::new();
    for lock in &frame.locks {
        match &lock.of {
            None => {
                for factor in factors(select) {
                    match derived_alias(factor) {
                        Some(a) if is_fence(&a) => {
                            if !locked.contains(&a) {
                                locked.push(a)
                            }
                        }
                        _ => {
                            return Err(unsupported(
                                "FOR UPDATE/SHARE without OF over a subquery, function, WITH \
                                 query or catalog in FROM; name the tables to lock with OF",
                            ))
                        }
                    }
                }
            }
            Some(name) => {
                let a = name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(normalize)
                    .unwrap_or_default();
                if !is_fence(&a) {
                    return Err(Refusal::Forbidden(format!(
                        "FOR UPDATE/SHARE OF {name}: only tables under policy can be locked \
                         through Portcullis"
                    )));
                }
                if !locked.contains(&a) {
                    locked.push(a);
                }
            }
        }
    }
    for alias in &locked {
        let f = fences.iter().find(|f| &f.alias == alias).expect("a fence");
        let write = ctx.policies.write(f.rel, WriteAction::Update)?;
        if write.filter == policies::Filter::False {
            return Err(Refusal::Forbidden(format!(
                "SELECT … FOR UPDATE/SHARE locks rows of {}: no policy permits update on it for \
                 this agent (locking needs update, as with PostgreSQL's row security){}",
                f.rel.entity_type(),
                if write.determining.is_empty() {
                    String::new()
                } else {
                    format!(" (policies: {})", write.determining.join(", "))
                }
            )));
        }
        let subquery = fence::build_for_write(f.rel, &f.policy, &write.filter)?;
        for factor in select.from.iter_mut().flat_map(|t| {
            std::iter::once(&mut t.relation).chain(t.joins.iter_mut().map(|j| &mut j.relation))
        }) {
            if let TableFactor::Derived {
                subquery: s,
                alias: Some(a),
                ..
            } = factor
            {
                if &normalize(&a.name) == alias {
                    if !a.columns.is_empty() {
                        return Err(unsupported("column aliases on a locked table"));
                    }
                    *s = subquery.clone();
                }
            }
        }
    }
    frame.fences = fences;
    frame.locked = locked;
    Ok(())
}

fn eq(left: Expr, right: Expr) -> Expr {
    Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::Eq,
        right: Box::new(right),
    }
}

fn and(left: Expr, right: Expr) -> Expr {
    Expr::BinaryOp {
        left: Box::new(left),
        op: BinaryOperator::And,
        right: Box::new(right),
    }
}

/// Joins each locked table back on its rows' addresses, points the locks at the joined tables,
/// and expands `*` to the fences' columns.
pub(crate) fn finish(frame: Frame<'_>, query: &mut Query) -> Result<(), Refusal> {
    let SetExpr::Select(select) = &mut *query.body else {
        return Err(unsupported("this locking query"));
    };
    let lock_alias = |alias: &str| {
        let i = frame.locked.iter().position(|a| a == alias).unwrap_or(0);
        format!("portcullis_lock_{}", i + 1)
    };
    expand_wildcards(select, &frame.fences)?;
    let mut condition: Option<Expr> = None;
    for (i, alias) in frame.locked.iter().enumerate() {
        let f = frame
            .fences
            .iter()
            .find(|f| &f.alias == alias)
            .expect("a fence");
        let lock = format!("portcullis_lock_{}", i + 1);
        // Every column of the joined table renamed to a reserved name, so no name the agent
        // writes can reach it (its rows are not fenced).
        let renamed = (1..=f.rel.columns.len())
            .map(|n| TableAliasColumnDef {
                name: quoted(&format!("portcullis_c{n}")),
                data_type: None,
            })
            .collect();
        select.from.push(TableWithJoins {
            relation: TableFactor::Table {
                name: ObjectName::from(vec![quoted(&f.rel.schema), quoted(&f.rel.name)]),
                alias: Some(TableAlias {
                    explicit: true,
                    name: quoted(&lock),
                    columns: renamed,
                    at: None,
                }),
                args: None,
                with_hints: vec![],
                version: None,
                partitions: vec![],
                json_path: None,
                sample: None,
                index_hints: vec![],
                with_ordinality: false,
            },
            joins: vec![],
        });
        let same_row = and(
            eq(
                column(&lock, "tableoid"),
                column(alias, "portcullis_tableoid"),
            ),
            eq(column(&lock, "ctid"), column(alias, "portcullis_ctid")),
        );
        // The renaming covers the columns the catalog snapshot knows; one added since would keep
        // its name. Then no row is returned: PostgreSQL evaluates this constant condition once,
        // before reading any row (a one-time filter).
        let same_shape = crate::protect::parse_expr(
            &format!(
                "(SELECT pg_catalog.count(*) FROM pg_catalog.pg_attribute WHERE attrelid = \
                 CAST({} AS pg_catalog.regclass) AND attnum > 0 AND NOT attisdropped) = {}",
                crate::sql_filter::quote_string(&f.rel.qualified()),
                f.rel.columns.len()
            ),
            f.rel,
        )?;
        let same_row = and(same_row, same_shape);
        condition = Some(match condition {
            None => same_row,
            Some(c) => and(c, same_row),
        });
    }
    if let Some(c) = condition {
        select.selection = Some(match select.selection.take() {
            None => c,
            Some(e) => and(Expr::Nested(Box::new(e)), c),
        });
    }
    let mut locks = Vec::new();
    for lock in &frame.locks {
        let targets: Vec<String> = match &lock.of {
            None => frame.locked.clone(),
            Some(name) => name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .map(normalize)
                .into_iter()
                .collect(),
        };
        for t in targets {
            locks.push(LockClause {
                lock_type: lock.lock_type,
                of: Some(ObjectName::from(vec![quoted(&lock_alias(&t))])),
                nonblock: lock.nonblock,
            });
        }
    }
    query.locks = locks;
    Ok(())
}

/// `*` and `fence.*` in a locking SELECT become the fences' columns, so the tables joined for
/// the locks are never output.
fn expand_wildcards(select: &mut Select, fences: &[Fenced<'_>]) -> Result<(), Refusal> {
    let order: Vec<Option<String>> = factors(select).into_iter().map(derived_alias).collect();
    let columns = |alias: &str| -> Result<Vec<SelectItem>, Refusal> {
        let f = fences.iter().find(|f| f.alias == alias).expect("a fence");
        let mut items = Vec::new();
        for col in &f.rel.columns {
            if fence::column_value(f.rel, &f.policy, col)?.is_some() {
                items.push(SelectItem::UnnamedExpr(column(alias, &col.name)));
            }
        }
        Ok(items)
    };
    let plain = |o: &WildcardAdditionalOptions| {
        o.opt_ilike.is_none()
            && o.opt_exclude.is_none()
            && o.opt_except.is_none()
            && o.opt_replace.is_none()
            && o.opt_rename.is_none()
            && o.opt_alias.is_none()
    };
    let mut out = Vec::new();
    for item in std::mem::take(&mut select.projection) {
        match item {
            SelectItem::Wildcard(o) if plain(&o) => {
                for alias in &order {
                    match alias {
                        Some(a) if fences.iter().any(|f| &f.alias == a) => out.extend(columns(a)?),
                        _ => {
                            return Err(unsupported(
                                "SELECT * in a locking SELECT over items not under policy; list \
                                 the columns",
                            ))
                        }
                    }
                }
            }
            SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(n), o)
                if plain(&o) =>
            {
                let a =
                    n.0.last()
                        .and_then(|p| p.as_ident())
                        .map(normalize)
                        .unwrap_or_default();
                if fences.iter().any(|f| f.alias == a) {
                    out.extend(columns(&a)?);
                } else {
                    out.push(SelectItem::QualifiedWildcard(
                        SelectItemQualifiedWildcardKind::ObjectName(n),
                        o,
                    ));
                }
            }
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                return Err(unsupported("this wildcard in a locking SELECT"))
            }
            other => out.push(other),
        }
    }
    select.projection = out;
    Ok(())
}
