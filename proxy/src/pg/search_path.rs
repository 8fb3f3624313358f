//! An enforced session's search_path, which the rewriter resolves unqualified names with.
//!
//! Sessions start with the upstream login's path. A statement the rewriter says may change it
//! (`SET`/`RESET search_path`, `set_config`, `RESET ALL`, `DISCARD ALL`) leaves it unsettled;
//! after that statement's batch (its Query, or the Sync closing its extended batch) the proxy
//! asks the upstream itself (`SHOW search_path`, hidden from the client; SHOW takes no
//! snapshot, so a transaction's isolation is untouched) and holds the client's next messages
//! until the answer is in. Transactions need no model of their own: the path stays unsettled
//! until it has been read outside a transaction block, so the batch that commits or rolls back
//! a change (or rolls back to a savepoint) is read back too.
//!
//! Getting the path wrong could only make a name resolve to another relation, which is fenced
//! under its own policy like any other; what keeps a wrong path from reaching user-defined
//! functions is the rewriter's refusal to put such schemas on the path at all.

use crate::enforce::SessionPath;

#[derive(Debug, Default)]
pub struct Tracker {
    /// `None`: the login's path.
    current: Option<SessionPath>,
    /// Bumped at each change: prepared statements rewritten under another are redone.
    version: u64,
    /// Something may have changed the path since it was last read outside a transaction.
    unsettled: bool,
    /// A read is in flight: the client's messages wait for it.
    reading: bool,
}

impl Tracker {
    /// The session's path, when it is not the login's.
    pub fn current(&self) -> Option<&SessionPath> {
        self.current.as_ref()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// A statement that may change the path was sent.
    pub fn may_change(&mut self) {
        self.unsettled = true;
    }

    /// At the end of a batch: whether to read the path now (and the reading starts).
    pub fn start_read(&mut self) -> bool {
        if !self.unsettled || self.reading {
            return false;
        }
        self.reading = true;
        true
    }

    /// Whether client messages must wait for a read.
    pub fn is_reading(&self) -> bool {
        self.reading
    }

    /// The read's answer: the setting's text (`None` if the read failed, as it does in a
    /// failed transaction, whose ROLLBACK is read in turn), and the transaction status after
    /// it. `login_setting` is the login's own text of the setting.
    pub fn on_read(&mut self, setting: Option<&str>, status: u8, login_setting: &str) {
        self.reading = false;
        let Some(setting) = setting else {
            return;
        };
        let path = if setting == login_setting {
            None
        } else {
            Some(SessionPath::new(parse(setting)))
        };
        if path != self.current {
            self.current = path;
            self.version += 1;
        }
        if status == b'I' {
            self.unsettled = false;
        }
    }
}

/// The schemas of a search_path setting as PostgreSQL splits it (`SplitIdentifierString`):
/// comma-separated, blanks around entries ignored, `"…"` quoted with `""` for a quote, other
/// names folded to lower case. `"$user"` (the login's own schema, which agents cannot set)
/// is left out.
fn parse(setting: &str) -> Vec<String> {
    let mut schemas = Vec::new();
    let mut chars = setting.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        name.push('"');
                    } else {
                        break;
                    }
                } else {
                    name.push(c);
                }
            }
            if name != "$user" {
                schemas.push(name);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' || c.is_whitespace() {
                    break;
                }
                name.extend(c.to_lowercase());
                chars.next();
            }
            if !name.is_empty() && name != "$user" {
                schemas.push(name);
            }
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        match chars.next() {
            Some(',') => continue,
            _ => return schemas,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_split_as_postgres_splits_them() {
        assert_eq!(parse("\"$user\", public"), ["public"]);
        assert_eq!(parse("archive, public"), ["archive", "public"]);
        assert_eq!(
            parse("Archive,\"My \"\"S\"\", x\" ,pg_catalog"),
            ["archive", "My \"S\", x", "pg_catalog"]
        );
        assert_eq!(parse(""), Vec::<String>::new());
    }

    #[test]
    fn the_path_settles_only_outside_a_transaction() {
        let login = "\"$user\", public";
        let mut t = Tracker::default();
        assert!(!t.start_read(), "nothing to read");
        t.may_change();
        assert!(t.start_read());
        assert!(t.is_reading());
        assert!(!t.start_read(), "one read at a time");
        t.on_read(Some("archive, public"), b'T', login);
        assert_eq!(t.current().unwrap().schemas, ["archive", "public"]);
        assert_eq!(t.version(), 1);
        // Still in the transaction: the batch that ends it is read too.
        assert!(t.start_read());
        t.on_read(None, b'E', login);
        assert_eq!(t.version(), 1, "a failed read changes nothing");
        assert!(t.start_read());
        t.on_read(Some(login), b'I', login);
        assert!(t.current().is_none(), "rolled back to the login's path");
        assert_eq!(t.version(), 2);
        assert!(!t.start_read(), "settled");
    }
}
