//! Conditions copied into fences, as PostgreSQL pushes them into a `security_barrier` view.
//!
//! A fence ends in `OFFSET 0`, so PostgreSQL pushes nothing into it by itself. After a SELECT's
//! FROM is fenced, each conjunct of its WHERE (and of an inner or left join's ON, for the joined
//! fence) is *copied* into a fence when PostgreSQL would have pushed it into the same fence
//! written as a `security_barrier` view (`qual_is_pushdown_safe`, `contain_leaked_vars`):
//!
//! - its columns of this query level are unmasked columns of that one fence; other columns are
//!   of enclosing query levels (correlated: constants while the fence is scanned), qualified in
//!   the copy with the alias PostgreSQL resolved them by;
//! - every operator applied to a fence column is leakproof per the catalog (`pg_proc.proleakproof`,
//!   with the operator chosen by PostgreSQL's rules for these operand types); constants may be
//!   parameters, outer columns, and typed literals, casts, arithmetic and non-volatile function
//!   calls over literals (stricter than PostgreSQL, which also lets a function that may raise
//!   take an outer column or parameter: whether it raises would then depend on whether the
//!   scan reaches a row, hidden rows included);
//! - no subquery, no volatile function;
//! - into the nullable side of an outer join, only conditions that are false or null when the
//!   fence's columns are null (PostgreSQL would not push the others either).
//!
//! Names resolve as PostgreSQL resolves them, from the scopes the protector records (see
//! [`Frame`]); any doubt (an item whose columns are unknown, an ambiguous name, a name a copy
//! could be captured by) leaves the conjunct where it is. The original conjunct stays in place,
//! so a copy only narrows what the fence yields to rows the query would drop anyway.

use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CastKind, DataType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    Ident, JoinConstraint, JoinOperator, ObjectNamePart, Select, SetExpr, TableFactor,
    TimezoneInfo, UnaryOperator, Value, VisitMut, VisitorMut,
};

use policies::ColumnRule;

use crate::catalog::{normalize, Catalog, Operator, Relation};
use crate::policy::TablePolicy;

/// A column a FROM item shows to its query level.
#[derive(Debug, Clone)]
pub(crate) struct ScopeColumn {
    pub name: String,
    pub type_name: String,
    /// Passed through unmasked (a condition on it may be copied into the item's fence).
    pub clear: bool,
}

/// A FROM item of a query level, as name resolution sees it.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// A table or fence whose columns are known.
    Known {
        alias: String,
        columns: Vec<ScopeColumn>,
    },
    /// A derived table, function, WITH query or join alias: columns unknown.
    Opaque { alias: Option<String> },
}

impl Item {
    fn alias(&self) -> Option<&str> {
        match self {
            Item::Known { alias, .. } => Some(alias),
            Item::Opaque { alias } => alias.as_deref(),
        }
    }
}

/// One step outward in name resolution.
#[derive(Debug, Clone)]
pub(crate) enum Frame {
    /// A query level's FROM items.
    Level(Vec<Item>),
    /// Inside a FROM item (a derived table or a function's arguments): the level's items are
    /// not (or only laterally) visible; resolution stops here.
    Barrier,
}

/// A fence in a SELECT's FROM: its alias and the relation name its subquery reads (which a
/// qualified outer reference in a copy must not be captured by).
pub(crate) struct FenceInfo {
    pub alias: String,
    pub relation: String,
}

/// A resolved column reference.
#[derive(Debug, Clone)]
enum Ref {
    /// A column of this query level's item `item`.
    Local { item: usize, column: ScopeColumn },
    /// A column of an enclosing level, reachable from inside a fence as `alias.column`.
    Outer { alias: String, column: ScopeColumn },
}

/// Resolves `(qualifier, name)` from the innermost frame of `frames` outward.
fn resolve(frames: &[Frame], qualifier: Option<&str>, name: &str) -> Option<Ref> {
    let mut levels = frames.iter().rev();
    let Some(Frame::Level(local)) = levels.next() else {
        return None;
    };
    // Aliases of the levels passed over, which a qualified copy would be captured by.
    let mut passed: Vec<&str> = Vec::new();
    for (depth, items) in std::iter::once(local)
        .chain(levels.map_while(|f| match f {
            Frame::Level(items) => Some(items),
            Frame::Barrier => None,
        }))
        .enumerate()
    {
        let found = match qualifier {
            Some(q) => {
                let matches: Vec<usize> = (0..items.len())
                    .filter(|&i| items[i].alias() == Some(q))
                    .collect();
                match matches.as_slice() {
                    [] if items.iter().any(|i| i.alias().is_none()) => return None,
                    [] => None,
                    [i] => Some(*i),
                    _ => return None,
                }
            }
            None => {
                if items.iter().any(|i| matches!(i, Item::Opaque { .. })) {
                    return None;
                }
                let matches: Vec<usize> = (0..items.len())
                    .filter(|&i| known_column(&items[i], name).is_some())
                    .collect();
                match matches.as_slice() {
                    [] => None,
                    [i] => Some(*i),
                    _ => return None,
                }
            }
        };
        let Some(i) = found else {
            passed.extend(items.iter().filter_map(Item::alias));
            continue;
        };
        let column = known_column(&items[i], name)?.clone();
        if depth == 0 {
            return Some(Ref::Local { item: i, column });
        }
        let alias = items[i].alias()?.to_string();
        // The copy names it `alias.column` from a deeper level: no level in between may have
        // an item of that alias, and the alias must be unique at its own level.
        if passed.contains(&alias.as_str())
            || items.iter().filter(|it| it.alias() == Some(&alias)).count() != 1
        {
            return None;
        }
        return Some(Ref::Outer { alias, column });
    }
    None
}

fn known_column<'i>(item: &'i Item, name: &str) -> Option<&'i ScopeColumn> {
    match item {
        Item::Known { columns, .. } => columns.iter().find(|c| c.name == name),
        Item::Opaque { .. } => None,
    }
}

/// `(qualifier, name)` of a column reference.
fn column_ref(e: &Expr) -> Option<(Option<String>, String)> {
    match e {
        Expr::Identifier(i) => Some((None, normalize(i))),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            Some((Some(normalize(&parts[0])), normalize(&parts[1])))
        }
        _ => None,
    }
}

/// The type of an operand, as PostgreSQL's operator resolution sees it.
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    /// A `pg_type.typname`.
    Known(String),
    /// A string literal, NULL or parameter: takes the type of the other operand.
    Unknown,
}

struct Analyzer<'a> {
    catalog: &'a Catalog,
    frames: &'a [Frame],
}

/// An operand of a comparison.
struct Operand {
    ty: Ty,
    /// A bare column of this query level (the fence's).
    local: bool,
}

impl Analyzer<'_> {
    fn resolve(&self, e: &Expr) -> Option<Ref> {
        let (q, name) = column_ref(e)?;
        resolve(self.frames, q.as_deref(), &name)
    }

    /// Whether the boolean expression `e` may be evaluated on rows the fence's filter rejects.
    fn predicate(&self, e: &Expr) -> bool {
        use BinaryOperator as B;
        match e {
            Expr::Nested(x) => self.predicate(x),
            Expr::BinaryOp {
                left,
                op: B::And | B::Or,
                right,
            } => self.predicate(left) && self.predicate(right),
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => self.predicate(expr),
            Expr::BinaryOp { left, op, right } => match comparison(op) {
                Some(name) => self.compare(left, name, right),
                None => false,
            },
            Expr::IsNull(x) | Expr::IsNotNull(x) => self.operand(x).is_some(),
            Expr::IsTrue(x)
            | Expr::IsFalse(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNotFalse(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotUnknown(x) => self.predicate(x),
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                let op = if *negated { "<>" } else { "=" };
                !list.is_empty() && list.iter().all(|item| self.compare(expr, op, item))
            }
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let (lo, hi) = if *negated { ("<", ">") } else { (">=", "<=") };
                self.compare(expr, lo, low) && self.compare(expr, hi, high)
            }
            Expr::Like {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: None,
            } => self.compare(expr, if *negated { "!~~" } else { "~~" }, pattern),
            Expr::ILike {
                negated,
                any: false,
                expr,
                pattern,
                escape_char: None,
            } => self.compare(expr, if *negated { "!~~*" } else { "~~*" }, pattern),
            Expr::Value(v) => matches!(v.value, Value::Boolean(_)),
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
                matches!(self.operand(e), Some(Operand { ty: Ty::Known(t), .. }) if t == "bool")
            }
            _ => false,
        }
    }

    /// `l op r`: an operator PostgreSQL would choose for these operand types, leakproof if it
    /// is applied to a fence column.
    fn compare(&self, l: &Expr, op: &str, r: &Expr) -> bool {
        let (Some(l), Some(r)) = (self.operand(l), self.operand(r)) else {
            return false;
        };
        match self.operator(op, &l.ty, &r.ty) {
            Some(o) => o.leakproof || !(l.local || r.local),
            None => false,
        }
    }

    /// A bare column (of any level) or a constant expression.
    fn operand(&self, e: &Expr) -> Option<Operand> {
        match self.resolve(e) {
            Some(Ref::Local { column, .. }) => column.clear.then_some(Operand {
                ty: Ty::Known(column.type_name),
                local: true,
            }),
            Some(Ref::Outer { column, .. }) => Some(Operand {
                ty: Ty::Known(column.type_name),
                local: false,
            }),
            None => Some(Operand {
                ty: self.constant(e)?,
                local: false,
            }),
        }
    }

    /// The type of `e` if it holds no column of this level, no subquery and no volatile call.
    /// Inside an operation (arithmetic, cast, call: functions that may raise), only literals:
    /// such an operation's error must not depend on whether the fence's scan reaches it, so
    /// its inputs are known before the scan (outer columns and parameters only compared).
    fn constant(&self, e: &Expr) -> Option<Ty> {
        self.constant_in(e, false)
    }

    fn constant_in(&self, e: &Expr, operation: bool) -> Option<Ty> {
        let literal = |e: &Expr| self.constant_in(e, true);
        match e {
            Expr::Identifier(_) | Expr::CompoundIdentifier(_) if !operation => {
                match self.resolve(e)? {
                    Ref::Outer { column, .. } => Some(Ty::Known(column.type_name)),
                    Ref::Local { .. } => None,
                }
            }
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(_)
                | Value::EscapedStringLiteral(_)
                | Value::DollarQuotedString(_)
                | Value::Null => Some(Ty::Unknown),
                Value::Placeholder(_) if !operation => Some(Ty::Unknown),
                Value::Number(n, _) => Some(Ty::Known(number_type(n)?.into())),
                Value::Boolean(_) => Some(Ty::Known("bool".into())),
                _ => None,
            },
            Expr::TypedString(t) => Some(Ty::Known(type_name(&t.data_type)?)),
            Expr::Cast {
                kind: CastKind::Cast | CastKind::DoubleColon,
                expr,
                data_type,
                format: None,
            } => {
                literal(expr)?;
                Some(Ty::Known(type_name(data_type)?))
            }
            Expr::Nested(x) => self.constant_in(x, operation),
            Expr::Interval(i) => {
                literal(&i.value)?;
                Some(Ty::Known("interval".into()))
            }
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } => match &**expr {
                // `-5` is one constant to PostgreSQL's grammar.
                Expr::Value(v) if matches!(v.value, Value::Number(..)) => {
                    let Value::Number(n, _) = &v.value else {
                        return None;
                    };
                    Some(Ty::Known(number_type(&format!("-{n}"))?.into()))
                }
                x => {
                    let Ty::Known(t) = literal(x)? else {
                        return None;
                    };
                    Some(Ty::Known(
                        self.catalog.operator("-", "", &t)?.result.clone(),
                    ))
                }
            },
            Expr::BinaryOp { left, op, right } => {
                let name = arithmetic(op)?;
                let (l, r) = (literal(left)?, literal(right)?);
                Some(Ty::Known(self.operator(name, &l, &r)?.result.clone()))
            }
            Expr::Function(f) => {
                if f.filter.is_some()
                    || f.over.is_some()
                    || !f.within_group.is_empty()
                    || f.null_treatment.is_some()
                    || !matches!(f.parameters, FunctionArguments::None)
                {
                    return None;
                }
                let parts: Vec<String> = f
                    .name
                    .0
                    .iter()
                    .map(|p| match p {
                        ObjectNamePart::Identifier(i) => Some(normalize(i)),
                        _ => None,
                    })
                    .collect::<Option<_>>()?;
                let name = match parts.as_slice() {
                    [n] => n.as_str(),
                    [s, n] if s == "pg_catalog" => n.as_str(),
                    _ => return None,
                };
                match &f.args {
                    // SQL's value functions (`CURRENT_DATE`): stable, typed by the grammar.
                    FunctionArguments::None => Some(Ty::Known(
                        match name {
                            "current_date" => "date",
                            "current_timestamp" => "timestamptz",
                            "localtimestamp" => "timestamp",
                            _ => return None,
                        }
                        .into(),
                    )),
                    FunctionArguments::List(list) => {
                        if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
                            return None;
                        }
                        for arg in &list.args {
                            let FunctionArg::Unnamed(FunctionArgExpr::Expr(a)) = arg else {
                                return None;
                            };
                            literal(a)?;
                        }
                        Some(Ty::Known(self.catalog.stable_function(name)?.to_string()))
                    }
                    FunctionArguments::Subquery(_) => None,
                }
            }
            _ => None,
        }
    }

    /// The operator PostgreSQL picks for `l name r`: an exact match, an unknown operand taking
    /// the other's type, `varchar` read as `text` (binary-coercible, no function call).
    fn operator<'t>(&self, name: &str, l: &'t Ty, r: &'t Ty) -> Option<&Operator> {
        let (l, r) = match (l, r) {
            (Ty::Known(l), Ty::Known(r)) => (l.as_str(), r.as_str()),
            (Ty::Known(t), Ty::Unknown) | (Ty::Unknown, Ty::Known(t)) => (t.as_str(), t.as_str()),
            (Ty::Unknown, Ty::Unknown) => return None,
        };
        let as_text = |t: &'t str| if t == "varchar" { "text" } else { t };
        self.catalog.operator(name, l, r).or_else(|| {
            let (l2, r2) = (as_text(l), as_text(r));
            ((l2, r2) != (l, r))
                .then(|| self.catalog.operator(name, l2, r2))
                .flatten()
        })
    }

    /// The fence item every column of this level in `e` belongs to (one, at least one column),
    /// if every column reference in `e` resolves.
    fn target(&self, e: &Expr) -> Option<usize> {
        let mut target = None;
        let mut ok = true;
        let _ = sqlparser::ast::visit_expressions(e, |x| {
            match x {
                Expr::Identifier(_) | Expr::CompoundIdentifier(_) => match self.resolve(x) {
                    Some(Ref::Local { item, .. }) if target.is_none_or(|t| t == item) => {
                        target = Some(item)
                    }
                    Some(Ref::Outer { .. }) => {}
                    _ => ok = false,
                },
                Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => ok = false,
                _ => {}
            }
            if ok {
                ControlFlow::Continue(())
            } else {
                ControlFlow::Break(())
            }
        });
        ok.then_some(target).flatten()
    }

    /// Whether `e` is false or null whenever the columns of this level are null.
    fn strict(&self, e: &Expr) -> bool {
        let bare = |x: &Expr| matches!(self.resolve(x), Some(Ref::Local { .. }));
        match e {
            Expr::Nested(x) => self.strict(x),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::And,
                right,
            } => self.strict(left) || self.strict(right),
            Expr::BinaryOp {
                left,
                op: BinaryOperator::Or,
                right,
            } => self.strict(left) && self.strict(right),
            Expr::BinaryOp { left, op, right } if comparison(op).is_some() => {
                bare(left) || bare(right)
            }
            Expr::InList { expr, .. }
            | Expr::Between { expr, .. }
            | Expr::Like { expr, .. }
            | Expr::ILike { expr, .. }
            | Expr::IsNotNull(expr) => bare(expr),
            _ => false,
        }
    }

    /// `e` as it reads inside the fence: its own columns bare, outer ones qualified.
    fn copy(&self, e: &Expr, relation: &str) -> Option<Expr> {
        struct Requalify<'r, 'a> {
            analyzer: &'r Analyzer<'a>,
            relation: &'r str,
        }
        impl VisitorMut for Requalify<'_, '_> {
            type Break = ();
            fn pre_visit_expr(&mut self, x: &mut Expr) -> ControlFlow<()> {
                if !matches!(x, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
                    return ControlFlow::Continue(());
                }
                *x = match self.analyzer.resolve(x) {
                    Some(Ref::Local { column, .. }) => Expr::Identifier(quoted(&column.name)),
                    // Inside the fence the relation's own name comes first.
                    Some(Ref::Outer { alias, column }) if alias != self.relation => {
                        Expr::CompoundIdentifier(vec![quoted(&alias), quoted(&column.name)])
                    }
                    _ => return ControlFlow::Break(()),
                };
                ControlFlow::Continue(())
            }
        }
        let mut copy = e.clone();
        let mut v = Requalify {
            analyzer: self,
            relation,
        };
        match copy.visit(&mut v) {
            ControlFlow::Continue(()) => Some(copy),
            ControlFlow::Break(()) => None,
        }
    }
}

fn quoted(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

/// A comparison operator's name.
fn comparison(op: &BinaryOperator) -> Option<&'static str> {
    Some(match op {
        BinaryOperator::Eq => "=",
        BinaryOperator::NotEq => "<>",
        BinaryOperator::Lt => "<",
        BinaryOperator::LtEq => "<=",
        BinaryOperator::Gt => ">",
        BinaryOperator::GtEq => ">=",
        _ => return None,
    })
}

/// An arithmetic operator's name (between constants: no leakproofness needed).
fn arithmetic(op: &BinaryOperator) -> Option<&'static str> {
    Some(match op {
        BinaryOperator::Plus => "+",
        BinaryOperator::Minus => "-",
        BinaryOperator::Multiply => "*",
        BinaryOperator::Divide => "/",
        BinaryOperator::Modulo => "%",
        BinaryOperator::StringConcat => "||",
        _ => return None,
    })
}

/// The type PostgreSQL's scanner gives a numeric literal.
fn number_type(n: &str) -> Option<&'static str> {
    if n.parse::<i32>().is_ok() {
        Some("int4")
    } else if n.parse::<i64>().is_ok() {
        Some("int8")
    } else if n
        .trim_start_matches('-')
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        Some("numeric")
    } else {
        None
    }
}

/// The `typname` a type name in SQL denotes; `None` for any other spelling.
fn type_name(t: &DataType) -> Option<String> {
    use DataType as D;
    Some(
        match t {
            D::Date => "date",
            D::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => "timestamp",
            D::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => "timestamptz",
            D::Time(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone) => "time",
            D::Interval { .. } => "interval",
            D::Int(_) | D::Integer(_) | D::Int4(_) => "int4",
            D::BigInt(_) | D::Int8(_) => "int8",
            D::SmallInt(_) | D::Int2(_) => "int2",
            D::Text => "text",
            D::Varchar(_) | D::CharacterVarying(_) | D::CharVarying(_) => "varchar",
            D::Char(_) | D::Character(_) => "bpchar",
            D::Numeric(_) | D::Decimal(_) | D::Dec(_) => "numeric",
            D::Real | D::Float4 => "float4",
            D::DoublePrecision | D::Float8 => "float8",
            D::Bool | D::Boolean => "bool",
            D::Uuid => "uuid",
            D::Bytea => "bytea",
            D::JSON => "json",
            D::JSONB => "jsonb",
            D::Custom(name, modifiers) if modifiers.is_empty() => {
                return match name.0.as_slice() {
                    [ObjectNamePart::Identifier(i)] => Some(normalize(i)),
                    _ => None,
                }
            }
            _ => return None,
        }
        .to_string(),
    )
}

/// Whether the FROM item at `index` (0: the first of `from[table]`, then its joins) can be
/// null-extended by an outer join of its FROM list.
fn nullable(select: &Select, table: usize, index: usize) -> bool {
    let joins = &select.from[table].joins;
    // Its own join: the right side of a LEFT or FULL join.
    if index > 0
        && matches!(
            joins[index - 1].join_operator,
            JoinOperator::Left(_) | JoinOperator::LeftOuter(_) | JoinOperator::FullOuter(_)
        )
    {
        return true;
    }
    // A later RIGHT or FULL join null-extends everything joined before it.
    joins[index..].iter().any(|j| {
        matches!(
            j.join_operator,
            JoinOperator::Right(_) | JoinOperator::RightOuter(_) | JoinOperator::FullOuter(_)
        )
    })
}

/// Copies conjuncts of `select`'s WHERE and of its joins' ON into its `fences`, where
/// PostgreSQL would push them into a `security_barrier` view. `frames` ends with this level's.
pub(crate) fn pushdown(
    select: &mut Select,
    fences: &[FenceInfo],
    frames: &[Frame],
    catalog: &Catalog,
) {
    let Some(Frame::Level(items)) = frames.last() else {
        return;
    };
    let analyzer = Analyzer { catalog, frames };
    // The fence factor at (table, index) and its scope item.
    let mut positions: Vec<(usize, usize, usize, &FenceInfo)> = Vec::new();
    for (t, twj) in select.from.iter().enumerate() {
        let factors = std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation));
        for (i, factor) in factors.enumerate() {
            let TableFactor::Derived { alias: Some(a), .. } = factor else {
                continue;
            };
            let alias = normalize(&a.name);
            let Some(fence) = fences.iter().find(|f| f.alias == alias) else {
                continue;
            };
            let Some(item) = items.iter().position(|it| it.alias() == Some(&alias)) else {
                continue;
            };
            positions.push((t, i, item, fence));
        }
    }
    if positions.is_empty() {
        return;
    }
    // (table, index, copy)
    let mut copies: Vec<(usize, usize, Expr)> = Vec::new();
    let mut conjuncts = Vec::new();
    if let Some(selection) = &select.selection {
        split_and(selection, &mut conjuncts);
    }
    for c in conjuncts {
        let Some(item) = analyzer.target(c) else {
            continue;
        };
        let Some(&(t, i, _, fence)) = positions.iter().find(|p| p.2 == item) else {
            continue;
        };
        if !analyzer.predicate(c) || (nullable(select, t, i) && !analyzer.strict(c)) {
            continue;
        }
        if let Some(copy) = analyzer.copy(c, &fence.relation) {
            copies.push((t, i, copy));
        }
    }
    // An inner or left join's ON conditions on the joined item alone filter that item.
    for (t, twj) in select.from.iter().enumerate() {
        for (j, join) in twj.joins.iter().enumerate() {
            let (JoinOperator::Join(JoinConstraint::On(on))
            | JoinOperator::Inner(JoinConstraint::On(on))
            | JoinOperator::Left(JoinConstraint::On(on))
            | JoinOperator::LeftOuter(JoinConstraint::On(on))) = &join.join_operator
            else {
                continue;
            };
            let Some(&(_, _, item, fence)) = positions.iter().find(|p| p.0 == t && p.1 == j + 1)
            else {
                continue;
            };
            let mut conjuncts = Vec::new();
            split_and(on, &mut conjuncts);
            for c in conjuncts {
                if analyzer.target(c) == Some(item) && analyzer.predicate(c) {
                    if let Some(copy) = analyzer.copy(c, &fence.relation) {
                        copies.push((t, j + 1, copy));
                    }
                }
            }
        }
    }
    for (t, i, expr) in copies {
        let twj = &mut select.from[t];
        let factor = if i == 0 {
            &mut twj.relation
        } else {
            &mut twj.joins[i - 1].relation
        };
        let TableFactor::Derived { subquery, .. } = factor else {
            continue;
        };
        if let SetExpr::Select(inner) = &mut *subquery.body {
            // Parenthesized: the AST prints without precedence parentheses of its own.
            let expr = Expr::Nested(Box::new(expr));
            inner.selection = Some(match inner.selection.take() {
                Some(e) => Expr::BinaryOp {
                    left: Box::new(Expr::Nested(Box::new(e))),
                    op: BinaryOperator::And,
                    right: Box::new(expr),
                },
                None => expr,
            });
        }
    }
}

fn split_and<'e>(e: &'e Expr, out: &mut Vec<&'e Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            split_and(left, out);
            split_and(right, out);
        }
        Expr::Nested(inner) => split_and(inner, out),
        other => out.push(other),
    }
}

/// The scope item of `rel` read under `policy` as `alias`: its visible columns (clear) and
/// masked ones.
pub(crate) fn item(rel: &Relation, policy: &TablePolicy, alias: String) -> Item {
    let columns = rel
        .columns
        .iter()
        .filter_map(|c| match policy.column(&c.name) {
            ColumnRule::Visible => Some((c, true)),
            ColumnRule::Masked { .. } => Some((c, false)),
            ColumnRule::Denied => None,
        })
        .map(|(c, clear)| ScopeColumn {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            clear,
        })
        .collect();
    Item::Known { alias, columns }
}
