//! `portcullis explain`: what Portcullis would do with one statement for one agent (optionally
//! acting for a human), without running it. Reads the upstream catalog and the policy set as
//! `serve` does, then prints the decision, the determining policies, each relation's row filter
//! and column rules, and the SQL that would be forwarded.

use std::fmt::Write;
use std::sync::Arc;

use anyhow::Context;
use policies::ColumnRule;
use rewriter::Protocol;

use crate::config::Resolved;
use crate::enforce::{Enforcer, Principal};
use crate::policy_state::PolicyState;

/// Prints the explanation; returns whether the statement would be refused.
pub async fn run(
    resolved: Resolved,
    agent: &str,
    on_behalf_of: Option<&str>,
    sql: &str,
) -> anyhow::Result<bool> {
    let policies = resolved
        .policies
        .context("the configuration has no [policies]: nothing would be enforced")?;
    if !resolved.agents.iter().any(|(id, _)| id == agent) {
        eprintln!("warning: agent {agent:?} is not in the configuration's [[agents]]; it could not log in");
    }
    let dir = policies.dir.clone();
    let state = tokio::task::spawn_blocking(move || PolicyState::load(dir, None))
        .await?
        .context("loading the policy set")?;
    let snapshot = connectors::postgres::catalog::snapshot(&resolved.upstream)
        .await
        .context("reading the upstream catalog")?;
    let enforcer = Enforcer::new(snapshot, Arc::new(state));
    let principal = Principal::new(agent, on_behalf_of).map_err(anyhow::Error::msg)?;
    let bundle = enforcer.policies.current();
    let result = enforcer.rewrite_uncached(&bundle, &principal, None, sql, Protocol::Simple);
    print!(
        "{}",
        report(&enforcer, &principal, &bundle.version.to_string(), &result)
    );
    Ok(result.is_err())
}

fn report(
    enforcer: &Enforcer,
    principal: &Principal,
    version: &str,
    result: &Result<rewriter::Rewritten, rewriter::Refusal>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "policy version: {version}");
    let _ = write!(out, "principal: {}", principal.agent);
    if let Some(user) = &principal.on_behalf_of {
        let _ = write!(out, " acting for {user}");
    }
    out.push('\n');
    let rewritten = match result {
        Err(refusal) => {
            let _ = writeln!(out, "decision: refused ({}): {refusal}", refusal.sqlstate());
            return out;
        }
        Ok(r) => r,
    };
    let _ = writeln!(out, "decision: allowed, rewritten");
    let mut seen = Vec::new();
    for read in &rewritten.reads {
        if seen.contains(&read.entity_type) {
            continue;
        }
        seen.push(read.entity_type.clone());
        let _ = writeln!(out, "relation {}:", read.entity_type);
        let (schema, name) = read
            .entity_type
            .split_once("::")
            .unwrap_or(("", &read.entity_type));
        let filter = enforcer
            .catalog()
            .catalog
            .get(schema, name)
            .and_then(|rel| rewriter::render_filter(&read.policy.filter, rel).ok())
            .unwrap_or_else(|| format!("{:?}", read.policy.filter));
        let _ = writeln!(out, "  rows: {filter}");
        match &read.policy.columns {
            None => {
                let _ = writeln!(
                    out,
                    "  columns: all visible (no column rules for this table)"
                );
            }
            Some(columns) => {
                let shown: Vec<String> = columns
                    .iter()
                    .filter(|(_, rule)| **rule != ColumnRule::Visible)
                    .map(|(c, rule)| format!("{c} {rule}"))
                    .collect();
                let _ = writeln!(
                    out,
                    "  columns: {}",
                    if shown.is_empty() {
                        "all visible".to_string()
                    } else {
                        format!("others visible; {}", shown.join(", "))
                    }
                );
            }
        }
        let _ = writeln!(
            out,
            "  determining policies: {}",
            if read.policy.determining.is_empty() {
                "none (default deny)".to_string()
            } else {
                read.policy.determining.join(", ")
            }
        );
    }
    let _ = writeln!(out, "rewritten SQL:\n{}", rewritten.sql);
    out
}
