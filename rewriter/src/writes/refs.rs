//! Which columns of a write's target an agent's expression reads, where the expression sees the
//! target's rows unfenced: RETURNING (the row as written) and `ON CONFLICT DO UPDATE` (the
//! conflicting row and `EXCLUDED`). Read by PostgreSQL's grammar (libpg_query), so every
//! place a column reference can stand is covered. Only the columns the agent reads in clear may
//! be named, by bare name or qualified by the target's names; a whole-row reference and a name
//! the catalog snapshot does not know (it may be newer than the snapshot) are refused. Names
//! qualified by another FROM item belong to a subquery, whose relations are fenced.

use std::collections::BTreeSet;

use policies::ColumnRule;

use crate::catalog::Relation;
use crate::policy::TablePolicy;
use crate::Refusal;

/// The target as an agent's expressions may name it.
pub(super) struct Target<'r> {
    pub rel: &'r Relation,
    /// The names that stand for a target row: its alias (or name), and `excluded` for upserts.
    pub qualifiers: Vec<String>,
    pub clear: BTreeSet<&'r str>,
}

impl<'r> Target<'r> {
    pub fn new(rel: &'r Relation, policy: &TablePolicy, qualifiers: Vec<String>) -> Self {
        let clear = rel
            .columns
            .iter()
            .filter(|c| policy.column(&c.name) == ColumnRule::Visible)
            .map(|c| c.name.as_str())
            .collect();
        Target {
            rel,
            qualifiers,
            clear,
        }
    }

    fn qualifies(&self, q: &str) -> bool {
        self.qualifiers.iter().any(|n| n == q)
    }

    /// Refuses `sql` (a statement holding the agent's expressions) if it names a target column
    /// this agent does not read in clear, or a target row as a whole. `clause` names the
    /// clause in the refusal.
    pub fn check(&self, sql: &str, clause: &str) -> Result<(), Refusal> {
        let schema = &self.rel.schema;
        for parts in crate::verify::column_refs(sql)? {
            let named = match parts.as_slice() {
                [Some(c)] if self.rel.columns.iter().any(|col| &col.name == c) => Some(c),
                [Some(c)] if self.qualifies(c) => return Err(self.whole_row()),
                [Some(c)] => return Err(self.unknown(c, clause)),
                [Some(q), None] if self.qualifies(q) => return Err(self.whole_row()),
                [Some(s), Some(q), None] if s == schema && self.qualifies(q) => {
                    return Err(self.whole_row())
                }
                [Some(q), Some(c)] if self.qualifies(q) => Some(c),
                [Some(s), Some(q), Some(c)] if s == schema && self.qualifies(q) => Some(c),
                // A database-qualified reference (`db.schema.table.column`, `db.s.t.*`): not
                // read as the target or another FROM item here, so refused.
                parts if parts.len() > 3 => {
                    return Err(Refusal::Unsupported(format!(
                        "{clause}: a column reference qualified by a database name"
                    )))
                }
                _ => None,
            };
            if let Some(c) = named {
                if !self.clear.contains(c.as_str()) {
                    return Err(self.unknown(c, clause));
                }
            }
        }
        Ok(())
    }

    fn whole_row(&self) -> Refusal {
        Refusal::Forbidden(format!(
            "a whole-row reference to the write's target {} (name its columns)",
            self.rel.entity_type()
        ))
    }

    fn unknown(&self, column: &str, clause: &str) -> Refusal {
        Refusal::Forbidden(format!(
            "{clause} names {column:?}: it may name only columns of {} this agent reads in \
             clear (qualify the columns of a subquery's own tables)",
            self.rel.entity_type()
        ))
    }
}
