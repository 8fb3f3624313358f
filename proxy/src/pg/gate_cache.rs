//! The gate's results by statement text (gate-only mode), shared by all sessions, so a statement
//! that repeats (the extended protocol's unnamed statements, ORMs) is parsed once. Bounded by
//! bytes and evicting entry by entry (the rewrite cache's `quick_cache`). A statement that
//! differs from one checked before only in constants is filled into its template (see
//! `rewriter::ShapeCache`) instead of being parsed again.

use std::sync::Arc;

use rewriter::{Checked, Protocol, Refusal, RewriteCache, ShapeCache};

pub type GateResult = Arc<Result<Checked, Refusal>>;

/// What the gate cache may hold, in bytes.
const GATE_CACHE_BYTES: u64 = 32 << 20;

pub struct GateCache {
    results: RewriteCache<(), GateResult>,
    shapes: ShapeCache<()>,
}

impl Default for GateCache {
    fn default() -> Self {
        GateCache {
            results: RewriteCache::new(GATE_CACHE_BYTES, |r: &GateResult| match &**r {
                Ok(checked) => checked.sql.len() as u64,
                Err(_) => 256,
            }),
            shapes: ShapeCache::new(GATE_CACHE_BYTES / 2),
        }
    }
}

impl GateCache {
    /// The gate's answer for `sql`, from the cache or computed now.
    pub fn check(&self, sql: &str, protocol: Protocol) -> GateResult {
        if let Some(hit) = self.results.get(&(), "", protocol, sql) {
            return hit;
        }
        let lifted = rewriter::lift(sql);
        if let Some(lifted) = &lifted {
            if let Some(filled) = self.shapes.get(&(), "", protocol, lifted) {
                return Arc::new(Ok(filled));
            }
        }
        let result = Arc::new(rewriter::check(sql, protocol));
        if let (Ok(checked), Some(lifted)) = (&*result, &lifted) {
            if !self.shapes.known(&(), "", protocol, lifted) {
                self.shapes.learn(&(), "", protocol, lifted, checked, |s| {
                    rewriter::check(s, protocol).ok()
                });
            }
        }
        self.results.insert(&(), "", protocol, sql, result.clone());
        result
    }
}
