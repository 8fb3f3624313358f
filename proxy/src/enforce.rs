//! Policy enforcement for sessions: the upstream catalog (read at start, refreshed on SIGHUP),
//! the rules per (policy version, catalog, agent, context, relation) derived from Cedar, and
//! rewrites cached per (policy and catalog generation, agent, context, protocol, statement
//! text). Each statement uses the policy version and catalog current when it arrives.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use cedar_policy::{Context, EntityId, EntityTypeName, EntityUid};
use connectors::postgres::catalog::{RelationInfo, Snapshot};
use policies::{derive_columns, DerivationCache, PolicyBundle, Version};
use rewriter::{
    Catalog, Checked, Column, Operator, Policies, Protocol, Refusal, RelKind, Relation,
    RewriteCache, Rewritten, RoutineKind, ShapeCache, TablePolicy, WriteAction, WritePolicy,
};
use tracing::warn;

use crate::pg::gate_cache::GateResult;
use crate::policy_state::PolicyState;

/// Who a session acts as, fixed at login.
#[derive(Debug, Clone)]
pub struct Principal {
    pub agent: EntityUid,
    /// The human the agent acts for (`context.on_behalf_of`), if any.
    pub on_behalf_of: Option<EntityUid>,
    /// Identifies the context exactly (empty: no delegation).
    pub context_key: String,
    /// Agent and context as one cache key, built once per session.
    scope: String,
    /// The Cedar context of every request, built once.
    context: Context,
}

/// `kind::"id"`, built without Cedar's parser (the vector shim makes one per request).
fn entity(kind: &str, id: &str) -> Result<EntityUid, String> {
    static AGENT: LazyLock<EntityTypeName> =
        LazyLock::new(|| EntityTypeName::from_str("Agent").expect("a type name"));
    static USER: LazyLock<EntityTypeName> =
        LazyLock::new(|| EntityTypeName::from_str("User").expect("a type name"));
    let kind = match kind {
        "Agent" => AGENT.clone(),
        "User" => USER.clone(),
        other => EntityTypeName::from_str(other).map_err(|e| e.to_string())?,
    };
    Ok(EntityUid::from_type_name_and_id(kind, EntityId::new(id)))
}

impl Principal {
    /// `Agent::"id"`, acting for `User::"user"` when given.
    pub fn new(id: &str, on_behalf_of: Option<&str>) -> Result<Self, String> {
        let uid = entity("Agent", id)?;
        let on_behalf_of = on_behalf_of.map(|u| entity("User", u)).transpose()?;
        let context_key = on_behalf_of
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_default();
        let context = match &on_behalf_of {
            None => Context::empty(),
            Some(user) => Context::from_pairs([(
                "on_behalf_of".to_string(),
                cedar_policy::RestrictedExpression::new_entity_uid(user.clone()),
            )])
            .map_err(|e| e.to_string())?,
        };
        Ok(Principal {
            scope: format!("{uid}\0{context_key}"),
            agent: uid,
            on_behalf_of,
            context_key,
            context,
        })
    }

    pub(crate) fn context(&self) -> Context {
        self.context.clone()
    }

    /// Agent and context as one key (what caches of per-principal results are keyed by).
    pub(crate) fn scope(&self) -> &str {
        &self.scope
    }
}

type RuleKey = (Version, u64, String, String, String);

/// The upstream catalog as last read (at start, then at each refresh).
pub struct CatalogView {
    pub catalog: Catalog,
    /// The login's search_path setting as `SHOW search_path` prints it.
    pub search_path_setting: String,
    /// Tables with a primary key: (schema, name, OID, key column numbers).
    pub primary_keys: Vec<(String, String, u32, Vec<i16>)>,
    /// The snapshot as canonical JSON, and its SHA-256 (hex): what audit records name, and
    /// what `audit replay` loads.
    pub snapshot: Arc<[u8]>,
    pub hash: String,
    /// Bumped by each refresh.
    pub generation: u64,
}

impl CatalogView {
    fn new(snapshot: Snapshot, generation: u64) -> Self {
        let json = serde_json::to_value(&snapshot).expect("a snapshot serializes");
        let bytes: Arc<[u8]> = audit::canonical(&json)
            .expect("a snapshot holds no floats")
            .into();
        let hash = audit::sha256_hex(&bytes);
        let relations = snapshot.relations.into_iter().map(relation).collect();
        let system = snapshot.system.into_iter().map(relation).collect();
        let view = CatalogView {
            catalog: Catalog::new(
                relations,
                system,
                rewriter::allowed_functions(snapshot.functions),
            )
            .with_others(snapshot.others)
            .with_user_routines(
                snapshot
                    .user_routines
                    .into_iter()
                    .map(|(schema, name, kind)| {
                        let kind = match kind {
                            'o' => RoutineKind::Operator,
                            _ => RoutineKind::Function,
                        };
                        (schema, name, kind)
                    })
                    .collect(),
            )
            .with_database(snapshot.database)
            .with_search_path(snapshot.search_path)
            .with_operators(
                snapshot
                    .operators
                    .into_iter()
                    .map(|(name, left, right, result, leakproof)| Operator {
                        name,
                        left,
                        right,
                        result,
                        leakproof,
                    })
                    .collect(),
            )
            .with_stable_functions(snapshot.stable_functions),
            search_path_setting: snapshot.search_path_setting,
            primary_keys: snapshot.primary_keys,
            snapshot: bytes,
            hash,
            generation,
        };
        let shadowing = view
            .catalog
            .user_routines_on_path(view.catalog.search_path());
        if !shadowing.is_empty() {
            let names: Vec<String> = shadowing
                .iter()
                .map(|(kind, name, schema)| match kind {
                    RoutineKind::Function => format!("{schema}.{name}()"),
                    RoutineKind::Operator => format!("operator {schema}.{name}"),
                })
                .collect();
            warn!(
                routines = %names.join(", "),
                "user-defined functions or operators are on the search_path: statements that \
                 name them unqualified are refused (PostgreSQL may prefer them to the built-ins)"
            );
        }
        view
    }
}

/// A session's search_path when it is not the login's: its schemas, and the text that keys
/// its rewrites in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionPath {
    pub schemas: Vec<String>,
    pub key: String,
}

impl SessionPath {
    pub fn new(schemas: Vec<String>) -> Self {
        let key = schemas
            .iter()
            .map(|s| rewriter::quote_ident(s))
            .collect::<Vec<_>>()
            .join(",");
        SessionPath { schemas, key }
    }
}

/// What the rewrite cache may hold, in bytes (statements, rewrites and their audit basis).
const REWRITE_CACHE_BYTES: u64 = 64 << 20;

/// What the shape cache may hold, in bytes (templates and their audit basis).
const SHAPE_CACHE_BYTES: u64 = 32 << 20;

/// What a cached rewrite holds besides its key: the forwarded text (twice, for the rest of the
/// result) and its audit basis, or a refusal's message.
fn gate_result_bytes(result: &GateResult) -> u64 {
    match &**result {
        Ok(checked) => {
            2 * checked.sql.len() as u64 + checked.basis.as_deref().map_or(0, json_heap_bytes) + 512
        }
        Err(_) => 256,
    }
}

/// About what `value` holds on the heap: each string's bytes, each array's slots, and each map
/// entry's key and node (a BTreeMap entry, its key's `String` and the allocator's headers).
/// The audit basis of a rewrite is most of its cached size: without it in the weight, 64 MB of
/// weighed entries took 135 MB (bench/memory.sh).
fn json_heap_bytes(value: &serde_json::Value) -> u64 {
    use serde_json::Value;
    const ALLOCATION: u64 = 16;
    const SLOT: u64 = std::mem::size_of::<Value>() as u64;
    const MAP_ENTRY: u64 = 24 + SLOT + 32;
    match value {
        Value::Null | Value::Bool(_) | Value::Number(_) => 0,
        Value::String(s) => s.capacity() as u64 + ALLOCATION,
        Value::Array(items) => {
            items.capacity() as u64 * SLOT
                + ALLOCATION
                + items.iter().map(json_heap_bytes).sum::<u64>()
        }
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| MAP_ENTRY + k.capacity() as u64 + ALLOCATION + json_heap_bytes(v))
            .sum(),
    }
}

/// Runs a cold rewrite (Cedar derivation, parsing, PostgreSQL's parser) without stalling the
/// other sessions on this async worker: on the multi-threaded runtime the worker's tasks move
/// to another thread while it runs (`block_in_place`).
fn off_async_workers<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

pub struct Enforcer {
    catalog: RwLock<Arc<CatalogView>>,
    /// The catalog's generation, readable without the lock (set after each swap).
    catalog_generation: AtomicU64,
    pub policies: Arc<PolicyState>,
    filters: DerivationCache,
    rules: quick_cache::sync::Cache<RuleKey, Arc<TablePolicy>>,
    /// Keyed by (policy generation, catalog generation): what a rewrite depends on.
    rewrites: RewriteCache<(u64, u64), GateResult>,
    /// Rewrites by statement shape, keyed the same way: a statement that differs from one
    /// rewritten before only in constants is filled in, not rewritten.
    shapes: ShapeCache<(u64, u64)>,
}

impl Enforcer {
    pub fn new(snapshot: Snapshot, policies: Arc<PolicyState>) -> Self {
        Enforcer {
            catalog: RwLock::new(Arc::new(CatalogView::new(snapshot, 0))),
            catalog_generation: AtomicU64::new(0),
            policies,
            filters: DerivationCache::new(10_000),
            rules: quick_cache::sync::Cache::new(10_000),
            rewrites: RewriteCache::new(REWRITE_CACHE_BYTES, gate_result_bytes),
            shapes: ShapeCache::new(SHAPE_CACHE_BYTES),
        }
    }

    /// The catalog statements are resolved against now.
    pub fn catalog(&self) -> Arc<CatalogView> {
        self.catalog.read().expect("catalog lock").clone()
    }

    /// Replaces the catalog with a fresh snapshot (relations created or altered since become
    /// known); rules and rewrites made against the old one are not used again.
    pub fn refresh_catalog(&self, snapshot: Snapshot) {
        let mut current = self.catalog.write().expect("catalog lock");
        let view = CatalogView::new(snapshot, current.generation + 1);
        self.rules.clear();
        self.catalog_generation
            .store(view.generation, Ordering::Release);
        *current = Arc::new(view);
    }

    /// Changes whenever the policy version or the catalog does: a prepared statement rewritten
    /// under an older generation is rewritten again before its next use.
    pub fn generation(&self) -> u64 {
        self.policies.generation() + self.catalog_generation.load(Ordering::Acquire)
    }

    /// The rewrite of `sql` for `principal` under the active policy version, with names
    /// resolved by `search_path` (`None`: the login's, where sessions start).
    pub fn rewrite(
        &self,
        principal: &Principal,
        search_path: Option<&SessionPath>,
        sql: &str,
        protocol: Protocol,
    ) -> GateResult {
        // Generations before bundle and catalog: what a result is computed from is never older
        // than the key it is cached under.
        let key = (
            self.policies.generation(),
            self.catalog_generation.load(Ordering::Acquire),
        );
        let scope = match search_path {
            None => std::borrow::Cow::Borrowed(principal.scope.as_str()),
            Some(path) => std::borrow::Cow::Owned(format!("{}\0{}", principal.scope, path.key)),
        };
        let hit = self.rewrites.get(&key, &scope, protocol, sql);
        let metrics = crate::metrics::metrics();
        if let Some(hit) = hit {
            metrics.rewrite_hit.inc();
            return hit;
        }
        // The same statement with other constants may have been rewritten before.
        let lifted = rewriter::lift(sql);
        if let Some(lifted) = &lifted {
            if let Some(filled) = self.shapes.get(&key, &scope, protocol, lifted) {
                metrics.shape_hit.inc();
                return Arc::new(Ok(filled));
            }
            metrics.shape_miss.inc();
        }
        metrics.rewrite_miss.inc();
        let bundle = self.policies.current();
        let view = self.catalog();
        let path = search_path.map(|p| &p.schemas[..]);
        let checked = |sql: &str| {
            self.rewrite_with(&view, &bundle, principal, path, sql, protocol)
                .map(|r| Checked {
                    shape: shape(&view, &r.reads),
                    basis: Some(Arc::new(basis(&view, &bundle, &r.reads))),
                    sql: r.sql,
                    statements: r.statements,
                    prepared: r.prepared,
                    search_path_changes: r.search_path_changes,
                })
        };
        let result = Arc::new(off_async_workers(|| {
            let result = checked(sql);
            if let (Ok(c), Some(lifted)) = (&result, &lifted) {
                if !self.shapes.known(&key, &scope, protocol, lifted) {
                    self.shapes
                        .learn(&key, &scope, protocol, lifted, c, |s| checked(s).ok());
                }
            }
            result
        }));
        self.rewrites
            .insert(&key, &scope, protocol, sql, result.clone());
        result
    }

    /// Rewrites without the cache (also for `portcullis explain` and `audit replay`), with
    /// names resolved by `search_path` (`None`: the login's).
    pub fn rewrite_uncached(
        &self,
        bundle: &PolicyBundle,
        principal: &Principal,
        search_path: Option<&[String]>,
        sql: &str,
        protocol: Protocol,
    ) -> Result<Rewritten, Refusal> {
        self.rewrite_with(
            &self.catalog(),
            bundle,
            principal,
            search_path,
            sql,
            protocol,
        )
    }

    fn rewrite_with(
        &self,
        view: &CatalogView,
        bundle: &PolicyBundle,
        principal: &Principal,
        search_path: Option<&[String]>,
        sql: &str,
        protocol: Protocol,
    ) -> Result<Rewritten, Refusal> {
        let session = SessionPolicies {
            enforcer: self,
            bundle,
            principal,
            catalog_generation: view.generation,
        };
        let ctx = rewriter::Context {
            catalog: &view.catalog,
            search_path: search_path.unwrap_or(view.catalog.search_path()),
            policies: &session,
            agent: principal.agent.id().unescaped(),
        };
        rewriter::rewrite(sql, protocol, &ctx)
    }
}

/// What a rewrite rested on, for its audit record: the policy version, and for each relation
/// read its row filter (as SQL), its masked and hidden columns and the determining policies.
pub fn basis(
    view: &CatalogView,
    bundle: &PolicyBundle,
    reads: &[rewriter::Read],
) -> serde_json::Value {
    use policies::ColumnRule;
    let relations: Vec<serde_json::Value> = reads
        .iter()
        .map(|read| {
            let relation = read
                .entity_type
                .split_once("::")
                .and_then(|(schema, name)| view.catalog.get(schema, name));
            let filter = relation
                .and_then(|rel| rewriter::render_filter(&read.policy.filter, rel).ok())
                .unwrap_or_default();
            let mut masked = serde_json::Map::new();
            let mut hidden = Vec::new();
            if let Some(columns) = &read.policy.columns {
                for (column, rule) in columns {
                    match rule {
                        ColumnRule::Visible => {}
                        ColumnRule::Denied => hidden.push(column.clone()),
                        ColumnRule::Masked { mask, unless } => {
                            let unless = relation
                                .and_then(|rel| rewriter::render_filter(unless, rel).ok())
                                .unwrap_or_default();
                            masked.insert(
                                column.clone(),
                                serde_json::json!({
                                    "mask": format!("{mask:?}").to_ascii_lowercase(),
                                    "unless": unless,
                                }),
                            );
                        }
                    }
                }
            }
            serde_json::json!({
                "relation": read.entity_type,
                "filter": filter,
                "masked": masked,
                "hidden": hidden,
                "policies": read.policy.determining,
            })
        })
        .collect();
    serde_json::json!({
        "policy_version": bundle.version.to_string(),
        "catalog": view.hash,
        "relations": relations,
    })
}

/// What a rewrite exposes of each relation it reads: the columns its fences pass (masked or
/// not: masks keep the type), with their types. Equal shapes mean equal result columns.
fn shape(view: &CatalogView, reads: &[rewriter::Read]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for read in reads {
        read.entity_type.hash(&mut h);
        let Some((schema, name)) = read.entity_type.split_once("::") else {
            continue;
        };
        if let Some(rel) = view.catalog.get(schema, name) {
            for col in &rel.columns {
                if read.policy.column(&col.name) != policies::ColumnRule::Denied {
                    col.name.hash(&mut h);
                    col.sql_type.hash(&mut h);
                }
            }
        }
    }
    h.finish()
}

/// The rewriter's view of a catalog relation.
fn relation(r: RelationInfo) -> Relation {
    Relation {
        kind: match r.kind {
            'p' => RelKind::PartitionedTable,
            'v' => RelKind::View,
            'm' => RelKind::MaterializedView,
            'f' => RelKind::Foreign,
            _ => RelKind::Table,
        },
        schema: r.schema,
        name: r.name,
        has_children: r.has_children,
        columns: r
            .columns
            .into_iter()
            .map(|c| Column {
                name: c.name,
                sql_type: c.sql_type,
                type_name: c.type_name,
                category: c.category,
                generated: c.generated,
                default: c.default,
            })
            .collect(),
    }
}

/// The rules of one session's principal under one policy version.
struct SessionPolicies<'a> {
    enforcer: &'a Enforcer,
    bundle: &'a PolicyBundle,
    principal: &'a Principal,
    /// Rules depend on the relation's columns as the catalog has them.
    catalog_generation: u64,
}

impl SessionPolicies<'_> {
    /// The row filter for `action` on `entity_type` (cached per version, agent and context).
    fn row_filter(
        &self,
        action: &str,
        entity_type: &str,
    ) -> Result<Arc<policies::Derived>, Refusal> {
        let derived = self
            .enforcer
            .filters
            .get_or_derive(
                self.bundle,
                &self.principal.agent,
                action,
                entity_type,
                &self.principal.context_key,
                || self.principal.context(),
            )
            .map_err(derive_error(entity_type))?;
        for (id, why) in &derived.untranslated {
            warn!(policy = %id, "policy for {entity_type} not translated: {why}");
        }
        Ok(derived)
    }

    /// Refuses relations the policy set's schema does not declare, and sessions acting for a
    /// human the active policy set does not know (conditions on an unknown entity error, and
    /// an erroring forbid does not apply: fail closed instead).
    fn covered(&self, relation: &Relation, entity_type: &str) -> Result<(), Refusal> {
        if let Some(user) = &self.principal.on_behalf_of {
            if self.bundle.entities.get(user).is_none() {
                return Err(Refusal::Forbidden(format!(
                    "this session acts for {user}, whom the active policy set does not know"
                )));
            }
        }
        if self
            .bundle
            .schema
            .entity_types()
            .any(|t| t.to_string() == entity_type)
        {
            return Ok(());
        }
        Err(Refusal::Forbidden(format!(
            "{} is not covered by the policy set (its schema has no entity type {entity_type})",
            relation.qualified()
        )))
    }
}

fn derive_error(entity_type: &str) -> impl Fn(policies::DeriveError) -> Refusal + '_ {
    move |e| {
        warn!("cannot derive the policy for {entity_type}: {e}");
        Refusal::Forbidden(format!(
            "the policy for {entity_type} could not be evaluated"
        ))
    }
}

impl Policies for SessionPolicies<'_> {
    fn write(&self, relation: &Relation, action: WriteAction) -> Result<Arc<WritePolicy>, Refusal> {
        let entity_type = relation.entity_type();
        self.covered(relation, &entity_type)?;
        let derived = self.row_filter(action.as_str(), &entity_type)?;
        Ok(Arc::new(WritePolicy {
            filter: derived.filter.clone(),
            determining: derived.determining.clone(),
            checks: derived.checks.clone(),
        }))
    }

    fn read(&self, relation: &Relation) -> Result<Arc<TablePolicy>, Refusal> {
        let entity_type = relation.entity_type();
        let key: RuleKey = (
            self.bundle.version.clone(),
            self.catalog_generation,
            self.principal.agent.to_string(),
            self.principal.context_key.clone(),
            entity_type.clone(),
        );
        let metrics = crate::metrics::metrics();
        if let Some(hit) = self.enforcer.rules.get(&key) {
            metrics.derivation_hit.inc();
            return Ok(hit);
        }
        metrics.derivation_miss.inc();
        self.covered(relation, &entity_type)?;
        let derived = self.row_filter("select", &entity_type)?;
        let columns: Vec<&str> = relation.columns.iter().map(|c| c.name.as_str()).collect();
        let rules = derive_columns(
            self.bundle,
            &self.principal.agent,
            &entity_type,
            &columns,
            &self.principal.context(),
        )
        .map_err(derive_error(&entity_type))?;
        for (id, why) in rules.iter().flat_map(|r| r.untranslated.iter()) {
            warn!(policy = %id, "policy for {entity_type} not translated: {why}");
        }
        let mut determining = derived.determining.clone();
        if let Some(r) = &rules {
            determining.extend(r.determining.iter().cloned());
        }
        let policy = Arc::new(TablePolicy {
            filter: derived.filter.clone(),
            columns: rules.map(|r| r.columns),
            determining,
            row_checks: derived.checks.clone(),
        });
        self.enforcer.rules.insert(key, policy.clone());
        Ok(policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_is_the_entity_cedar_would_parse() {
        for id in ["bench", "a\"b\\c", "ünï cödé", "with space", "Agent::\"x\""] {
            let p = Principal::new(id, Some(id)).unwrap();
            let quoted = serde_json::Value::String(id.to_string());
            assert_eq!(
                p.agent,
                EntityUid::from_str(&format!("Agent::{quoted}")).unwrap()
            );
            assert_eq!(
                p.on_behalf_of,
                Some(EntityUid::from_str(&format!("User::{quoted}")).unwrap())
            );
            assert_eq!(p.agent.id().unescaped(), id);
        }
    }
}
