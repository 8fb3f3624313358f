//! Column references qualified by schema and table (`public.customers.id`,
//! `pg_catalog.pg_class.relname`, `SELECT public.customers.*`), as reflection tools write them
//! (SQLAlchemy, LangChain's and LlamaIndex's `SQLDatabase`, Prisma).
//!
//! The rewriter replaces an unaliased `FROM s.t` by a fenced subquery aliased `t`, after which
//! PostgreSQL no longer knows `s.t`. Such references are shortened to `t.id` before rewriting.
//! That is exact when `t` can name nothing else in the statement; when another FROM item,
//! alias or WITH query could also be called `t`, the statement is refused with a request to
//! alias the tables.

use std::collections::HashSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Expr, ObjectName, ObjectNamePart, Query, Select, SelectItem, SelectItemQualifiedWildcardKind,
    Statement, TableFactor, Visit, VisitMut, Visitor, VisitorMut,
};

use crate::catalog::{normalize, Resolved};
use crate::{Context, Refusal};

/// Drops the current database's name from three-part relation names (`db.schema.table`) and
/// four-part column references (`db.schema.table.column`), as PostgreSQL reads them; a name
/// beginning with another database's name is left for resolution to refuse.
pub(crate) fn strip_current_database(statements: &mut [Statement], ctx: &Context<'_>) {
    let Some(db) = ctx.catalog.database() else {
        return;
    };
    struct Strip<'d> {
        db: &'d str,
    }
    impl Strip<'_> {
        fn names_db(&self, part: &ObjectNamePart) -> bool {
            part.as_ident().is_some_and(|i| normalize(i) == self.db)
        }
    }
    impl VisitorMut for Strip<'_> {
        type Break = ();
        fn pre_visit_relation(&mut self, name: &mut ObjectName) -> ControlFlow<()> {
            if name.0.len() == 3 && self.names_db(&name.0[0]) {
                name.0.remove(0);
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if let Expr::CompoundIdentifier(parts) = expr {
                if parts.len() == 4 && normalize(&parts[0]) == self.db {
                    parts.remove(0);
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_select(&mut self, select: &mut Select) -> ControlFlow<()> {
            // `db.schema.table.*` in a select list (of any SELECT, set operations included).
            for item in &mut select.projection {
                if let SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(name),
                    _,
                ) = item
                {
                    if name.0.len() == 3 && self.names_db(&name.0[0]) {
                        name.0.remove(0);
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    for statement in statements {
        let _ = statement.visit(&mut Strip { db });
    }
}

/// Shortens `schema.table.column` and `schema.table.*` references to `table.column` and
/// `table.*` where `schema.table` is an unaliased FROM item of the statement.
pub(crate) fn shorten(statement: &mut Statement, ctx: &Context<'_>) -> Result<(), Refusal> {
    let mut names = Names {
        ctx,
        unaliased: HashSet::new(),
        other: HashSet::new(),
    };
    let _ = Visit::visit(&*statement, &mut names);
    if names.unaliased.is_empty() {
        return Ok(());
    }
    let mut shortener = Shortener { names: &names };
    match statement.visit(&mut shortener) {
        ControlFlow::Break(refusal) => Err(refusal),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The names FROM items and WITH queries go by in the statement.
struct Names<'c> {
    ctx: &'c Context<'c>,
    /// (schema, table) of every relation in FROM without an alias.
    unaliased: HashSet<(String, String)>,
    /// Aliases and WITH query names.
    other: HashSet<String>,
}

impl Visitor for Names<'_> {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        // An unaliased INSERT target (which the rewriter aliases by its name): its columns
        // may be named `schema.table.column` in RETURNING and ON CONFLICT.
        if let Statement::Insert(sqlparser::ast::Insert {
            table: sqlparser::ast::TableObject::TableName(name),
            table_alias: None,
            ..
        }) = statement
        {
            if let Some(Resolved::Protected(rel)) =
                self.ctx.catalog.resolve(name, self.ctx.search_path)
            {
                self.unaliased
                    .insert((rel.schema.clone(), rel.name.clone()));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.other.insert(normalize(&cte.alias.name));
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        match factor {
            TableFactor::Table {
                name,
                alias: None,
                args: None,
                ..
            } => {
                if let Some(Resolved::Protected(rel) | Resolved::System(rel)) =
                    self.ctx.catalog.resolve(name, self.ctx.search_path)
                {
                    self.unaliased
                        .insert((rel.schema.clone(), rel.name.clone()));
                }
            }
            TableFactor::Table {
                alias: Some(alias), ..
            }
            | TableFactor::Derived {
                alias: Some(alias), ..
            }
            | TableFactor::Function {
                alias: Some(alias), ..
            }
            | TableFactor::UNNEST {
                alias: Some(alias), ..
            } => {
                self.other.insert(normalize(&alias.name));
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

struct Shortener<'n> {
    names: &'n Names<'n>,
}

impl Shortener<'_> {
    /// For `schema.table` naming an unaliased FROM item: `Some(true)` when `table` names
    /// nothing else, `Some(false)` when it might; `None` when it is no such item.
    fn unambiguous(&self, schema: &str, table: &str) -> Option<bool> {
        if !self
            .names
            .unaliased
            .contains(&(schema.to_string(), table.to_string()))
        {
            return None;
        }
        let clashes = self
            .names
            .unaliased
            .iter()
            .any(|(s, t)| t == table && s != schema)
            || self.names.other.contains(table);
        Some(!clashes)
    }

    fn refuse(schema: &str, table: &str) -> ControlFlow<Refusal> {
        ControlFlow::Break(Refusal::Unsupported(format!(
            "the reference {schema}.{table}.… where another FROM item or WITH query could also \
             be called {table} (give the tables aliases)"
        )))
    }
}

fn ident_parts(name: &ObjectName) -> Option<Vec<&sqlparser::ast::Ident>> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => Some(i),
            _ => None,
        })
        .collect()
}

impl VisitorMut for Shortener<'_> {
    type Break = Refusal;

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<Refusal> {
        if let Expr::CompoundIdentifier(parts) = expr {
            if let [schema, table, _column] = parts.as_slice() {
                let (s, t) = (normalize(schema), normalize(table));
                match self.unambiguous(&s, &t) {
                    Some(true) => {
                        parts.remove(0);
                    }
                    Some(false) => return Self::refuse(&s, &t),
                    None => {}
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_select(&mut self, select: &mut Select) -> ControlFlow<Refusal> {
        for item in &mut select.projection {
            let SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(name), _) =
                item
            else {
                continue;
            };
            let Some(parts) = ident_parts(name) else {
                continue;
            };
            if let [schema, table] = parts.as_slice() {
                let (s, t) = (normalize(schema), normalize(table));
                match self.unambiguous(&s, &t) {
                    Some(true) => {
                        name.0.remove(0);
                    }
                    Some(false) => return Self::refuse(&s, &t),
                    None => {}
                }
            }
        }
        ControlFlow::Continue(())
    }
}
