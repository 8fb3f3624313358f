//! A read-only `WITH` in front of a write (`WITH c AS (SELECT …) UPDATE t … FROM c`), as ORMs
//! and analysts write it. The write rewriter checks a single INSERT, UPDATE or DELETE, so the
//! WITH queries are inlined where they are named: each reference to a WITH query becomes a
//! subquery of its text (PostgreSQL inlines such WITH queries itself), which the write's
//! protection then fences like any other subquery. What is inlined is only ever read; the
//! write's target is never a WITH query (PostgreSQL resolves it to a table), so it is left
//! alone.
//!
//! Refused: `WITH RECURSIVE` (it cannot be inlined), a WITH query that writes (nothing may
//! write but the checked statement), and a reference that renames the columns of a WITH
//! query that has a column list already.

use std::ops::ControlFlow;

use sqlparser::ast::{
    Cte, Delete, FromTable, Insert, ObjectNamePart, Query, SetExpr, Statement, TableAlias,
    TableFactor, Update, UpdateTableFromKind, VisitMut, VisitorMut,
};

use crate::catalog::normalize;
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
    // Each WITH query sees the earlier ones: inline those into it first. A name that refers to
    // itself or a later one is a table to PostgreSQL: refused as ambiguous, as for reads.
    let names: Vec<String> = with
        .cte_tables
        .iter()
        .map(|c| normalize(&c.alias.name))
        .collect();
    for (i, cte) in with.cte_tables.iter().enumerate() {
        let later = &names[i..];
        let flow = sqlparser::ast::visit_relations(&cte.query, |r| match r.0.as_slice() {
            [ObjectNamePart::Identifier(id)] if later.contains(&normalize(id)) => {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        });
        if flow.is_break() {
            return Err(Refusal::Forbidden(format!(
                "WITH query {:?} refers to itself or a later WITH query without RECURSIVE; \
                 schema-qualify the table name",
                names[i]
            )));
        }
    }
    let mut ctes: Vec<Cte> = Vec::new();
    for mut cte in with.cte_tables {
        if cte.from.is_some() {
            return Err(Refusal::Unsupported("this WITH query form".into()));
        }
        if matches!(
            *cte.query.body,
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_)
        ) {
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
