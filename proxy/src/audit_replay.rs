//! `portcullis audit replay`: takes a decision record and decides its statement again, under
//! the policy version and the catalog snapshot the record names (loaded by hash, so no live
//! database is needed), for the same agent, human, search_path and protocol; then says whether
//! the decision, the rewritten SQL and its basis are the same.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rewriter::Protocol;
use serde_json::Value;

use crate::audit_log::{CATALOGS, POLICY_VERSIONS};
use crate::enforce::{basis, Enforcer, Principal};
use crate::policy_state::PolicyState;

/// Replays decision `id` of the log in `dir`; prints the verdict; returns whether it matched.
/// Policy versions are read from `store` (the config's `policies.store`, else the log's own).
pub fn replay(dir: &Path, id: &str, store: Option<&Path>) -> anyhow::Result<bool> {
    let (_, entry) = audit::find(dir, id)?
        .ok_or_else(|| anyhow::anyhow!("no entry with id {id} in {}", dir.display()))?;
    let record: Value = serde_json::from_slice(&entry)?;
    anyhow::ensure!(
        record["kind"] == "decision",
        "{id} is not a decision record"
    );
    let text = |key: &str| record[key].as_str();
    let version = record
        .pointer("/basis/policy_version")
        .or_else(|| record.get("policy_version"))
        .and_then(Value::as_str)
        .context("the record names no policy version (was policy enforced?)")?;
    let store = store.map_or_else(|| dir.join(POLICY_VERSIONS), Path::to_path_buf);
    if record["protocol"] == "qdrant" {
        return replay_vector(id, &record, version, &store);
    }
    let catalog = record
        .pointer("/basis/catalog")
        .or_else(|| record.get("catalog"))
        .and_then(Value::as_str)
        .context("the record names no catalog snapshot")?;

    let version = policies::Version::parse(version).context("a malformed policy version")?;
    let bundle = policies::VersionStore::open(&store)?
        .load(&version)
        .with_context(|| format!("policy version {version} from {}", store.display()))?;
    let path = dir.join(CATALOGS).join(format!("{catalog}.json"));
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let found = audit::sha256_hex(&bytes);
    anyhow::ensure!(
        found == catalog,
        "{} does not hold the catalog snapshot it is named for (its hash is {found})",
        path.display()
    );
    let snapshot = serde_json::from_slice(&bytes).context("a malformed catalog snapshot")?;

    let enforcer = Enforcer::new(snapshot, Arc::new(PolicyState::fixed(bundle)));
    let bundle = enforcer.policies.current();
    let agent = text("agent").context("no agent")?;
    let principal = Principal::new(agent, text("on_behalf_of")).map_err(anyhow::Error::msg)?;
    let protocol = match text("protocol") {
        Some("extended") => Protocol::Extended,
        _ => Protocol::Simple,
    };
    let search_path: Option<Vec<String>> = record["search_path"].as_array().map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    });
    let statement = text("statement").context("no statement")?;
    let result = enforcer.rewrite_uncached(
        &bundle,
        &principal,
        search_path.as_deref(),
        statement,
        protocol,
    );

    let mut differences = Vec::new();
    match (&result, text("decision")) {
        (Ok(rewritten), Some("rewrite")) => {
            if Some(rewritten.sql.as_str()) != text("rewritten") {
                differences.push(format!(
                    "rewritten SQL\n  recorded: {}\n  now:      {}",
                    text("rewritten").unwrap_or("-"),
                    rewritten.sql
                ));
            }
            let now = basis(&enforcer.catalog(), &bundle, &rewritten.reads);
            if now != record["basis"] {
                differences.push(format!(
                    "basis\n  recorded: {}\n  now:      {now}",
                    record["basis"]
                ));
            }
        }
        (Err(refusal), Some("deny")) => {
            if Some(refusal.sqlstate()) != text("sqlstate")
                || Some(refusal.to_string().as_str()) != text("message")
            {
                differences.push(format!(
                    "refusal\n  recorded: {} {}\n  now:      {} {refusal}",
                    text("sqlstate").unwrap_or("-"),
                    text("message").unwrap_or("-"),
                    refusal.sqlstate()
                ));
            }
        }
        (now, recorded) => differences.push(format!(
            "decision\n  recorded: {}\n  now:      {}",
            recorded.unwrap_or("-"),
            match now {
                Ok(_) => "rewrite".to_string(),
                Err(r) => format!("deny {} {r}", r.sqlstate()),
            }
        )),
    }
    println!(
        "{id}: policy version {}, catalog {}",
        version.short(),
        &catalog[..12.min(catalog.len())]
    );
    if differences.is_empty() {
        println!("match");
        return Ok(true);
    }
    for d in &differences {
        println!("differs: {d}");
    }
    Ok(false)
}

/// A record of the Qdrant API: its basis decided again under the version it names.
fn replay_vector(id: &str, record: &Value, version: &str, store: &Path) -> anyhow::Result<bool> {
    let version = policies::Version::parse(version).context("a malformed policy version")?;
    let bundle = policies::VersionStore::open(store)?
        .load(&version)
        .with_context(|| format!("policy version {version} from {}", store.display()))?;
    let differences = crate::vector::replay::replay(record, Arc::new(bundle))?;
    println!("{id}: policy version {} (Qdrant API)", version.short());
    if differences.is_empty() {
        println!("match");
        return Ok(true);
    }
    for d in &differences {
        println!("differs: {d}");
    }
    Ok(false)
}
