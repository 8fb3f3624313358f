//! A bounded cache of gate results keyed by SQL text (one map per protocol), shared by all
//! sessions, so a statement that repeats (the extended protocol's unnamed statements, ORMs) is
//! parsed once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rewriter::{Checked, Protocol, Refusal};

pub type GateResult = Arc<Result<Checked, Refusal>>;

type Map = HashMap<Box<str>, GateResult>;

pub struct GateCache {
    /// (simple, extended)
    maps: Mutex<(Map, Map)>,
    capacity: usize,
}

impl GateCache {
    pub fn new(capacity: usize) -> Self {
        GateCache {
            maps: Mutex::new((Map::new(), Map::new())),
            capacity,
        }
    }

    /// The gate's answer for `sql`, from the cache or computed now (outside the lock).
    pub fn check(&self, sql: &str, protocol: Protocol) -> GateResult {
        if let Some(hit) = self.with_map(protocol, |m| m.get(sql).cloned()) {
            return hit;
        }
        let result = Arc::new(rewriter::check(sql, protocol));
        let capacity = self.capacity;
        self.with_map(protocol, |m| {
            if m.len() >= capacity {
                // Crude but bounded: start over rather than grow without limit.
                m.clear();
            }
            m.insert(Box::from(sql), result.clone());
        });
        result
    }

    fn with_map<T>(&self, protocol: Protocol, f: impl FnOnce(&mut Map) -> T) -> T {
        let mut maps = self.maps.lock().expect("gate cache lock");
        match protocol {
            Protocol::Simple => f(&mut maps.0),
            Protocol::Extended => f(&mut maps.1),
        }
    }
}
