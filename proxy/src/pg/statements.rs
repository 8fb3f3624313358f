//! An enforced session's protocol-level prepared statements: the client's names, and the
//! upstream statements they stand for.
//!
//! Every Parse the proxy sends creates a fresh upstream name (`portcullis_s<n>`), used once.
//! Bind, Describe and Close of a client name are sent with the upstream name it stands for now.
//! So whatever the backend failed or skipped, a name can only ever reach a statement prepared
//! with the rewrite recorded for it: a lost Parse leaves a name that does not exist upstream
//! (the Bind fails), never an older statement under a reused name. Upstream statements no
//! client name stands for any more are closed later (hidden from the client).
//!
//! Drivers prepare the same statement again and again (the unnamed statement for every
//! execution, or a new name each time, closed after use), and PostgreSQL would parse and plan
//! the larger rewritten statement each time. So an upstream statement the backend created, once
//! its name is closed or replaced, is kept *idle* under its [`ReuseKey`]: the rewritten text,
//! the declared parameter types, and the enforcement generation and search_path it was
//! rewritten under. A later Parse with the same key takes it (at most one name stands for an
//! upstream statement at a time) instead of preparing a new one. A change of policy version,
//! catalog or search_path changes the key, so an idle statement from before is never taken;
//! the oldest idle ones are closed beyond [`MAX_IDLE`].

use std::collections::{HashMap, VecDeque};

use super::pipeline::{Expect, Lost, Rejection};

/// Idle upstream statements kept per session for reuse.
pub const MAX_IDLE: usize = 16;

/// What makes a Parse the same upstream statement as an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReuseKey {
    /// The rewritten text sent upstream.
    pub sql: Box<str>,
    /// The Parse's declared parameter types, as sent.
    pub param_types: Box<[u8]>,
    /// The enforcement generation (policy version and catalog) of the rewrite.
    pub generation: u64,
    /// The session's search_path version the text was rewritten under (and PostgreSQL
    /// resolves its names under).
    pub search_path: u64,
}

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
    /// The token of the take that gave the name an idle upstream statement (0: none), so
    /// that a late report of that Parse's loss undefines this name, not a later one.
    pub take: u64,
}

#[derive(Default)]
pub struct Statements {
    by_name: HashMap<String, Prepared>,
    next: u64,
    /// Upstream statements to close: no client name stands for them.
    orphans: Vec<Box<str>>,
    /// The key of each upstream statement prepared by a client's Parse, and whether the
    /// backend has created it (its ParseComplete came).
    keys: HashMap<Box<str>, (ReuseKey, bool)>,
    /// Created upstream statements no name stands for, by key, with the stamp of their going
    /// idle.
    idle: HashMap<ReuseKey, (Box<str>, u64)>,
    /// The idle statements' keys and stamps, oldest first (an entry whose stamp is not the
    /// statement's current one is stale: taken since).
    idle_order: VecDeque<(ReuseKey, u64)>,
    stamps: u64,
    takes: u64,
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

    /// Records `name` (replacing the unnamed statement, whose upstream is then released).
    pub fn insert(&mut self, name: &str, prepared: Prepared) {
        if let Some(old) = self.by_name.insert(name.to_string(), prepared) {
            self.idle_or_close(old.upstream);
        }
    }

    /// `upstream`, being prepared now by a client's Parse rewritten as `key`, may serve a
    /// later Parse with the same key once the backend created it.
    pub fn remember(&mut self, upstream: Box<str>, key: ReuseKey) {
        self.keys.insert(upstream, (key, false));
    }

    /// The backend created `upstream` (its ParseComplete came).
    pub fn on_created(&mut self, upstream: &str) {
        if let Some((_, created)) = self.keys.get_mut(upstream) {
            *created = true;
        }
    }

    /// An idle upstream statement prepared with `key`, now taken (the caller points a name at
    /// it).
    /// With the take's token, for the Prepared and the pipeline.
    pub fn take_idle(&mut self, key: &ReuseKey) -> Option<(Box<str>, u64)> {
        let (upstream, _) = self.idle.remove(key)?;
        self.takes += 1;
        Some((upstream, self.takes))
    }

    /// The client's name is gone (Close, a new unnamed statement, a simple Query): the upstream
    /// statement it stood for goes idle or is closed.
    pub fn release(&mut self, name: &str) {
        if let Some(old) = self.by_name.remove(name) {
            self.idle_or_close(old.upstream);
        }
    }

    fn idle_or_close(&mut self, upstream: Box<str>) {
        let reusable = match self.keys.get(&upstream) {
            Some((key, true)) if !self.idle.contains_key(key) => Some(key.clone()),
            _ => None,
        };
        let Some(key) = reusable else {
            self.keys.remove(&upstream);
            self.orphans.push(upstream);
            return;
        };
        self.stamps += 1;
        self.idle.insert(key.clone(), (upstream, self.stamps));
        self.idle_order.push_back((key, self.stamps));
        while self.idle.len() > MAX_IDLE {
            let Some((oldest, stamp)) = self.idle_order.pop_front() else {
                break;
            };
            // Only if it is still idle since then (not taken, and idle again behind).
            if self.idle.get(&oldest).is_some_and(|(_, s)| *s == stamp) {
                if let Some((upstream, _)) = self.idle.remove(&oldest) {
                    self.keys.remove(&upstream);
                    self.orphans.push(upstream);
                }
            }
        }
        // Stale entries (statements taken since) are dropped once they are many.
        if self.idle_order.len() > 4 * MAX_IDLE {
            let idle = &self.idle;
            self.idle_order
                .retain(|(k, stamp)| idle.get(k).is_some_and(|(_, s)| s == stamp));
        }
    }

    /// Forgets `name`, returning the upstream statement it stood for (the caller closes it;
    /// it is not kept idle).
    pub fn remove(&mut self, name: &str) -> Option<Box<str>> {
        let old = self.by_name.remove(name)?;
        self.keys.remove(&old.upstream);
        Some(old.upstream)
    }

    /// Replaces the upstream statement `name` stands for (the old one, rewritten under an
    /// older generation or search_path, is to be closed).
    pub fn repoint(&mut self, name: &str, upstream: Box<str>) {
        if let Some(p) = self.by_name.get_mut(name) {
            let old = std::mem::replace(&mut p.upstream, upstream);
            self.keys.remove(&old);
            self.orphans.push(old);
        }
    }

    /// The upstream statements to close now.
    pub fn take_orphans(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.orphans)
    }

    /// SQL-level `DEALLOCATE ALL` or `DISCARD ALL` dropped every upstream statement.
    pub fn clear(&mut self) {
        self.by_name.clear();
        self.orphans.clear();
        self.keys.clear();
        self.idle.clear();
        self.idle_order.clear();
    }

    /// Accounts for a Parse or Close the backend failed or skipped.
    pub fn on_lost(&mut self, lost: Lost) {
        match lost.expect {
            // The client's Parse took an idle statement: the statement exists, the name does
            // not (as in PostgreSQL); the statement goes idle again.
            Expect::Parse if lost.reused.is_some() => {
                let named: Vec<String> = self
                    .by_name
                    .iter()
                    .filter(|(_, p)| p.upstream == lost.statement && Some(p.take) == lost.reused)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in named {
                    self.release(&name);
                }
            }
            // The client's Parse: the statement was not created, as in PostgreSQL.
            Expect::Parse if !lost.hidden => {
                self.keys.remove(&lost.statement);
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
            take: 0,
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
            reused: None,
        });
        assert_eq!(s.get_mut("q").unwrap().generation, u64::MAX);
        s.on_lost(Lost {
            expect: Expect::Parse,
            hidden: false,
            statement: "u1".into(),
            reused: None,
        });
        assert!(!s.contains("q"));
        s.on_lost(Lost {
            expect: Expect::Close,
            hidden: true,
            statement: "u0".into(),
            reused: None,
        });
        assert_eq!(s.take_orphans(), ["u0".into()] as [Box<str>; 1]);
    }

    fn key(sql: &str, generation: u64) -> ReuseKey {
        ReuseKey {
            sql: sql.into(),
            param_types: Box::new([0, 0]),
            generation,
            search_path: 0,
        }
    }

    #[test]
    fn a_created_statement_is_reused_once_its_name_is_gone() {
        let mut s = Statements::default();
        let a = s.fresh();
        s.remember(a.clone(), key("q", 1));
        s.insert("", prepared(&a));
        // Not idle while a name stands for it, nor before the backend created it.
        assert_eq!(s.take_idle(&key("q", 1)), None);
        s.on_created(&a);
        s.release("");
        assert!(s.take_orphans().is_empty(), "kept, not closed");
        // Another generation, text or search_path is another statement.
        assert_eq!(s.take_idle(&key("q", 2)), None);
        assert_eq!(s.take_idle(&key("q2", 1)), None);
        assert_eq!(s.take_idle(&key("q", 1)).map(|t| t.0), Some(a.clone()));
        assert_eq!(s.take_idle(&key("q", 1)), None, "taken once");
        s.insert("named", prepared(&a));
        // DEALLOCATE closes it for good.
        assert_eq!(s.remove("named"), Some(a.clone()));
        assert_eq!(s.take_idle(&key("q", 1)), None);
    }

    #[test]
    fn statements_never_created_are_closed_not_kept() {
        let mut s = Statements::default();
        let a = s.fresh();
        s.remember(a.clone(), key("q", 1));
        s.insert("", prepared(&a));
        s.release("");
        assert_eq!(s.take_orphans(), std::slice::from_ref(&a));
        assert_eq!(s.take_idle(&key("q", 1)), None);
        // A lost Parse is forgotten with its name.
        let b = s.fresh();
        s.remember(b.clone(), key("q", 1));
        s.insert("n", prepared(&b));
        s.on_lost(Lost {
            expect: Expect::Parse,
            hidden: false,
            statement: b.clone(),
            reused: None,
        });
        s.on_created(&b);
        assert!(!s.contains("n"));
        assert_eq!(s.take_idle(&key("q", 1)), None);
    }

    #[test]
    fn idle_statements_are_bounded_oldest_closed_first() {
        let mut s = Statements::default();
        let mut made = Vec::new();
        for i in 0..MAX_IDLE + 3 {
            let u = s.fresh();
            s.remember(u.clone(), key(&format!("q{i}"), 1));
            s.on_created(&u);
            s.insert("", prepared(&u));
            s.release("");
            made.push(u);
        }
        assert_eq!(s.take_orphans(), made[..3].to_vec());
        assert_eq!(s.take_idle(&key("q0", 1)), None);
        assert_eq!(
            s.take_idle(&key(&format!("q{}", MAX_IDLE + 2), 1))
                .map(|t| t.0),
            made.last().cloned()
        );
        // DISCARD ALL: nothing is idle any more.
        s.clear();
        assert_eq!(s.take_idle(&key("q5", 1)), None);
    }

    /// Points `name` at the idle statement prepared with `key`, as a reusing Parse does;
    /// returns the statement and the take's token.
    fn take(s: &mut Statements, name: &str, key: &ReuseKey) -> (Box<str>, u64) {
        let (upstream, token) = s.take_idle(key).unwrap();
        s.insert(
            name,
            Prepared {
                take: token,
                ..prepared(&upstream)
            },
        );
        (upstream, token)
    }

    /// The report that a reusing Parse (`take`) was skipped.
    fn lost_take((statement, token): (Box<str>, u64)) -> Lost {
        Lost {
            expect: Expect::Parse,
            hidden: false,
            statement,
            reused: Some(token),
        }
    }

    #[test]
    fn a_reused_statement_whose_parse_was_skipped_goes_idle_again() {
        let mut s = Statements::default();
        let a = s.fresh();
        s.remember(a.clone(), key("q", 1));
        s.on_created(&a);
        s.insert("S", prepared(&a));
        s.release("S");
        let first = take(&mut s, "S", &key("q", 1));
        // S's Parse was skipped, but after S was closed a later Parse of another name took
        // the statement again before the loss was reported: only S's take is undone.
        s.release("S");
        take(&mut s, "T", &key("q", 1));
        s.on_lost(lost_take(first));
        assert!(s.contains("T"), "a later take stands");
        s.release("T");
        let second = take(&mut s, "S", &key("q", 1));
        s.on_lost(lost_take(second));
        assert!(
            !s.contains("S"),
            "the name is not defined, as in PostgreSQL"
        );
        assert!(
            s.take_orphans().is_empty(),
            "the statement exists: not closed"
        );
        assert_eq!(s.take_idle(&key("q", 1)).map(|t| t.0), Some(a));
    }

    #[test]
    fn one_statement_idle_again_and_again_keeps_the_bookkeeping_small() {
        let mut s = Statements::default();
        let a = s.fresh();
        s.remember(a.clone(), key("q", 1));
        s.on_created(&a);
        s.insert("", prepared(&a));
        for _ in 0..10_000 {
            s.release("");
            let (taken, _) = s.take_idle(&key("q", 1)).unwrap();
            s.insert("", prepared(&taken));
        }
        assert!(
            s.idle_order.len() <= 4 * MAX_IDLE + 1,
            "{}",
            s.idle_order.len()
        );
        assert!(s.take_orphans().is_empty());
    }
}
