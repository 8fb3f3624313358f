//! The gate's results by statement text (gate-only mode), shared by all sessions, so a statement
//! that repeats (the extended protocol's unnamed statements, ORMs) is parsed once. Bounded by
//! bytes and evicting entry by entry (the rewrite cache's `quick_cache`).

use std::sync::Arc;

use rewriter::{Checked, Protocol, Refusal, RewriteCache};

pub type GateResult = Arc<Result<Checked, Refusal>>;

/// What the gate cache may hold, in bytes.
const GATE_CACHE_BYTES: u64 = 32 << 20;

pub struct GateCache {
    results: RewriteCache<(), GateResult>,
}

impl Default for GateCache {
    fn default() -> Self {
        GateCache {
            results: RewriteCache::new(GATE_CACHE_BYTES, |r: &GateResult| match &**r {
                Ok(checked) => checked.sql.len() as u64,
                Err(_) => 256,
            }),
        }
    }
}

impl GateCache {
    /// The gate's answer for `sql`, from the cache or computed now.
    pub fn check(&self, sql: &str, protocol: Protocol) -> GateResult {
        if let Some(hit) = self.results.get(&(), "", protocol, sql) {
            return hit;
        }
        let result = Arc::new(rewriter::check(sql, protocol));
        self.results.insert(&(), "", protocol, sql, result.clone());
        result
    }
}
