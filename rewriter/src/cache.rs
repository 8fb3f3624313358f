//! The rewrite cache: results for the active policy version only (a new version empties it:
//! sessions never use an older one), by scope (agent and context) then statement text, one map
//! per protocol. A hit hashes the text once and allocates nothing.

use std::collections::HashMap;

use crate::Protocol;

pub struct RewriteCache<K, V> {
    version: Option<K>,
    scopes: HashMap<String, [HashMap<Box<str>, V>; 2]>,
    len: usize,
    capacity: usize,
}

fn slot(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Simple => 0,
        Protocol::Extended => 1,
    }
}

impl<K: PartialEq + Clone, V: Clone> RewriteCache<K, V> {
    /// A cache of at most `capacity` statements (all are dropped when it is full).
    pub fn new(capacity: usize) -> Self {
        RewriteCache {
            version: None,
            scopes: HashMap::new(),
            len: 0,
            capacity,
        }
    }

    /// The cached result for `sql` under `version`; empties the cache if the version changed.
    pub fn get(&mut self, version: &K, scope: &str, protocol: Protocol, sql: &str) -> Option<V> {
        if self.version.as_ref() != Some(version) {
            self.scopes.clear();
            self.len = 0;
            self.version = Some(version.clone());
            return None;
        }
        self.scopes
            .get(scope)
            .and_then(|maps| maps[slot(protocol)].get(sql))
            .cloned()
    }

    /// Keeps `value` for `sql`, unless the active version moved on since it was computed.
    pub fn insert(&mut self, version: &K, scope: &str, protocol: Protocol, sql: &str, value: V) {
        if self.version.as_ref() != Some(version) {
            return;
        }
        if self.len >= self.capacity {
            self.scopes.clear();
            self.len = 0;
        }
        let maps = match self.scopes.get_mut(scope) {
            Some(m) => m,
            None => self.scopes.entry(scope.to_string()).or_default(),
        };
        if maps[slot(protocol)].insert(Box::from(sql), value).is_none() {
            self.len += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_per_version_scope_and_protocol() {
        let mut c: RewriteCache<u32, &str> = RewriteCache::new(2);
        assert_eq!(c.get(&1, "a", Protocol::Simple, "q"), None);
        c.insert(&1, "a", Protocol::Simple, "q", "r");
        assert_eq!(c.get(&1, "a", Protocol::Simple, "q"), Some("r"));
        assert_eq!(c.get(&1, "b", Protocol::Simple, "q"), None);
        assert_eq!(c.get(&1, "a", Protocol::Extended, "q"), None);
        // A new version empties it; a result computed under the old one is not kept.
        assert_eq!(c.get(&2, "a", Protocol::Simple, "q"), None);
        c.insert(&1, "a", Protocol::Simple, "q", "old");
        assert_eq!(c.get(&2, "a", Protocol::Simple, "q"), None);
        // Bounded.
        c.insert(&2, "a", Protocol::Simple, "q1", "1");
        c.insert(&2, "a", Protocol::Simple, "q2", "2");
        c.insert(&2, "a", Protocol::Simple, "q3", "3");
        assert_eq!(c.get(&2, "a", Protocol::Simple, "q1"), None);
        assert_eq!(c.get(&2, "a", Protocol::Simple, "q3"), Some("3"));
    }
}
