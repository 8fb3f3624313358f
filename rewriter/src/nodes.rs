//! Constructors of the sqlparser nodes the rewriter builds (fences, row filters, masks, checked
//! writes), each the node PostgreSQL's dialect would parse from the SQL it stands for. Names are always quoted
//! identifiers and constants are literal nodes, so no value of a policy or a catalog can change
//! the statement's structure; nothing here prints SQL to parse it again.

use std::sync::LazyLock;

use sqlparser::ast::{
    helpers::attached_token::AttachedToken, BinaryOperator, CaseWhen, CastKind, DataType, Expr,
    Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments, Ident,
    LimitClause, ObjectName, Offset, OffsetRows, Query, Select, SelectItem, SetExpr,
    TableAliasColumnDef, TableFactor, TableWithJoins, UnaryOperator, Value,
};

use crate::Refusal;

/// `"name"`.
pub fn ident(name: &str) -> Ident {
    Ident::with_quote('"', name)
}

/// A column of the relation in scope: `"name"`.
pub fn column(name: &str) -> Expr {
    Expr::Identifier(ident(name))
}

/// `"qualifier"."name"`.
pub fn qualified_column(qualifier: &str, name: &str) -> Expr {
    Expr::CompoundIdentifier(vec![ident(qualifier), ident(name)])
}

/// `'text'` (standard_conforming_strings is pinned on; the printer doubles quotes).
pub fn string(text: &str) -> Expr {
    Expr::value(Value::SingleQuotedString(text.to_string()))
}

/// A number written as `digits` (`-` in front is a unary minus, as the parser reads it).
pub fn number(digits: &str) -> Expr {
    match digits.strip_prefix('-') {
        Some(abs) => Expr::UnaryOp {
            op: UnaryOperator::Minus,
            expr: Box::new(number(abs)),
        },
        None => Expr::value(Value::Number(digits.to_string(), false)),
    }
}

pub fn boolean(b: bool) -> Expr {
    Expr::value(Value::Boolean(b))
}

pub fn null() -> Expr {
    Expr::value(Value::Null)
}

/// `(expr)`.
pub fn nested(expr: Expr) -> Expr {
    Expr::Nested(Box::new(expr))
}

pub fn binary(left: Expr, op: BinaryOperator, right: Expr) -> Expr {
    Expr::BinaryOp {
        left: Box::new(left),
        op,
        right: Box::new(right),
    }
}

/// `expr::type`.
pub fn cast(expr: Expr, data_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::DoubleColon,
        expr: Box::new(expr),
        data_type,
        format: None,
    }
}

/// `CAST(expr AS data_type)`.
pub fn cast_as(expr: Expr, data_type: DataType) -> Expr {
    Expr::Cast {
        kind: CastKind::Cast,
        expr: Box::new(expr),
        data_type,
        format: None,
    }
}

/// `NOT expr`.
pub fn not(expr: Expr) -> Expr {
    Expr::UnaryOp {
        op: UnaryOperator::Not,
        expr: Box::new(expr),
    }
}

/// `expr IS NOT TRUE`.
pub fn is_not_true(expr: Expr) -> Expr {
    Expr::IsNotTrue(Box::new(expr))
}

/// `DEFAULT`, as the value of a SET item (the parser reads it as a bare identifier).
pub fn default() -> Expr {
    Expr::Identifier(Ident::new("DEFAULT"))
}

/// `"schema"."name"`.
pub fn table_name(schema: &str, name: &str) -> ObjectName {
    ObjectName::from(vec![ident(schema), ident(name)])
}

/// `sql_type` (as `format_type` spells it) as a data type.
pub fn data_type(sql_type: &str) -> Result<DataType, Refusal> {
    crate::parse::built(sql_type, "a column type", |p| p.parse_data_type())
}

/// `text`.
pub fn text() -> DataType {
    DataType::Text
}

/// `pg_catalog.<name>(args…)`; `quoted` names are printed quoted (`pg_catalog."right"`, for
/// names that are also keywords).
pub fn catalog_call(name: &str, quoted: bool, args: Vec<Expr>) -> Expr {
    let name = if quoted {
        ident(name)
    } else {
        Ident::new(name)
    };
    Expr::Function(Function {
        name: ObjectName::from(vec![Ident::new("pg_catalog"), name]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|a| FunctionArg::Unnamed(FunctionArgExpr::Expr(a)))
                .collect(),
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// `CASE WHEN condition THEN then ELSE otherwise END`.
pub fn case_when(condition: Expr, then: Expr, otherwise: Expr) -> Expr {
    case(vec![(condition, then)], otherwise)
}

/// `CASE WHEN c1 THEN r1 WHEN c2 THEN r2 … ELSE otherwise END`.
pub fn case(whens: Vec<(Expr, Expr)>, otherwise: Expr) -> Expr {
    Expr::Case {
        case_token: AttachedToken::empty(),
        end_token: AttachedToken::empty(),
        operand: None,
        conditions: whens
            .into_iter()
            .map(|(condition, result)| CaseWhen { condition, result })
            .collect(),
        else_result: Some(Box::new(otherwise)),
    }
}

/// `expr AS "alias"`.
pub fn aliased(expr: Expr, alias: &str) -> SelectItem {
    SelectItem::ExprWithAlias {
        expr,
        alias: ident(alias),
    }
}

/// `SELECT <projection> FROM <relation> WHERE <selection> OFFSET 0`: the shape of every fence,
/// parsed once; each fence is a copy with its parts put in.
pub fn fenced_select(projection: Vec<SelectItem>, relation: ObjectName, selection: Expr) -> Query {
    static SKELETON: LazyLock<Query> = LazyLock::new(|| {
        *crate::parse::built("SELECT 1 FROM t WHERE true OFFSET 0", "a fence", |p| {
            p.parse_query()
        })
        .expect("the fence skeleton parses")
    });
    let mut query = SKELETON.clone();
    let SetExpr::Select(select) = &mut *query.body else {
        unreachable!("the skeleton is a SELECT")
    };
    let Select {
        projection: p,
        from,
        selection: s,
        ..
    } = &mut **select;
    *p = projection;
    *s = Some(selection);
    let [TableWithJoins {
        relation: TableFactor::Table { name, .. },
        ..
    }] = &mut from[..]
    else {
        unreachable!("the skeleton reads one table")
    };
    *name = relation;
    debug_assert!(matches!(
        &query.limit_clause,
        Some(LimitClause::LimitOffset {
            offset: Some(Offset {
                rows: OffsetRows::None,
                ..
            }),
            ..
        })
    ));
    query
}

/// A node of `sql` as PostgreSQL's dialect parses it: the skeletons below are parsed once and
/// copied.
fn skeleton_query(sql: &str) -> Query {
    *crate::parse::built(sql, "a skeleton", |p| p.parse_query()).expect("the skeleton parses")
}

/// `SELECT <projection> [FROM <from>] [WHERE <selection>] [OFFSET 0]`.
pub fn select(
    projection: Vec<SelectItem>,
    from: Vec<TableWithJoins>,
    selection: Option<Expr>,
    offset_zero: bool,
) -> Query {
    static SKELETON: LazyLock<Query> = LazyLock::new(|| skeleton_query("SELECT 1 OFFSET 0"));
    let mut query = SKELETON.clone();
    if !offset_zero {
        query.limit_clause = None;
    }
    let SetExpr::Select(select) = &mut *query.body else {
        unreachable!("the skeleton is a SELECT")
    };
    select.projection = projection;
    select.from = from;
    select.selection = selection;
    query
}

/// `*` in a select list.
pub fn wildcard() -> SelectItem {
    static SKELETON: LazyLock<SelectItem> = LazyLock::new(|| {
        let query = skeleton_query("SELECT *");
        let SetExpr::Select(select) = *query.body else {
            unreachable!("the skeleton is a SELECT")
        };
        select.projection[0].clone()
    });
    SKELETON.clone()
}

/// The first FROM item of a skeleton query.
fn skeleton_from(sql: &str) -> TableWithJoins {
    let query = skeleton_query(sql);
    let SetExpr::Select(select) = *query.body else {
        unreachable!("the skeleton is a SELECT")
    };
    select.from[0].clone()
}

/// `(<subquery>) AS "alias" ["c1", …]` as a FROM item.
pub fn derived(subquery: Query, alias: &str, columns: &[&str]) -> TableWithJoins {
    static SKELETON: LazyLock<TableWithJoins> =
        LazyLock::new(|| skeleton_from("SELECT 1 FROM (SELECT 1) AS a"));
    let mut item = SKELETON.clone();
    let TableFactor::Derived {
        subquery: s,
        alias: Some(a),
        ..
    } = &mut item.relation
    else {
        unreachable!("the skeleton reads an aliased subquery")
    };
    **s = subquery;
    a.name = ident(alias);
    a.columns = columns
        .iter()
        .map(|c| TableAliasColumnDef {
            name: ident(c),
            data_type: None,
        })
        .collect();
    item
}

/// `<name> AS "alias"` as a FROM item (or the target of a write).
pub fn table(name: ObjectName, alias: &str) -> TableWithJoins {
    static SKELETON: LazyLock<TableWithJoins> =
        LazyLock::new(|| skeleton_from("SELECT 1 FROM t AS a"));
    let mut item = SKELETON.clone();
    let TableFactor::Table {
        name: n,
        alias: Some(a),
        ..
    } = &mut item.relation
    else {
        unreachable!("the skeleton reads an aliased table")
    };
    *n = name;
    a.name = ident(alias);
    item
}
