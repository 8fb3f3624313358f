//! WITH queries and writes together. A read-only `WITH` in front of a write (`WITH c AS
//! (SELECT …) UPDATE t … FROM c`), as ORMs and analysts write it. The write rewriter checks a single INSERT, UPDATE or DELETE, so the
//! WITH queries are inlined where they are named: each reference to a WITH query becomes a
//! subquery of its text (PostgreSQL inlines such WITH queries itself), which the write's
//! protection then fences like any other subquery. What is inlined is only ever read; the
//! write's target is never a WITH query (PostgreSQL resolves it to a table), so it is left
//! alone.
//!
//! Refused: `WITH RECURSIVE` (it cannot be inlined), a WITH query that writes in front of a
//! write, and a reference that renames the columns of a WITH query that has a column list
//! already.
//!
//! A WITH query that writes in front of a *query* ([`WritingCtes`]) is checked as that write
//! alone would be.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Cte, Delete, FromTable, Insert, ObjectNamePart, Query, SetExpr, Statement, TableAlias,
    TableFactor, Update, UpdateTableFromKind, VisitMut, VisitorMut,
};

use crate::catalog::normalize;
use crate::protect::{names_any, refuse_forward_references};
use crate::Refusal;

/// Turns `WITH … <write>` into the write with its WITH queries inlined; other statements are
/// left as they are.
pub(crate) fn inline(statement: &mut Statement) -> Result<(), Refusal> {
    let Statement::Query(query) = statement else {
        return Ok(());
    };
    if !matches!(
        *query.body,
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_)
    ) {
        return Ok(());
    }
    let Some(with) = query.with.take() else {
        return Ok(());
    };
    if query.order_by.is_some()
        || query.limit_clause.is_some()
        || query.fetch.is_some()
        || !query.locks.is_empty()
    {
        return Err(Refusal::Unsupported("this WITH … write form".into()));
    }
    if with.recursive {
        return Err(Refusal::Unsupported(
            "WITH RECURSIVE in front of a write (write the recursive query as a subquery)".into(),
        ));
    }
    // Each WITH query sees the earlier ones: inline those into it first (a name that refers to
    // itself or a later one is refused as ambiguous, as for reads).
    refuse_forward_references(&with)?;
    let mut ctes: Vec<Cte> = Vec::new();
    for mut cte in with.cte_tables {
        if cte.from.is_some() {
            return Err(Refusal::Unsupported("this WITH query form".into()));
        }
        if writes(&cte.query) {
            return Err(Refusal::Unsupported(
                "data-modifying WITH queries (only the statement itself may write)".into(),
            ));
        }
        substitute(&mut *cte.query, &ctes)?;
        ctes.push(cte);
    }
    let mut write = match &*query.body {
        SetExpr::Insert(w) | SetExpr::Update(w) | SetExpr::Delete(w) => w.clone(),
        _ => unreachable!("matched above"),
    };
    match &mut write {
        Statement::Insert(Insert {
            source,
            on,
            returning,
            ..
        }) => {
            if let Some(source) = source {
                substitute(&mut **source, &ctes)?;
            }
            substitute(on, &ctes)?;
            substitute(returning, &ctes)?;
        }
        Statement::Update(Update {
            table,
            assignments,
            from,
            selection,
            returning,
            ..
        }) => {
            // The target itself is a table; only its joins (if any) are read.
            for join in &mut table.joins {
                substitute(join, &ctes)?;
            }
            substitute(assignments, &ctes)?;
            if let Some(
                UpdateTableFromKind::AfterSet(items) | UpdateTableFromKind::BeforeSet(items),
            ) = from
            {
                substitute(items, &ctes)?;
            }
            substitute(selection, &ctes)?;
            substitute(returning, &ctes)?;
        }
        Statement::Delete(Delete {
            from,
            using,
            selection,
            returning,
            ..
        }) => {
            let (FromTable::WithFromKeyword(targets) | FromTable::WithoutKeyword(targets)) = from;
            for target in targets {
                for join in &mut target.joins {
                    substitute(join, &ctes)?;
                }
            }
            substitute(using, &ctes)?;
            substitute(selection, &ctes)?;
            substitute(returning, &ctes)?;
        }
        _ => return Err(Refusal::Unsupported("this WITH … write form".into())),
    }
    *statement = write;
    Ok(())
}

/// Whether `query` writes (INSERT, UPDATE, DELETE or MERGE).
fn writes(query: &Query) -> bool {
    matches!(
        *query.body,
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
    )
}

/// Replaces, in `node`, each table reference naming one of `ctes` (and not shadowed by a WITH
/// query of a nested query) with the WITH query's text as a subquery.
fn substitute<T: VisitMut>(node: &mut T, ctes: &[Cte]) -> Result<(), Refusal> {
    if ctes.is_empty() {
        return Ok(());
    }
    let mut v = Substitute {
        ctes,
        shadowed: Vec::new(),
    };
    match node.visit(&mut v) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Substitute<'a> {
    ctes: &'a [Cte],
    /// Names defined by the WITH clauses of the nested queries being visited.
    shadowed: Vec<Vec<String>>,
}

impl VisitorMut for Substitute<'_> {
    type Break = Refusal;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<Refusal> {
        let names = query
            .with
            .iter()
            .flat_map(|w| w.cte_tables.iter().map(|c| normalize(&c.alias.name)))
            .collect();
        self.shadowed.push(names);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<Refusal> {
        self.shadowed.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<Refusal> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let [ObjectNamePart::Identifier(ident)] = name.0.as_slice() else {
            return ControlFlow::Continue(());
        };
        let n = normalize(ident);
        if self.shadowed.iter().flatten().any(|s| *s == n) {
            return ControlFlow::Continue(());
        }
        let Some(cte) = self.ctes.iter().find(|c| normalize(&c.alias.name) == n) else {
            return ControlFlow::Continue(());
        };
        let alias = match alias.take() {
            None => cte.alias.clone(),
            Some(a) if a.columns.is_empty() => TableAlias {
                columns: cte.alias.columns.clone(),
                ..a
            },
            Some(_) if !cte.alias.columns.is_empty() => {
                return ControlFlow::Break(Refusal::Unsupported(format!(
                    "renaming the columns of WITH query {n:?}, which names them already"
                )))
            }
            Some(a) => a,
        };
        *factor = TableFactor::Derived {
            lateral: false,
            subquery: cte.query.clone(),
            alias: Some(alias),
            sample: None,
        };
        ControlFlow::Continue(())
    }
}

/// A WITH query that writes, in front of a query (`WITH u AS (UPDATE … RETURNING …) SELECT …`,
/// as LangGraph's Postgres store refreshes TTLs while reading): each writing WITH query is
/// checked and rewritten as the statement alone would be, with the read-only WITH queries
/// before it inlined; the rest of the query is then protected with the writes set aside (see
/// [`WritingCtes::restore`]). Refused: one writing WITH query reading another, or `WITH
/// RECURSIVE` with one.
pub(crate) struct WritingCtes {
    /// (index in the WITH clause, the checked write as that WITH query's body).
    writes: Vec<(usize, Box<Query>)>,
}

impl WritingCtes {
    /// Rewrites the writing WITH queries of `statement` (if any), leaving a placeholder query
    /// under each name; returns them with the relations their checks read.
    pub(crate) fn take(
        statement: &mut Statement,
        ctx: &crate::Context<'_>,
    ) -> Result<(Self, Vec<crate::protect::Read>), Refusal> {
        let mut taken = WritingCtes { writes: Vec::new() };
        let mut reads = Vec::new();
        let Statement::Query(query) = statement else {
            return Ok((taken, reads));
        };
        let Some(with) = query.with.as_mut() else {
            return Ok((taken, reads));
        };
        if !with.cte_tables.iter().any(|c| writes(&c.query)) {
            return Ok((taken, reads));
        }
        if with.recursive {
            return Err(Refusal::Unsupported(
                "WITH RECURSIVE with a data-modifying WITH query".into(),
            ));
        }
        // As for reads, a name that refers to itself or a later WITH query is refused (the
        // writing ones are set aside before the query's own check could see them).
        refuse_forward_references(with)?;
        let writing: Vec<String> = with
            .cte_tables
            .iter()
            .filter(|c| writes(&c.query))
            .map(|c| normalize(&c.alias.name))
            .collect();
        let mut earlier: Vec<Cte> = Vec::new();
        for (i, cte) in with.cte_tables.iter_mut().enumerate() {
            if !writes(&cte.query) {
                earlier.push(cte.clone());
                continue;
            }
            let q = &mut *cte.query;
            if q.order_by.is_some()
                || q.limit_clause.is_some()
                || q.fetch.is_some()
                || q.with.is_some()
                || !q.locks.is_empty()
            {
                return Err(Refusal::Unsupported(
                    "this data-modifying WITH query form".into(),
                ));
            }
            let mut write = match &*q.body {
                SetExpr::Insert(w)
                | SetExpr::Update(w)
                | SetExpr::Delete(w)
                | SetExpr::Merge(w) => w.clone(),
                _ => unreachable!("checked by writes()"),
            };
            // The read-only WITH queries before it, where it names them.
            let mut wrapped = Statement::Query(Box::new(Query {
                with: Some(sqlparser::ast::With {
                    with_token: with.with_token.clone(),
                    recursive: false,
                    cte_tables: earlier.clone(),
                }),
                ..q.clone()
            }));
            if matches!(write, Statement::Merge(_)) {
                return Err(Refusal::Unsupported("MERGE in a WITH query".into()));
            }
            if !earlier.is_empty() {
                inline(&mut wrapped)?;
                debug_assert!(!matches!(wrapped, Statement::Query(_)));
                write = wrapped;
            }
            // Checked after inlining: a read-only WITH query in between may name a writing one.
            if names_any(&write, &writing) {
                return Err(Refusal::Unsupported(
                    "a data-modifying WITH query that reads another one".into(),
                ));
            }
            reads.extend(crate::writes::rewrite(&mut write, ctx)?);
            let body = match write {
                w @ Statement::Insert(_) => SetExpr::Insert(w),
                w @ Statement::Update(_) => SetExpr::Update(w),
                w @ Statement::Delete(_) => SetExpr::Delete(w),
                w @ Statement::Merge(_) => SetExpr::Merge(w),
                _ => {
                    return Err(Refusal::Unsupported(
                        "this data-modifying WITH query".into(),
                    ))
                }
            };
            let checked = Box::new(Query {
                body: Box::new(body),
                ..q.clone()
            });
            let placeholder =
                crate::parse::built("SELECT NULL", "a placeholder", |p| p.parse_query())?;
            *q = *placeholder;
            taken.writes.push((i, checked));
        }
        Ok((taken, reads))
    }

    /// Puts the checked writes back in place of their placeholders.
    pub(crate) fn restore(self, statement: &mut Statement) {
        let Statement::Query(query) = statement else {
            return;
        };
        let Some(with) = query.with.as_mut() else {
            return;
        };
        for (i, checked) in self.writes {
            if let Some(cte) = with.cte_tables.get_mut(i) {
                cte.query = checked;
            }
        }
    }
}
