//! An enforced session's protocol-level prepared statements: the client's names, and the
//! upstream statements they stand for.
//!
//! Every Parse the proxy sends creates a fresh upstream name (`portcullis_s<n>`), used once.
//! Bind, Describe and Close of a client name are sent with the upstream name it stands for now.
//! So whatever the backend failed or skipped, a name can only ever reach a statement prepared
//! with the rewrite recorded for it: a lost Parse leaves a name that does not exist upstream
//! (the Bind fails), never an older statement under a reused name. Upstream statements no
//! client name stands for any more are closed later (hidden from the client).

use std::collections::HashMap;

use super::pipeline::{Expect, Lost, Rejection};

/// A prepared statement as the client prepared it, so it can be rewritten again when the
/// policy version or the catalog changes.
pub struct Prepared {
    /// The upstream statement the client's name stands for.
    pub upstream: Box<str>,
    pub sql: Box<str>,
    pub param_types: Box<[u8]>,
    /// The enforcement generation its rewrite was made under (`u64::MAX`: redo it).
    pub generation: u64,
    /// The session's search_path version its rewrite was made under.
    pub search_path: u64,
    /// Running it may change the session's search_path.
    pub changes_search_path: bool,
    /// The rewrite's shape (`Checked::shape`): the result columns the client was told of.
    pub shape: u64,
    /// Set when the current version refuses it: each use fails with this.
    pub refused: Option<Rejection>,
}

#[derive(Default)]
pub struct Statements {
    by_name: HashMap<String, Prepared>,
    next: u64,
    /// Upstream statements to close: no client name stands for them.
    orphans: Vec<Box<str>>,
}

impl Statements {
    /// A name no upstream statement of this session has had.
    pub fn fresh(&mut self) -> Box<str> {
        self.next += 1;
        format!("portcullis_s{}", self.next).into()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// The upstream statement `name` stands for.
    pub fn upstream(&self, name: &str) -> Option<&str> {
        self.by_name.get(name).map(|p| &*p.upstream)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Prepared> {
        self.by_name.get_mut(name)
    }

    /// Records `name` (replacing the unnamed statement, whose upstream is then closed).
    pub fn insert(&mut self, name: &str, prepared: Prepared) {
        if let Some(old) = self.by_name.insert(name.to_string(), prepared) {
            self.orphans.push(old.upstream);
        }
    }

    /// Forgets `name`, returning the upstream statement it stood for (the caller closes it).
    pub fn remove(&mut self, name: &str) -> Option<Box<str>> {
        let old = self.by_name.remove(name)?;
        Some(old.upstream)
    }

    /// Replaces the upstream statement `name` stands for (the old one is to be closed).
    pub fn repoint(&mut self, name: &str, upstream: Box<str>) {
        if let Some(p) = self.by_name.get_mut(name) {
            let old = std::mem::replace(&mut p.upstream, upstream);
            self.orphans.push(old);
        }
    }

    /// `upstream` is to be closed.
    pub fn insert_orphan(&mut self, upstream: Box<str>) {
        self.orphans.push(upstream);
    }

    /// The upstream statements to close now.
    pub fn take_orphans(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.orphans)
    }

    /// SQL-level `DEALLOCATE ALL` or `DISCARD ALL` dropped every upstream statement.
    pub fn clear(&mut self) {
        self.by_name.clear();
        self.orphans.clear();
    }

    /// Accounts for a Parse or Close the backend failed or skipped.
    pub fn on_lost(&mut self, lost: Lost) {
        match lost.expect {
            // The client's Parse: the statement was not created, as in PostgreSQL.
            Expect::Parse if !lost.hidden => {
                self.by_name.retain(|_, p| p.upstream != lost.statement)
            }
            // A re-prepare: rewrite it again at the name's next use.
            Expect::Parse => {
                for p in self.by_name.values_mut() {
                    if p.upstream == lost.statement {
                        p.generation = u64::MAX;
                    }
                }
            }
            // A Close that did not happen: the statement still exists upstream.
            _ => self.orphans.push(lost.statement),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(upstream: &str) -> Prepared {
        Prepared {
            upstream: upstream.into(),
            sql: "select 1".into(),
            param_types: Box::new([0, 0]),
            generation: 0,
            search_path: 0,
            changes_search_path: false,
            shape: 0,
            refused: None,
        }
    }

    #[test]
    fn names_are_never_reused_and_old_statements_are_closed() {
        let mut s = Statements::default();
        let a = s.fresh();
        let b = s.fresh();
        assert_ne!(a, b);
        s.insert("", prepared(&a));
        s.insert("", prepared(&b));
        assert_eq!(s.take_orphans(), [a]);
        let c = s.fresh();
        s.repoint("", c.clone());
        assert_eq!(s.take_orphans(), [b]);
        assert_eq!(s.remove(""), Some(c));
    }

    #[test]
    fn lost_messages_are_accounted() {
        let mut s = Statements::default();
        s.insert("q", prepared("u1"));
        s.on_lost(Lost {
            expect: Expect::Parse,
            hidden: true,
            statement: "u1".into(),
        });
        assert_eq!(s.get_mut("q").unwrap().generation, u64::MAX);
        s.on_lost(Lost {
            expect: Expect::Parse,
            hidden: false,
            statement: "u1".into(),
        });
        assert!(!s.contains("q"));
        s.on_lost(Lost {
            expect: Expect::Close,
            hidden: true,
            statement: "u0".into(),
        });
        assert_eq!(s.take_orphans(), ["u0".into()] as [Box<str>; 1]);
    }
}
