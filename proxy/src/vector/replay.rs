//! `portcullis audit replay` of a vector decision record: the policy version the record names
//! decides again, for the same agent and human, what each collection's basis was (the injected
//! Qdrant filter, hidden and masked fields, vectors, determining policies) and, for a refusal
//! by policy, that it still refuses with the same reason. The request itself is not re-run
//! (its vectors are recorded by digest); what policy made of it is.

use std::sync::Arc;

use anyhow::Context;
use policies::PolicyBundle;
use serde_json::Value;

use super::auth::Caller;
use super::policy::{Action, CollectionPolicy};
use super::record::relation_basis;
use crate::enforce::Principal;

/// The differences between `record` and what `bundle` decides now (empty: it matches).
pub fn replay(record: &Value, bundle: Arc<PolicyBundle>) -> anyhow::Result<Vec<String>> {
    let agent = record["agent"].as_str().context("no agent")?;
    let on_behalf_of = record["on_behalf_of"].as_str();
    let caller = Caller {
        agent: agent.to_string(),
        on_behalf_of: on_behalf_of.map(str::to_string),
        principal: Principal::new(agent, on_behalf_of).map_err(anyhow::Error::msg)?,
    };
    let mut differences = Vec::new();
    let relations = record["basis"]["relations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for recorded in &relations {
        let collection = recorded["relation"]
            .as_str()
            .and_then(|r| r.strip_prefix("qdrant::"))
            .context("a relation that is not a collection")?;
        let action = action(recorded["action"].as_str().unwrap_or(""))?;
        let policy = CollectionPolicy::derive(bundle.clone(), &caller, collection);
        let now = relation_basis(&policy, action);
        if &now != recorded {
            differences.push(format!(
                "{collection} ({})\n  recorded: {recorded}\n  now:      {now}",
                action.name()
            ));
        }
    }
    if record["decision"] == "deny" {
        let message = record["message"].as_str().unwrap_or("");
        if message.starts_with("no policy permits") {
            // Which action: the one the refusal names.
            let collection = collection_of(record["statement"].as_str().unwrap_or(""))
                .context("the statement names no collection")?;
            let policy = CollectionPolicy::derive(bundle.clone(), &caller, collection);
            let still = [Action::Search, Action::Upsert, Action::Delete]
                .into_iter()
                .filter_map(|a| policy.rule(a).err())
                .map(|e| e.to_string())
                .chain(policy.require_manage().err().map(|e| e.to_string()))
                .chain(policy.require_visible().err().map(|e| e.to_string()))
                .any(|m| m == message);
            if !still {
                differences.push(format!(
                    "refusal\n  recorded: {message}\n  now:      not refused so"
                ));
            }
        }
    }
    Ok(differences)
}

fn action(name: &str) -> anyhow::Result<Action> {
    Ok(match name {
        "search" => Action::Search,
        "upsert" => Action::Upsert,
        "delete" => Action::Delete,
        other => anyhow::bail!("an unknown vector action {other:?}"),
    })
}

/// `METHOD /collections/<c>/…` → `c`.
fn collection_of(statement: &str) -> Option<&str> {
    statement
        .split_once(' ')?
        .1
        .strip_prefix("/collections/")?
        .split('/')
        .next()
}
