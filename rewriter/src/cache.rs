//! The rewrite cache: results by (version, scope, protocol, statement text), bounded by bytes,
//! sharded and evicting entry by entry (`quick_cache`'s CLOCK-Pro), so a burst of one-off
//! statements neither empties it nor grows it. The version is part of the key: a result made
//! under an older policy or catalog is never found again and ages out. A hit hashes the text
//! once and allocates nothing.

use std::hash::{Hash, Hasher};

use std::sync::Arc;

use quick_cache::{sync::Cache, Equivalent, Weighter};

use crate::shape::{Lifted, Sentinels, Template};
use crate::{Checked, Protocol};

/// What an entry costs besides its key's text (the map's own bookkeeping).
const ENTRY_OVERHEAD: u64 = 128;

#[derive(Clone, PartialEq, Eq)]
struct Key<K> {
    version: K,
    scope: Box<str>,
    protocol: Protocol,
    sql: Box<str>,
}

/// A key by reference, to look one up without allocating.
struct Lookup<'a, K> {
    version: &'a K,
    scope: &'a str,
    protocol: Protocol,
    sql: &'a str,
}

impl<K: Hash> Hash for Key<K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Lookup {
            version: &self.version,
            scope: &self.scope,
            protocol: self.protocol,
            sql: &self.sql,
        }
        .hash(state)
    }
}

impl<K: Hash> Hash for Lookup<'_, K> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.version.hash(state);
        self.scope.hash(state);
        self.protocol.hash(state);
        self.sql.hash(state);
    }
}

impl<K: PartialEq> Equivalent<Key<K>> for Lookup<'_, K> {
    fn equivalent(&self, key: &Key<K>) -> bool {
        *self.version == key.version
            && self.protocol == key.protocol
            && self.sql == &*key.sql
            && self.scope == &*key.scope
    }
}

/// Weighs an entry in bytes: its key's text, what `value` says it holds, and the overhead.
#[derive(Clone)]
struct Bytes<V> {
    value: fn(&V) -> u64,
}

impl<K, V> Weighter<Key<K>, V> for Bytes<V> {
    fn weight(&self, key: &Key<K>, value: &V) -> u64 {
        (key.scope.len() + key.sql.len()) as u64 + (self.value)(value) + ENTRY_OVERHEAD
    }
}

pub struct RewriteCache<K, V> {
    entries: Cache<Key<K>, V, Bytes<V>>,
}

impl<K: Hash + Eq + Clone, V: Clone> RewriteCache<K, V> {
    /// A cache of at most `bytes` (by the keys' text, `weight` of each value and a fixed
    /// overhead per entry).
    pub fn new(bytes: u64, weight: fn(&V) -> u64) -> Self {
        let estimated_items = (bytes / 1024).clamp(16, 1 << 20) as usize;
        RewriteCache {
            entries: Cache::with_weighter(estimated_items, bytes, Bytes { value: weight }),
        }
    }

    /// The cached result for `sql` under `version`.
    pub fn get(&self, version: &K, scope: &str, protocol: Protocol, sql: &str) -> Option<V> {
        self.entries.get(&Lookup {
            version,
            scope,
            protocol,
            sql,
        })
    }

    /// Keeps `value` for `sql` under `version`.
    pub fn insert(&self, version: &K, scope: &str, protocol: Protocol, sql: &str, value: V) {
        self.entries.insert(
            Key {
                version: version.clone(),
                scope: scope.into(),
                protocol,
                sql: sql.into(),
            },
            value,
        );
    }

    /// Entries held, and their weight in bytes.
    pub fn usage(&self) -> (usize, u64) {
        (self.entries.len(), self.entries.weight())
    }
}

/// What a shape maps to: a template and the result it was learnt with (its `sql` is the
/// learnt statement's), or nothing (the shape's rewrites are not filled in; see [`crate::shape`]).
type Learnt = Option<Arc<(Template, Checked)>>;

/// Rewrites by statement shape ([`crate::lift`]): a statement that differs from one rewritten
/// before only in constants in data positions gets that rewrite's template filled with its own
/// constants. Keyed and bounded as [`RewriteCache`].
pub struct ShapeCache<K> {
    shapes: RewriteCache<K, Learnt>,
}

impl<K: Hash + Eq + Clone> ShapeCache<K> {
    pub fn new(bytes: u64) -> Self {
        ShapeCache {
            shapes: RewriteCache::new(bytes, |learnt: &Learnt| match learnt {
                Some(l) => (l.0.size() + 2 * l.1.sql.len() + 512) as u64,
                None => 0,
            }),
        }
    }

    /// The result for the statement `lifted` was lifted from, if a template for its shape
    /// applies.
    pub fn get(
        &self,
        version: &K,
        scope: &str,
        protocol: Protocol,
        lifted: &Lifted,
    ) -> Option<Checked> {
        let learnt = self.shapes.get(version, scope, protocol, lifted.key())??;
        let (template, checked) = &*learnt;
        Some(Checked {
            sql: template.fill(lifted)?,
            ..checked.clone()
        })
    }

    /// Learns the template of the statement `lifted` (rewritten as `checked`) by having
    /// `rewrite` rewrite its sentinel form, which must come out the same in every respect but
    /// its text. Whatever the outcome, the shape is not learnt again under this version.
    pub fn learn(
        &self,
        version: &K,
        scope: &str,
        protocol: Protocol,
        lifted: &Lifted,
        checked: &Checked,
        rewrite: impl FnOnce(&str) -> Option<Checked>,
    ) {
        let learnt = (|| {
            if checked.search_path_changes || checked.prepared != crate::PreparedEffect::None {
                return None;
            }
            let sentinels = Sentinels::new(lifted)?;
            let other = rewrite(&sentinels.sql)?;
            let same = other.statements == checked.statements
                && other.shape == checked.shape
                && other.prepared == checked.prepared
                && !other.search_path_changes
                && other.basis == checked.basis;
            if !same {
                return None;
            }
            let template = Template::learn(lifted, &sentinels, &checked.sql, &other.sql)?;
            Some(Arc::new((template, checked.clone())))
        })();
        self.shapes
            .insert(version, scope, protocol, lifted.key(), learnt);
    }

    /// Whether the shape was learnt (as a template or as not to be filled in).
    pub fn known(&self, version: &K, scope: &str, protocol: Protocol, lifted: &Lifted) -> bool {
        self.shapes
            .get(version, scope, protocol, lifted.key())
            .is_some()
    }

    /// Entries held, and their weight in bytes.
    pub fn usage(&self) -> (usize, u64) {
        self.shapes.usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_per_version_scope_and_protocol() {
        let c: RewriteCache<u32, &str> = RewriteCache::new(1 << 20, |_| 0);
        assert_eq!(c.get(&1, "a", Protocol::Simple, "q"), None);
        c.insert(&1, "a", Protocol::Simple, "q", "r");
        assert_eq!(c.get(&1, "a", Protocol::Simple, "q"), Some("r"));
        assert_eq!(c.get(&1, "b", Protocol::Simple, "q"), None);
        assert_eq!(c.get(&1, "a", Protocol::Extended, "q"), None);
        // Another version does not see it.
        assert_eq!(c.get(&2, "a", Protocol::Simple, "q"), None);
    }

    #[test]
    fn bounded_by_bytes_evicting_entry_by_entry() {
        let c: RewriteCache<u32, String> = RewriteCache::new(64 * 1024, |v| v.len() as u64);
        let hot = "select 1 from hot".to_string();
        c.insert(&1, "a", Protocol::Simple, &hot, "x".repeat(100));
        for i in 0..20_000 {
            let sql = format!("select {i} from t");
            c.insert(&1, "a", Protocol::Simple, &sql, "x".repeat(100));
            // The hot statement keeps being used.
            if i % 10 == 0 {
                assert!(c.get(&1, "a", Protocol::Simple, &hot).is_some(), "{i}");
            }
        }
        let (items, weight) = c.usage();
        assert!(weight <= 64 * 1024, "{weight}");
        assert!(items > 100, "{items}");
    }
}
