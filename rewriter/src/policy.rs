//! What the rewriter needs to know of policy: for a relation, the row filter and column rules
//! to enforce. The proxy answers from Cedar (via the `policies` crate) for the session's agent,
//! context and policy version.

use std::collections::BTreeMap;
use std::sync::Arc;

use policies::{ColumnRule, Filter};

use crate::catalog::Relation;
use crate::Refusal;

/// The rules for reading one relation.
#[derive(Debug, Clone, PartialEq)]
pub struct TablePolicy {
    /// Which rows are visible.
    pub filter: Filter,
    /// Per column; `None` when the relation has no column rules (every column visible).
    pub columns: Option<BTreeMap<String, ColumnRule>>,
    /// The policies that decided it (ids), for audit and `portcullis explain`.
    pub determining: Vec<String>,
    /// The row filter's conjuncts with the policies behind each (see [`policies::Check`]),
    /// for the error of a write whose RETURNING would show a row the agent may not read.
    pub row_checks: Vec<policies::Check>,
}

impl TablePolicy {
    /// The rule for `column` (a column the rules do not list is denied).
    pub fn column(&self, column: &str) -> ColumnRule {
        match &self.columns {
            None => ColumnRule::Visible,
            Some(rules) => rules.get(column).cloned().unwrap_or(ColumnRule::Denied),
        }
    }
}

/// A row-changing action, named as in the Cedar schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WriteAction {
    Insert,
    Update,
    Delete,
}

impl WriteAction {
    /// The Cedar action id (`Action::"insert"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            WriteAction::Insert => "insert",
            WriteAction::Update => "update",
            WriteAction::Delete => "delete",
        }
    }
}

/// The rows one write action may touch (UPDATE, DELETE) or produce (INSERT, UPDATE).
#[derive(Debug, Clone, PartialEq)]
pub struct WritePolicy {
    pub filter: Filter,
    /// The policies that decided it (ids), named in a violation's error.
    pub determining: Vec<String>,
    /// The filter's conjuncts with the policies behind each, so that a violation's error
    /// names the policy that refused the row; empty: name `determining`.
    pub checks: Vec<policies::Check>,
}

/// The session's policy, as the rewriter asks for it.
pub trait Policies {
    /// The rules for reading `relation`, or why it may not be read at all.
    fn read(&self, relation: &Relation) -> Result<Arc<TablePolicy>, Refusal>;

    /// The rows `action` may touch or produce in `relation`.
    fn write(&self, relation: &Relation, action: WriteAction) -> Result<Arc<WritePolicy>, Refusal>;
}
