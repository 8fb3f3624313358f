//! The Filter IR: what a row (or vector point) must satisfy, as derived from Cedar residuals.
//! Small on purpose — and/or/not, comparisons of one resource attribute with a constant, set
//! membership, presence — so that each backend (SQL, Qdrant filters) can translate all of it.
//!
//! [`Filter::eval`] evaluates a filter the way SQL does (three-valued: a missing attribute is
//! NULL, and only `Some(true)` admits a row), for tests and the policy test runner.

use std::collections::BTreeMap;

/// A constant in a filter. Decimals are Cedar's (4 fractional digits, scaled by 10⁴); datetimes
/// are Cedar's (milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Value {
    Bool(bool),
    Long(i64),
    String(String),
    Decimal(i64),
    Datetime(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
}

impl CmpOp {
    /// The operator whose result is the negation of this one's (`<` and `>=`).
    pub fn negated(self) -> CmpOp {
        match self {
            CmpOp::Eq => CmpOp::NotEq,
            CmpOp::NotEq => CmpOp::Eq,
            CmpOp::Lt => CmpOp::GtEq,
            CmpOp::LtEq => CmpOp::Gt,
            CmpOp::Gt => CmpOp::LtEq,
            CmpOp::GtEq => CmpOp::Lt,
        }
    }

    /// The operator with its operands swapped (`c < a` is `a > c`).
    pub fn flipped(self) -> CmpOp {
        match self {
            CmpOp::Eq | CmpOp::NotEq => self,
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::LtEq => CmpOp::GtEq,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::GtEq => CmpOp::LtEq,
        }
    }
}

/// One element of a `like` pattern: a literal character or `*` (any sequence).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Pattern {
    Char(char),
    Wildcard,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Filter {
    True,
    False,
    And(Vec<Filter>),
    Or(Vec<Filter>),
    Not(Box<Filter>),
    /// `attr <op> value`
    Compare {
        attr: String,
        op: CmpOp,
        value: Value,
    },
    /// `attr` is one of `values`
    InSet {
        attr: String,
        values: Vec<Value>,
    },
    /// The (optional) attribute is present: SQL `IS NOT NULL`.
    Present(String),
    /// A set-valued attribute contains `value`.
    SetContains {
        attr: String,
        value: Value,
    },
    /// A set-valued attribute shares at least one element with `values`.
    SetContainsAny {
        attr: String,
        values: Vec<Value>,
    },
    /// A set-valued attribute contains every element of `values`.
    SetContainsAll {
        attr: String,
        values: Vec<Value>,
    },
    /// A string attribute matches a Cedar `like` pattern.
    Like {
        attr: String,
        pattern: Vec<Pattern>,
    },
}

/// A row's attribute values; an absent key (or `None`) is NULL. Set-valued attributes use
/// [`RowValue::Set`].
pub type Row = BTreeMap<String, RowValue>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RowValue {
    Scalar(Value),
    Set(Vec<Value>),
}

impl Filter {
    /// Conjunction, simplified (`True` parts dropped, any `False` wins).
    pub fn and(parts: Vec<Filter>) -> Filter {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Filter::True => {}
                Filter::False => return Filter::False,
                Filter::And(inner) => {
                    for p in inner {
                        if !out.contains(&p) {
                            out.push(p);
                        }
                    }
                }
                other if out.contains(&other) => {}
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Filter::True,
            1 => out.pop().expect("one element"),
            _ => Filter::And(out),
        }
    }

    /// Disjunction, simplified (`False` parts dropped, any `True` wins).
    pub fn or(parts: Vec<Filter>) -> Filter {
        let mut out = Vec::new();
        for p in parts {
            match p {
                Filter::False => {}
                Filter::True => return Filter::True,
                Filter::Or(inner) => out.extend(inner),
                other => out.push(other),
            }
        }
        match out.len() {
            0 => Filter::False,
            1 => out.pop().expect("one element"),
            _ => Filter::Or(out),
        }
    }

    /// Negation, simplified.
    pub fn negate(f: Filter) -> Filter {
        match f {
            Filter::True => Filter::False,
            Filter::False => Filter::True,
            Filter::Not(inner) => *inner,
            // `NOT (a <= c)` is `a > c` in three-valued logic too (both NULL when `a` is).
            Filter::Compare { attr, op, value } => Filter::Compare {
                attr,
                op: op.negated(),
                value,
            },
            other => Filter::Not(Box::new(other)),
        }
    }

    /// The attributes (columns) the filter reads.
    pub fn columns(&self) -> std::collections::BTreeSet<&str> {
        let mut out = std::collections::BTreeSet::new();
        self.collect_columns(&mut out);
        out
    }

    fn collect_columns<'f>(&'f self, out: &mut std::collections::BTreeSet<&'f str>) {
        match self {
            Filter::True | Filter::False => {}
            Filter::And(parts) | Filter::Or(parts) => {
                parts.iter().for_each(|p| p.collect_columns(out));
            }
            Filter::Not(inner) => inner.collect_columns(out),
            Filter::Present(attr)
            | Filter::Compare { attr, .. }
            | Filter::InSet { attr, .. }
            | Filter::SetContains { attr, .. }
            | Filter::SetContainsAny { attr, .. }
            | Filter::SetContainsAll { attr, .. }
            | Filter::Like { attr, .. } => {
                out.insert(attr.as_str());
            }
        }
    }

    /// SQL's three-valued evaluation: `None` is NULL (unknown).
    pub fn eval(&self, row: &Row) -> Option<bool> {
        match self {
            Filter::True => Some(true),
            Filter::False => Some(false),
            Filter::And(parts) => {
                let mut unknown = false;
                for p in parts {
                    match p.eval(row) {
                        Some(false) => return Some(false),
                        None => unknown = true,
                        Some(true) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(true)
                }
            }
            Filter::Or(parts) => {
                let mut unknown = false;
                for p in parts {
                    match p.eval(row) {
                        Some(true) => return Some(true),
                        None => unknown = true,
                        Some(false) => {}
                    }
                }
                if unknown {
                    None
                } else {
                    Some(false)
                }
            }
            Filter::Not(f) => f.eval(row).map(|b| !b),
            Filter::Compare { attr, op, value } => {
                let v = scalar(row, attr)?;
                let ord = compare(v, value)?;
                Some(match op {
                    CmpOp::Eq => ord.is_eq(),
                    CmpOp::NotEq => !ord.is_eq(),
                    CmpOp::Lt => ord.is_lt(),
                    CmpOp::LtEq => ord.is_le(),
                    CmpOp::Gt => ord.is_gt(),
                    CmpOp::GtEq => ord.is_ge(),
                })
            }
            Filter::InSet { attr, values } => {
                let v = scalar(row, attr)?;
                Some(values.iter().any(|x| x == v))
            }
            Filter::Present(attr) => Some(row.contains_key(attr)),
            Filter::SetContains { attr, value } => Some(set(row, attr)?.contains(value)),
            Filter::SetContainsAny { attr, values } => {
                let s = set(row, attr)?;
                Some(values.iter().any(|v| s.contains(v)))
            }
            Filter::SetContainsAll { attr, values } => {
                let s = set(row, attr)?;
                Some(values.iter().all(|v| s.contains(v)))
            }
            Filter::Like { attr, pattern } => match scalar(row, attr)? {
                Value::String(s) => Some(like(s, pattern)),
                _ => None,
            },
        }
    }
}

fn scalar<'a>(row: &'a Row, attr: &str) -> Option<&'a Value> {
    match row.get(attr)? {
        RowValue::Scalar(v) => Some(v),
        RowValue::Set(_) => None,
    }
}

fn set<'a>(row: &'a Row, attr: &str) -> Option<&'a [Value]> {
    match row.get(attr)? {
        RowValue::Set(v) => Some(v),
        RowValue::Scalar(_) => None,
    }
}

fn compare(a: &Value, b: &Value) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Value::Long(x), Value::Long(y))
        | (Value::Decimal(x), Value::Decimal(y))
        | (Value::Datetime(x), Value::Datetime(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn like(s: &str, pattern: &[Pattern]) -> bool {
    let chars: Vec<char> = s.chars().collect();
    fn go(s: &[char], p: &[Pattern]) -> bool {
        match p.split_first() {
            None => s.is_empty(),
            Some((Pattern::Wildcard, rest)) => (0..=s.len()).any(|i| go(&s[i..], rest)),
            Some((Pattern::Char(c), rest)) => s.first() == Some(c) && go(&s[1..], rest),
        }
    }
    go(&chars, pattern)
}
