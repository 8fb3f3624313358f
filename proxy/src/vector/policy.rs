//! What one agent (with its context) may do with one collection under one policy version,
//! derived once and cached: the collection is the Cedar entity type `qdrant::<collection>`;
//! `search`, `upsert` and `delete` residuals become Qdrant filters; `manage_collection`
//! (create, drop, index) must hold on every collection; `read_vector` decides whether vectors
//! are returned; `read_field` with `context.field` decides each payload field (as
//! `read_column` decides SQL columns). An action the schema does not declare for the
//! collection is not permitted; a residual Qdrant cannot express denies.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use policies::{ColumnRule, Derived, Filter, PayloadSchema, PolicyBundle};
use serde_json::Value;

use super::auth::Caller;
use super::ops::ShimError;

/// Per-request actions on points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Search,
    Upsert,
    Delete,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Search => "search",
            Action::Upsert => "upsert",
            Action::Delete => "delete",
        }
    }
}

pub const MANAGE: &str = "manage_collection";
pub const READ_VECTOR: &str = "read_vector";

/// One action's rule: the derived filter, and the same as a Qdrant filter.
#[derive(Debug)]
pub struct Rule {
    pub derived: Derived,
    pub qdrant: Value,
}

/// Whether vectors are returned.
#[derive(Debug, Clone, PartialEq)]
pub enum Vectors {
    All,
    None,
    /// On some points only: requests asking for vectors are refused.
    Some,
}

/// What one principal may do with one collection.
pub struct CollectionPolicy {
    pub collection: String,
    pub resource_type: String,
    bundle: Arc<PolicyBundle>,
    principal: crate::enforce::Principal,
    /// The payload's declared types; an error when the schema has no usable entity type.
    schema: Result<PayloadSchema, String>,
    actions: [Result<Rule, String>; 3],
    pub manage: bool,
    pub vectors: Vectors,
    /// `None`: no field rules (every field readable). Rules are derived per field on first use.
    fields: Option<Mutex<HashMap<String, ColumnRule>>>,
}

impl CollectionPolicy {
    pub fn derive(bundle: Arc<PolicyBundle>, caller: &Caller, collection: &str) -> Self {
        let resource_type = format!("qdrant::{collection}");
        let schema = if collection_name_ok(collection) {
            PayloadSchema::of(&bundle, &resource_type).map_err(|e| e.to_string())
        } else {
            Err(format!(
                "the collection name {collection:?} is not a Cedar identifier"
            ))
        };
        let principal = caller.principal.clone();
        let derive = |action: &str| -> Result<Derived, String> {
            if schema.is_err() || !policies::action_applies(&bundle, action, &resource_type) {
                return Err(format!(
                    "the policy schema does not declare action {action} for {resource_type}"
                ));
            }
            policies::derive(
                &bundle,
                &principal.agent,
                action,
                &resource_type,
                principal.context(),
            )
            .map_err(|e| e.to_string())
        };
        let rule = |action: Action| -> Result<Rule, String> {
            let derived = derive(action.name())?;
            if derived.filter == Filter::False {
                return Err(format!(
                    "no policy permits {} to {} in {collection}",
                    caller.agent,
                    action.name()
                ));
            }
            let qdrant = rewriter::qdrant_filter(&derived.filter).map_err(|e| {
                format!(
                    "the {} policy for {collection} cannot be expressed as a Qdrant filter ({e}), so it denies",
                    action.name()
                )
            })?;
            Ok(Rule { derived, qdrant })
        };
        let actions = [
            rule(Action::Search),
            rule(Action::Upsert),
            rule(Action::Delete),
        ];
        let manage = derive(MANAGE).is_ok_and(|d| d.filter == Filter::True);
        let vectors =
            if schema.is_err() || !policies::action_applies(&bundle, READ_VECTOR, &resource_type) {
                Vectors::All
            } else {
                match derive(READ_VECTOR).map(|d| d.filter) {
                    Ok(Filter::True) => Vectors::All,
                    Ok(Filter::False) | Err(_) => Vectors::None,
                    Ok(_) => Vectors::Some,
                }
            };
        let fields = policies::action_applies(&bundle, policies::READ_FIELD, &resource_type)
            .then(|| Mutex::new(HashMap::new()));
        let mut policy = CollectionPolicy {
            collection: collection.to_string(),
            resource_type,
            bundle,
            principal,
            schema,
            actions,
            manage,
            vectors,
            fields,
        };
        // When no `read_field` policy reads the context (where the field's name is), every
        // field gets the same rule: if that is "visible", there is nothing to project.
        if policy.fields.is_some()
            && !policies::rule_depends_on_name(&policy.bundle, policies::READ_FIELD)
            && policy.field("any field") == ColumnRule::Visible
        {
            policy.fields = None;
        }
        policy
    }

    /// The payload schema, or why the collection cannot be used at all.
    pub fn schema(&self) -> Result<&PayloadSchema, ShimError> {
        self.schema
            .as_ref()
            .map_err(|e| ShimError::Forbidden(format!("collection {}: {e}", self.collection)))
    }

    /// The rule of `action`, or the refusal.
    pub fn rule(&self, action: Action) -> Result<&Rule, ShimError> {
        self.schema()?;
        self.actions[action as usize]
            .as_ref()
            .map_err(|e| ShimError::Forbidden(e.clone()))
    }

    /// Whether the agent may do anything with the collection (see it listed, ask if it exists).
    pub fn visible(&self) -> bool {
        self.schema.is_ok() && (self.manage || self.actions.iter().any(Result::is_ok))
    }

    pub fn require_visible(&self) -> Result<(), ShimError> {
        self.schema()?;
        if self.visible() {
            Ok(())
        } else {
            Err(ShimError::Forbidden(format!(
                "no policy permits this agent to use collection {}",
                self.collection
            )))
        }
    }

    pub fn require_manage(&self) -> Result<(), ShimError> {
        self.schema()?;
        if self.manage {
            Ok(())
        } else {
            Err(ShimError::Forbidden(format!(
                "no policy permits this agent to {MANAGE} {}",
                self.collection
            )))
        }
    }

    /// Whether field rules are in force.
    pub fn has_field_rules(&self) -> bool {
        self.fields.is_some()
    }

    /// The rule for the payload field at a dotted path (every field is visible without field
    /// rules). Derived on first use.
    pub fn field(&self, path: &str) -> ColumnRule {
        let Some(fields) = &self.fields else {
            return ColumnRule::Visible;
        };
        if let Some(rule) = fields.lock().expect("field rules").get(path) {
            return rule.clone();
        }
        let rule = policies::derive_fields(
            &self.bundle,
            &self.principal.agent,
            &self.resource_type,
            &[path],
            &self.principal.context(),
        )
        .ok()
        .flatten()
        .and_then(|mut r| r.columns.remove(path))
        .unwrap_or(ColumnRule::Denied);
        let mut cache = fields.lock().expect("field rules");
        if cache.len() < 4096 {
            cache.insert(path.to_string(), rule.clone());
        }
        rule
    }

    /// The rules of the fields the schema declares (for the record's basis).
    pub fn known_fields(&self) -> Vec<(String, ColumnRule)> {
        match &self.schema {
            Ok(schema) => schema
                .leaf_paths()
                .into_iter()
                .map(|path| {
                    let rule = self.field(&path);
                    (path, rule)
                })
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// The policies behind this collection's rules (for the record's basis).
    pub fn determining(&self, action: Action) -> Vec<String> {
        match &self.actions[action as usize] {
            Ok(rule) => rule.derived.determining.clone(),
            Err(_) => Vec::new(),
        }
    }
}

/// A collection name that is also a Cedar identifier (so `qdrant::<name>` parses as the type).
fn collection_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Collection policies by (policy version, principal and context, collection).
pub struct PolicyCache {
    entries: quick_cache::sync::Cache<(String, String, String), Arc<CollectionPolicy>>,
}

impl PolicyCache {
    pub fn new(capacity: usize) -> Self {
        PolicyCache {
            entries: quick_cache::sync::Cache::new(capacity),
        }
    }

    /// The policy of `caller` on `collection` under `bundle`, if derived already.
    pub fn cached(
        &self,
        bundle: &PolicyBundle,
        caller: &Caller,
        collection: &str,
    ) -> Option<Arc<CollectionPolicy>> {
        self.entries.get(&key(bundle, caller, collection))
    }

    /// The policy of `caller` on `collection` under `bundle`. Blocking on a miss (Cedar
    /// partial evaluation): call it from the blocking pool.
    pub fn get(
        &self,
        bundle: &Arc<PolicyBundle>,
        caller: &Caller,
        collection: &str,
    ) -> Arc<CollectionPolicy> {
        let key = key(bundle, caller, collection);
        if let Some(hit) = self.entries.get(&key) {
            return hit;
        }
        let policy = Arc::new(CollectionPolicy::derive(bundle.clone(), caller, collection));
        self.entries.insert(key, policy.clone());
        policy
    }
}

fn key(bundle: &PolicyBundle, caller: &Caller, collection: &str) -> (String, String, String) {
    (
        bundle.version.to_string(),
        caller.principal.scope().to_string(),
        collection.to_string(),
    )
}
