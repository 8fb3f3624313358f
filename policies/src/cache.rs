//! A cache of derived filters keyed by (policy version, principal, context fingerprint, action,
//! resource type). A new policy version never sees an older version's entries (they age out).
//! Sharded and evicting entry by entry (`quick_cache`), so a burst of new principals neither
//! empties it nor grows it past its capacity.

use std::sync::Arc;

use cedar_policy::{Context, EntityUid};

use crate::derive::{derive, DeriveError, Derived};
use crate::load::PolicyBundle;
use crate::version::Version;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    version: Version,
    principal: String,
    context: String,
    action: String,
    resource_type: String,
}

pub struct DerivationCache {
    entries: quick_cache::sync::Cache<Key, Arc<Derived>>,
}

impl DerivationCache {
    /// A cache of about `capacity` derived filters.
    pub fn new(capacity: usize) -> Self {
        DerivationCache {
            entries: quick_cache::sync::Cache::new(capacity),
        }
    }

    /// The filter for this request, derived once per key. `context_key` must identify `context`
    /// exactly (two contexts with the same key must be equal); `context` is built only on a miss.
    pub fn get_or_derive(
        &self,
        bundle: &PolicyBundle,
        principal: &EntityUid,
        action: &str,
        resource_type: &str,
        context_key: &str,
        context: impl FnOnce() -> Context,
    ) -> Result<Arc<Derived>, DeriveError> {
        let key = Key {
            version: bundle.version.clone(),
            principal: principal.to_string(),
            context: context_key.to_string(),
            action: action.to_string(),
            resource_type: resource_type.to_string(),
        };
        if let Some(hit) = self.entries.get(&key) {
            return Ok(hit);
        }
        let derived = Arc::new(derive(bundle, principal, action, resource_type, context())?);
        self.entries.insert(key, derived.clone());
        Ok(derived)
    }
}
