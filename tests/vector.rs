//! The vector shim end to end: the real `portcullis` binary serving Qdrant's REST API over the
//! embedded engine, under the RAG example policy set (`policies/examples/rag`), with the audit
//! log on. Agents: `ingestor` and `ingestor-t2` write tenant 1 and tenant 2 documents;
//! `rag-bot` (tenant 1, groups support and billing), `rag-bot-t2` (tenant 2) and
//! `compliance-bot` (tenant 1, legal, sees restricted documents and internal notes) read.
//!
//! Each adversarial request asserts the exact safe outcome: the points policy admits, or the
//! refusal, never a hidden point, its count, or a hidden field's value.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use common::{copy_files, repo_root, Env, Options};
use serde_json::{json, Value};

const AGENTS: &[&str] = &[
    "rag-bot",
    "rag-bot-t2",
    "compliance-bot",
    "ingestor",
    "ingestor-t2",
];

fn secret(agent: &str) -> String {
    format!("{agent}-secret")
}

struct Shim {
    env: Env,
    port: u16,
    log: PathBuf,
    /// The Portcullis standing in for a remote Qdrant, if any.
    _upstream: Option<Box<Shim>>,
    _work: tempfile::TempDir,
}

/// Where the shim under test keeps its points.
enum Store {
    Embedded,
    /// A second Portcullis (embedded, its own permissive policy for the key the first one
    /// holds) standing in for a remote Qdrant: the same REST API.
    Remote,
    /// A real Qdrant (`QDRANT_URL`, with `QDRANT_API_KEY` if set).
    Url(String),
}

/// The key the shim under test holds for the remote (in its environment, as an operator would
/// put it).
const REMOTE_KEY_ENV: &str = "PORTCULLIS_TEST_QDRANT_KEY";

fn start(store: Store) -> Shim {
    start_with(store, "", "")
}

/// `vector_extra` follows the `[vector]` keys; `top` is more top-level config (tables,
/// agents); `entities` more entities.json entries.
fn start_with(store: Store, vector_extra: &str, top: &str) -> Shim {
    start_full(store, vector_extra, top, &[])
}

fn start_full(store: Store, vector_extra: &str, top: &str, entities: &[Value]) -> Shim {
    let work = tempfile::tempdir().unwrap();
    let set = work.path().join("policies");
    std::fs::create_dir(&set).unwrap();
    copy_files("policies/examples/rag", &set);
    if !entities.is_empty() {
        let path = set.join("entities.json");
        let mut list: Vec<Value> =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        list.extend(entities.iter().cloned());
        std::fs::write(&path, serde_json::to_string(&list).unwrap()).unwrap();
    }
    let key = work.path().join("audit.key");
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["audit", "keygen", "--node-id", "vec-node", "--out"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = work.path().join("audit");
    let port = common::free_port();
    let agents: String = AGENTS
        .iter()
        .map(|a| format!("[[agents]]\nid = {a:?}\nsecret = {:?}\n\n", secret(a)))
        .collect();
    let (backend, upstream) = match store {
        Store::Embedded => (
            format!(
                "store = {:?}",
                work.path().join("vectors").display().to_string()
            ),
            None,
        ),
        Store::Remote => {
            let upstream = start_upstream();
            std::env::set_var(REMOTE_KEY_ENV, "upstream:upstream-secret");
            (
                format!(
                    "remote = \"http://127.0.0.1:{}\"\nremote_api_key_env = {REMOTE_KEY_ENV:?}",
                    upstream.port
                ),
                Some(Box::new(upstream)),
            )
        }
        Store::Url(url) => {
            let key = if std::env::var("QDRANT_API_KEY").is_ok() {
                "\nremote_api_key_env = \"QDRANT_API_KEY\""
            } else {
                ""
            };
            (format!("remote = {url:?}{key}"), None)
        }
    };
    let env = Env::start_with(Options {
        postgres_extra: format!(
            "[policies]\ndir = {:?}\n\n[audit]\ndir = {:?}\nkey_file = {:?}\nnode_id = \"vec-node\"\n\n\
             [vector]\nlisten = \"127.0.0.1:{port}\"\n{backend}\n{vector_extra}\n\n{top}\n\n{agents}",
            set.display().to_string(),
            log.display().to_string(),
            key.display().to_string(),
        ),
    });
    Shim {
        env,
        port,
        log,
        _upstream: upstream,
        _work: work,
    }
}

/// The Portcullis that stands in for a remote Qdrant: embedded store, one agent (`upstream`)
/// that may do everything.
fn start_upstream() -> Shim {
    let work = tempfile::tempdir().unwrap();
    let set = work.path().join("policies");
    std::fs::create_dir(&set).unwrap();
    std::fs::copy(
        repo_root().join("policies/examples/rag/schema.cedarschema"),
        set.join("schema.cedarschema"),
    )
    .unwrap();
    std::fs::write(
        set.join("all.cedar"),
        "@id(\"upstream-all\")\npermit (principal == Agent::\"upstream\", action, resource);\n",
    )
    .unwrap();
    std::fs::write(
        set.join("entities.json"),
        r#"[{"uid": {"type": "Agent", "id": "upstream"}, "attrs": {"tenant_id": 0, "groups": []}, "parents": []}]"#,
    )
    .unwrap();
    let port = common::free_port();
    let env = Env::start_with(Options {
        postgres_extra: format!(
            "[policies]\ndir = {:?}\n\n[vector]\nlisten = \"127.0.0.1:{port}\"\nstore = {:?}\n\n\
             [[agents]]\nid = \"upstream\"\nsecret = \"upstream-secret\"\n\n",
            set.display().to_string(),
            work.path().join("vectors").display().to_string(),
        ),
    });
    Shim {
        env,
        port,
        log: work.path().join("no-audit"),
        _upstream: None,
        _work: work,
    }
}

impl Shim {
    fn call(&self, agent: &str, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let key = format!("{agent}:{}", secret(agent));
        common::http_json(self.port, method, path, Some(&key), body.as_ref())
    }

    /// A call that must succeed: its `result`.
    fn ok(&self, agent: &str, method: &str, path: &str, body: Value) -> Value {
        let (status, reply) = self.call(agent, method, path, Some(body));
        assert_eq!(status, 200, "{agent} {method} {path}: {reply}");
        assert_eq!(reply["status"], "ok", "{reply}");
        reply["result"].clone()
    }

    /// A call that policy must refuse with 403; the error message.
    fn refused(&self, agent: &str, method: &str, path: &str, body: Value) -> String {
        let (status, reply) = self.call(agent, method, path, Some(body.clone()));
        assert_eq!(status, 403, "{agent} {method} {path} {body}: {reply}");
        reply["status"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn entries(&self) -> Vec<Value> {
        std::fs::read_to_string(self.log.join("entries"))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn ids(points: &Value) -> BTreeSet<u64> {
    points
        .as_array()
        .unwrap_or_else(|| panic!("not a list of points: {points}"))
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect()
}

fn set(v: &[u64]) -> BTreeSet<u64> {
    v.iter().copied().collect()
}

const DIM: usize = 4;

fn vector(i: u64) -> Value {
    json!([1.0, (i as f64) / 10.0, 0.5, -((i % 3) as f64)])
}

/// Documents: (id, tenant, groups, classification).
const DOCS: &[(u64, i64, &[&str], &str)] = &[
    (1, 1, &["support"], "internal"),
    (2, 1, &["billing"], "public"),
    (3, 1, &["legal"], "internal"),
    (4, 1, &["support", "legal"], "restricted"),
    (5, 1, &["hr"], "internal"),
];
const DOCS_T2: &[(u64, i64, &[&str], &str)] = &[
    (11, 2, &["support"], "internal"),
    (12, 2, &["support"], "public"),
];

fn point(id: u64, tenant: i64, groups: &[&str], class: &str) -> Value {
    json!({
        "id": id,
        "vector": vector(id),
        "payload": {
            "tenant_id": tenant,
            "acl_groups": groups,
            "classification": class,
            "title": format!("doc {id}"),
            "body": format!("text of {id}"),
            "internal_notes": format!("secret note {id}"),
        }
    })
}

/// rag-bot may see 1 and 2 (its groups, not restricted); compliance-bot 3 and 4 (legal) and 1
/// (support); rag-bot-t2 sees 11 and 12.
fn load(s: &Shim) {
    for c in ["support_docs", "notes"] {
        s.call("ingestor", "DELETE", &format!("/collections/{c}"), None);
    }
    s.ok(
        "ingestor",
        "PUT",
        "/collections/support_docs",
        json!({ "vectors": { "size": DIM, "distance": "Cosine" } }),
    );
    let points: Vec<Value> = DOCS
        .iter()
        .map(|(i, t, g, c)| point(*i, *t, g, c))
        .collect();
    s.ok(
        "ingestor",
        "PUT",
        "/collections/support_docs/points?wait=true",
        json!({ "points": points }),
    );
    let points: Vec<Value> = DOCS_T2
        .iter()
        .map(|(i, t, g, c)| point(*i, *t, g, c))
        .collect();
    s.ok(
        "ingestor-t2",
        "PUT",
        "/collections/support_docs/points?wait=true",
        json!({ "points": points }),
    );
}

#[test]
fn reads_return_only_what_policy_admits_and_never_a_hidden_field() {
    reads(&start(Store::Embedded));
}

#[test]
fn reads_through_a_remote_qdrant() {
    reads(&start(Store::Remote));
}

#[test]
fn writes_are_checked_against_the_write_policy_and_cannot_reach_hidden_points() {
    writes(&start(Store::Embedded));
}

#[test]
fn writes_through_a_remote_qdrant() {
    writes(&start(Store::Remote));
}

/// The same against a real Qdrant when `QDRANT_URL` is set (a scratch one: the test drops
/// and recreates its collections). None can be installed on the CI machines.
#[test]
fn against_a_real_qdrant_when_qdrant_url_is_set() {
    let Ok(url) = std::env::var("QDRANT_URL") else {
        eprintln!("QDRANT_URL is not set: no real Qdrant to test against");
        return;
    };
    reads(&start(Store::Url(url.clone())));
    writes(&start(Store::Url(url)));
}

fn reads(s: &Shim) {
    load(s);
    let q = "/collections/support_docs/points/query";
    // A `should` that matches everything still meets the policy.
    let everything = json!({"should": [{"is_empty": {"key": "nothing"}}, {"key": "tenant_id", "match": {"value": 2}}]});
    let r = s.ok(
        "rag-bot",
        "POST",
        q,
        json!({"query": vector(1), "filter": everything, "limit": 100, "with_payload": true}),
    );
    assert_eq!(ids(&r["points"]), set(&[1, 2]));
    // Fields: no internal notes for rag-bot; compliance-bot gets them.
    for p in r["points"].as_array().unwrap() {
        assert!(p["payload"].get("internal_notes").is_none(), "{p}");
        assert_eq!(p["payload"]["title"], format!("doc {}", p["id"]));
    }
    let r = s.ok(
        "compliance-bot",
        "POST",
        q,
        json!({"query": vector(1), "limit": 100, "with_payload": true}),
    );
    assert_eq!(ids(&r["points"]), set(&[1, 3, 4]));
    assert!(r["points"][0]["payload"]["internal_notes"].is_string());
    let t2 = s.ok(
        "rag-bot-t2",
        "POST",
        q,
        json!({"query": vector(1), "limit": 100}),
    );
    assert_eq!(ids(&t2["points"]), set(&[11, 12]));

    // Prefetch without a filter, nested, fused: only visible points anywhere.
    let fused = json!({
        "prefetch": [
            {"query": vector(3), "limit": 100},
            {"prefetch": {"query": vector(4), "limit": 100}, "query": vector(5), "limit": 100},
        ],
        "query": {"fusion": "rrf"},
        "limit": 100,
    });
    assert_eq!(
        ids(&s.ok("rag-bot", "POST", q, fused)["points"]),
        set(&[1, 2])
    );
    // MMR over the visible points.
    let mmr = json!({"query": {"nearest": vector(2), "mmr": {"diversity": 0.5, "candidates_limit": 10}}, "limit": 10});
    assert_eq!(
        ids(&s.ok("rag-bot", "POST", q, mmr)["points"]),
        set(&[1, 2])
    );
    // Batch and legacy search.
    let batch = s.ok("rag-bot", "POST", "/collections/support_docs/points/query/batch",
        json!({"searches": [{"query": vector(1), "limit": 100}, {"query": vector(4), "limit": 100}]}));
    assert_eq!(ids(&batch[0]["points"]), set(&[1, 2]));
    assert_eq!(ids(&batch[1]["points"]), set(&[1, 2]));
    let legacy = s.ok(
        "rag-bot",
        "POST",
        "/collections/support_docs/points/search",
        json!({"vector": vector(1), "limit": 100, "with_payload": true}),
    );
    assert_eq!(ids(&legacy), set(&[1, 2]));

    // Retrieve and get by guessed ids: hidden and missing answer alike.
    let got = s.ok(
        "rag-bot",
        "POST",
        "/collections/support_docs/points",
        json!({"ids": [1, 2, 3, 4, 5, 11, 99], "with_payload": true}),
    );
    assert_eq!(ids(&got), set(&[1, 2]));
    assert!(got
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["payload"].get("internal_notes").is_none()));
    let (hidden, hidden_reply) =
        s.call("rag-bot", "GET", "/collections/support_docs/points/3", None);
    let (missing, missing_reply) = s.call(
        "rag-bot",
        "GET",
        "/collections/support_docs/points/99",
        None,
    );
    assert_eq!((hidden, missing), (404, 404));
    assert_eq!(
        hidden_reply["status"]["error"]
            .as_str()
            .unwrap()
            .replace('3', "N"),
        missing_reply["status"]["error"]
            .as_str()
            .unwrap()
            .replace("99", "N"),
    );
    assert_eq!(
        s.ok(
            "rag-bot",
            "GET",
            "/collections/support_docs/points/2",
            json!({})
        )["id"],
        2
    );

    // Vectors: only compliance-bot gets them (read_vector); rag-bot's points come without.
    let with = json!({"ids": [1], "with_vector": true});
    let bot = s.ok(
        "rag-bot",
        "POST",
        "/collections/support_docs/points",
        with.clone(),
    );
    assert!(bot[0].get("vector").is_none_or(Value::is_null), "{bot}");
    let c = s.ok(
        "compliance-bot",
        "POST",
        "/collections/support_docs/points",
        with,
    );
    assert!(c[0]["vector"].is_array(), "{c}");

    // Scroll and count see the same points; counts are exact and never include hidden ones.
    let scrolled = s.ok(
        "rag-bot",
        "POST",
        "/collections/support_docs/points/scroll",
        json!({"limit": 100}),
    );
    assert_eq!(ids(&scrolled["points"]), set(&[1, 2]));
    let c = s.ok(
        "rag-bot",
        "POST",
        "/collections/support_docs/points/count",
        json!({"exact": false}),
    );
    assert_eq!(c["count"], 2);
    let info = s.ok("rag-bot", "GET", "/collections/support_docs", json!({}));
    assert_eq!(info["points_count"], 2, "{info}");

    // Oracles and what names other points: refused.
    let m = s.refused("rag-bot", "POST", q, json!({"query": vector(1), "filter": {"must": [{"key": "internal_notes", "match": {"text": "secret"}}]}}));
    assert!(m.contains("internal_notes"), "{m}");
    s.refused("rag-bot", "POST", "/collections/support_docs/points/count", json!({"filter": {"must": [{"key": "internal_notes", "match": {"value": "secret note 3"}}]}}));
    s.refused(
        "rag-bot",
        "POST",
        "/collections/support_docs/points/scroll",
        json!({"order_by": "internal_notes", "limit": 10}),
    );
    s.refused(
        "rag-bot",
        "POST",
        "/collections/support_docs/points/scroll",
        json!({"order_by": {"key": "internal_notes"}, "limit": 10}),
    );
    s.refused("rag-bot", "POST", q, json!({"query": 3}));
    s.refused(
        "rag-bot",
        "POST",
        q,
        json!({"query": {"recommend": {"positive": [3]}}}),
    );
    s.refused(
        "rag-bot",
        "POST",
        q,
        json!({"query": {"discover": {"target": 3, "context": [{"positive": 4, "negative": 1}]}}}),
    );
    s.refused(
        "rag-bot",
        "POST",
        q,
        json!({"query": vector(1), "lookup_from": {"collection": "support_docs"}}),
    );
    s.refused(
        "rag-bot",
        "POST",
        q,
        json!({"prefetch": {"query": 4}, "query": {"fusion": "rrf"}}),
    );
    let (status, reply) = s.call(
        "rag-bot",
        "POST",
        "/collections/support_docs/facet",
        Some(json!({"key": "classification"})),
    );
    assert_eq!(status, 403, "{reply}");
    assert!(reply["status"]["error"]
        .as_str()
        .unwrap()
        .contains("/collections/support_docs/facet"));
    // No right to manage or write.
    s.refused(
        "rag-bot",
        "PUT",
        "/collections/other",
        json!({"vectors": {"size": 4, "distance": "Dot"}}),
    );
    s.refused("rag-bot", "DELETE", "/collections/support_docs", json!({}));
    s.refused(
        "rag-bot",
        "PUT",
        "/collections/support_docs/points",
        json!({"points": [point(1, 1, &["support"], "public")]}),
    );
    // A collection no policy mentions is refused, and not listed.
    s.ok("ingestor", "GET", "/collections", json!({}));
    let listed = s.ok("rag-bot", "GET", "/collections", json!({}));
    assert_eq!(listed["collections"], json!([{"name": "support_docs"}]));
    let m = s.refused(
        "ingestor",
        "PUT",
        "/collections/no_policy_mentions_me",
        json!({"vectors": {"size": 4, "distance": "Dot"}}),
    );
    assert!(m.contains("qdrant::no_policy_mentions_me"), "{m}");

    // Sparse scoring with IDF uses statistics over hidden points: refused under a filter.
    s.ok(
        "ingestor",
        "PUT",
        "/collections/notes",
        json!({"vectors": {"d": {"size": DIM, "distance": "Dot"}}, "sparse_vectors": {"s": {"modifier": "idf"}}}),
    );
    let sparse =
        json!({"query": {"indices": [1, 7], "values": [1.0, 2.0]}, "using": "s", "limit": 5});
    let m = s.refused(
        "rag-bot",
        "POST",
        "/collections/notes/points/query",
        sparse.clone(),
    );
    assert!(m.contains("IDF"), "{m}");
    let nested = json!({"prefetch": [sparse], "query": {"fusion": "rrf"}});
    s.refused("rag-bot", "POST", "/collections/notes/points/query", nested);

    // Authentication: unknown agent, wrong secret and no key get the same 401.
    let (a, ra) = common::http_json(s.port, "GET", "/collections", Some("nobody:x"), None);
    let (b, rb) = common::http_json(s.port, "GET", "/collections", Some("rag-bot:wrong"), None);
    let (c, rc) = common::http_json(s.port, "GET", "/collections", None, None);
    assert_eq!((a, b, c), (401, 401, 401));
    assert_eq!(ra["status"], rb["status"]);
    assert_eq!(rb["status"], rc["status"]);

    // The audit log: each retrieval names exactly the points it returned.
    let entries = s.entries();
    let queries: Vec<&Value> = entries
        .iter()
        .filter(|e| {
            e["protocol"] == "qdrant" && e["agent"] == "rag-bot" && e["decision"] == "rewrite"
        })
        .collect();
    assert!(queries.len() >= 8, "{} qdrant records", queries.len());
    for e in &queries {
        for p in e["returned"].as_array().into_iter().flatten() {
            let id = p["id"].as_u64().unwrap();
            assert!([1, 2].contains(&id), "a hidden point in the record: {e}");
        }
        assert!(e["basis"]["policy_version"].is_string());
    }
    let first = queries
        .iter()
        .find(|e| e["statement"] == format!("POST {q}"))
        .unwrap();
    let relation = &first["basis"]["relations"][0];
    assert_eq!(relation["relation"], "qdrant::support_docs");
    assert_eq!(relation["hidden"], json!(["internal_notes"]));
    assert!(relation["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("docs-by-acl-group")));
    assert!(first["payload_sha256"].is_string());
    let denied = entries
        .iter()
        .filter(|e| e["protocol"] == "qdrant" && e["decision"] == "deny")
        .count();
    assert!(denied >= 10, "{denied} deny records");
    // Every record replays: the version it names decides the same basis (and the same refusal).
    let portcullis = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dir = s.log.to_str().unwrap();
    let replayed: Vec<&Value> = entries
        .iter()
        .filter(|e| e["protocol"] == "qdrant" && e["kind"] == "decision")
        .collect();
    for e in &replayed {
        let out = portcullis(&["audit", "replay", dir, e["id"].as_str().unwrap()]);
        assert!(
            out.trim_end().ends_with("match"),
            "{}: {out}",
            e["statement"]
        );
    }
    // `audit search` finds them by collection and agent.
    let found = portcullis(&[
        "audit",
        "search",
        dir,
        "--relation",
        "qdrant::support_docs",
        "--agent",
        "rag-bot",
        "--policy",
        "docs-by-acl-group",
        "--json",
    ]);
    let found: Vec<Value> = found
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        found.len() >= queries.len() - 1,
        "{} of {}",
        found.len(),
        queries.len()
    );
    assert!(found
        .iter()
        .all(|r| r["protocol"] == "qdrant" && r["agent"] == "rag-bot"));
}

fn writes(s: &Shim) {
    load(s);
    let points = "/collections/support_docs/points";
    // A payload the policy would not let this agent write, or of the wrong type.
    let m = s.refused(
        "ingestor",
        "PUT",
        points,
        json!({"points": [point(20, 2, &["support"], "internal")]}),
    );
    assert!(m.contains("point 20"), "{m}");
    for bad in [
        json!({"tenant_id": 1, "acl_groups": "support", "classification": "internal", "title": "t"}),
        json!({"tenant_id": 1.5, "acl_groups": ["support"], "classification": "internal", "title": "t"}),
        json!({"tenant_id": 1, "acl_groups": ["support", null], "classification": "internal", "title": "t"}),
        json!({"tenant_id": 1, "acl_groups": ["support"], "classification": ["public", "restricted"], "title": "t"}),
        json!({"tenant_id": 1, "acl_groups": ["support"], "title": "t"}),
    ] {
        s.refused(
            "ingestor",
            "PUT",
            points,
            json!({"points": [{"id": 21, "vector": vector(21), "payload": bad}]}),
        );
    }
    // Over a point of another tenant: refused, and that point is unchanged.
    let m = s.refused(
        "ingestor",
        "PUT",
        points,
        json!({"points": [point(11, 1, &["support"], "internal")]}),
    );
    assert!(m.contains("may not overwrite"), "{m}");
    s.refused("ingestor", "PUT", points, json!({"batch": {"ids": [12], "vectors": [vector(12)], "payloads": [{"tenant_id": 1, "acl_groups": ["support"], "classification": "internal", "title": "x"}]}}));
    // The client's own update_filter still applies, ANDed with the policy's.
    let keep = json!({"points": [point(2, 1, &["billing"], "internal")], "update_filter": {"must": [{"key": "classification", "match": {"value": "nope"}}]}});
    s.ok("ingestor", "PUT", points, keep);
    let two = s.ok(
        "rag-bot",
        "POST",
        points,
        json!({"ids": [2], "with_payload": true}),
    );
    assert_eq!(two[0]["payload"]["classification"], "public", "{two}");
    s.refused(
        "ingestor",
        "PUT",
        points,
        json!({"points": [point(30, 1, &["support"], "internal")], "update_mode": "insert_only"}),
    );
    let t2 = s.ok(
        "rag-bot-t2",
        "POST",
        points,
        json!({"ids": [11, 12], "with_payload": true}),
    );
    assert_eq!(ids(&t2), set(&[11, 12]));
    assert!(t2
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["payload"]["tenant_id"] == 2));
    // Its own tenant's point: overwritten.
    s.ok(
        "ingestor",
        "PUT",
        points,
        json!({"points": [point(5, 1, &["support"], "public")]}),
    );
    assert_eq!(
        ids(&s.ok("rag-bot", "POST", points, json!({"ids": [5]}))),
        set(&[5])
    );

    // Payload edits by filter or ids touch only writable points, and never a policy field.
    s.ok(
        "ingestor",
        "POST",
        "/collections/support_docs/points/payload",
        json!({"payload": {"title": "edited"}, "filter": {"must": []}}),
    );
    let t2 = s.ok(
        "rag-bot-t2",
        "POST",
        points,
        json!({"ids": [11, 12], "with_payload": true}),
    );
    assert!(
        t2.as_array()
            .unwrap()
            .iter()
            .all(|p| p["payload"]["title"] != "edited"),
        "{t2}"
    );
    let t1 = s.ok(
        "rag-bot",
        "POST",
        points,
        json!({"ids": [1, 2], "with_payload": true}),
    );
    assert!(
        t1.as_array()
            .unwrap()
            .iter()
            .all(|p| p["payload"]["title"] == "edited"),
        "{t1}"
    );
    s.ok(
        "ingestor",
        "POST",
        "/collections/support_docs/points/payload",
        json!({"payload": {"title": "by id"}, "points": [11, 1]}),
    );
    assert_eq!(
        s.ok(
            "rag-bot-t2",
            "GET",
            "/collections/support_docs/points/11",
            json!({})
        )["payload"]["title"],
        "doc 11"
    );
    let m = s.refused(
        "ingestor",
        "POST",
        "/collections/support_docs/points/payload",
        json!({"payload": {"tenant_id": 2}, "points": [1]}),
    );
    assert!(m.contains("tenant_id"), "{m}");
    s.refused(
        "ingestor",
        "POST",
        "/collections/support_docs/points/payload",
        json!({"payload": {"acl_groups": "support"}, "points": [1]}),
    );
    s.refused(
        "ingestor",
        "POST",
        "/collections/support_docs/points/payload/delete",
        json!({"keys": ["classification"], "points": [1]}),
    );
    s.ok(
        "ingestor",
        "POST",
        "/collections/support_docs/points/payload/delete",
        json!({"keys": ["internal_notes"], "filter": {"must": []}}),
    );
    let c = s.ok(
        "compliance-bot",
        "POST",
        points,
        json!({"ids": [1], "with_payload": true}),
    );
    assert!(c[0]["payload"].get("internal_notes").is_none(), "{c}");

    // Deletes: by filter matching everything and by ids, only the agent's tenant goes.
    s.ok(
        "ingestor",
        "POST",
        "/collections/support_docs/points/delete",
        json!({"points": [1, 11]}),
    );
    assert_eq!(
        ids(&s.ok("rag-bot-t2", "POST", points, json!({"ids": [11, 12]}))),
        set(&[11, 12])
    );
    s.ok(
        "ingestor",
        "POST",
        "/collections/support_docs/points/delete",
        json!({"filter": {"must": []}}),
    );
    assert_eq!(
        s.ok(
            "rag-bot",
            "POST",
            "/collections/support_docs/points/count",
            json!({})
        )["count"],
        0
    );
    assert_eq!(
        s.ok(
            "rag-bot-t2",
            "POST",
            "/collections/support_docs/points/count",
            json!({})
        )["count"],
        2
    );

    // Every write was recorded before it ran, with the ids it wrote.
    let upserts: Vec<Value> = s
        .entries()
        .into_iter()
        .filter(|e| {
            e["protocol"] == "qdrant"
                && e["statement"] == format!("PUT {points}")
                && e["decision"] == "rewrite"
        })
        .collect();
    assert!(
        upserts
            .iter()
            .any(|e| e["written"] == json!([5]) && e["agent"] == "ingestor"),
        "{upserts:?}"
    );
}

/// qdrant-client, LangChain's and LlamaIndex's QdrantVectorStore, used as their docs show, as an
/// ingestion agent and two readers with different rights over the same collections.
#[test]
fn python_clients_through_the_shim() {
    python_clients(&start(Store::Embedded));
}

#[test]
fn python_clients_through_a_remote_qdrant() {
    python_clients(&start(Store::Remote));
}

fn python_clients(s: &Shim) {
    for (script, marker) in [
        ("qdrant_shim_clients.py", "qdrant shim clients ok"),
        ("llamaindex_qdrant_shim.py", "llamaindex qdrant shim ok"),
    ] {
        let out = Command::new(python())
            .arg(repo_root().join("tests/clients/python").join(script))
            .env("QDRANT_SHIM_URL", format!("http://127.0.0.1:{}", s.port))
            .envs(AGENTS.iter().map(|a| {
                (
                    format!("KEY_{}", a.replace('-', "_").to_uppercase()),
                    format!("{a}:{}", secret(a)),
                )
            }))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(marker),
            "{script}:\n{stdout}\n{stderr}\n{}",
            s.env.proxy_log()
        );
        assert!(
            !stderr.contains("incompatible"),
            "the client warned about the version: {stderr}"
        );
    }
}

/// Over HTTPS, an agent's JWT is its API key, and its `on_behalf_of` narrows what it finds to
/// what the human may see; without TLS (and without `jwt.allow_plaintext`) a token is refused.
#[test]
fn tokens_over_tls_act_for_the_human_they_name() {
    const KEY: &str = "a-test-signing-key-of-at-least-32-bytes";
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path();
    common::test_certificates(dir);
    let courier = json!({
        "uid": {"type": "Agent", "id": "courier-bot"},
        "attrs": {"tenant_id": 1, "groups": ["support", "billing"]},
        "parents": []
    });
    let s = start_full(
        Store::Embedded,
        &format!(
            "[vector.tls]\ncert = {:?}\nkey = {:?}\n",
            dir.join("server.crt").display().to_string(),
            dir.join("server.key").display().to_string()
        ),
        &format!("[jwt]\nalgorithm = \"HS256\"\nsecret = \"{KEY}\"\n\n[[agents]]\nid = \"courier-bot\"\ntoken = true\n"),
        &[courier],
    );
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let token = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
        )
        .unwrap()
    };
    let url = format!("https://localhost:{}", s.port);
    let ca = dir.join("ca.crt");
    let client = |key: String| {
        connectors::vector::remote::Remote::new(&url, Some(key), Some(ca.as_path())).unwrap()
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let query = |key: String, body: Value| {
        rt.block_on(client(key).send(
            hyper::Method::POST,
            "/collections/support_docs/points/query",
            Some(&body),
        ))
        .unwrap()
    };
    let ingest = client("ingestor:ingestor-secret".into());
    rt.block_on(async {
        let (st, r) = ingest
            .send(
                hyper::Method::PUT,
                "/collections/support_docs",
                Some(&json!({"vectors": {"size": DIM, "distance": "Cosine"}})),
            )
            .await
            .unwrap();
        assert_eq!(st, 200, "{r}");
        let points: Vec<Value> = DOCS
            .iter()
            .map(|(i, t, g, c)| point(*i, *t, g, c))
            .collect();
        let (st, r) = ingest
            .send(
                hyper::Method::PUT,
                "/collections/support_docs/points",
                Some(&json!({"points": points})),
            )
            .await
            .unwrap();
        assert_eq!(st, 200, "{r}");
    });
    let ask = json!({"query": vector(1), "limit": 100});
    let alone = token(json!({"sub": "courier-bot", "exp": exp}));
    let (st, r) = query(alone.clone(), ask.clone());
    assert_eq!(st, 200, "{r}");
    assert_eq!(ids(&r["result"]["points"]), set(&[1, 2]));
    // Acting for carol (billing): only what carol's groups may see.
    let for_carol = token(json!({"sub": "courier-bot", "exp": exp, "on_behalf_of": "carol"}));
    let (_, r) = query(for_carol, ask.clone());
    assert_eq!(ids(&r["result"]["points"]), set(&[2]));
    // A token for a secret agent, a bad signature, an expired token: the same 401.
    for bad in [
        token(json!({"sub": "rag-bot", "exp": exp})),
        token(json!({"sub": "courier-bot", "exp": exp - 1200})),
        alone.replace('.', ".x"),
    ] {
        let (st, r) = query(bad, ask.clone());
        assert_eq!(st, 401, "{r}");
    }
    // The record names the human.
    let records = s.entries();
    let delegated = records
        .iter()
        .find(|e| e["agent"] == "courier-bot" && e["on_behalf_of"] == "carol")
        .expect("a record of the delegated query");
    assert_eq!(delegated["tls"], true);
    assert!(delegated["basis"]["relations"][0]["policies"]
        .as_array()
        .unwrap()
        .contains(&json!("delegation-needs-human-group")));
    // Plain HTTP to the TLS port gets no answer.
    let plain = std::net::TcpStream::connect(("127.0.0.1", s.port)).and_then(|mut t| {
        use std::io::{Read, Write};
        t.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        t.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut buf = Vec::new();
        let _ = t.read_to_end(&mut buf);
        Ok(buf)
    });
    assert!(!String::from_utf8_lossy(&plain.unwrap_or_default()).contains("qdrant"));
}

/// Without TLS a token is refused (it is a bearer credential naming a human).
#[test]
fn tokens_need_tls() {
    const KEY: &str = "a-test-signing-key-of-at-least-32-bytes";
    let courier = json!({
        "uid": {"type": "Agent", "id": "courier-bot"},
        "attrs": {"tenant_id": 1, "groups": ["support"]},
        "parents": []
    });
    let s = start_full(
        Store::Embedded,
        "",
        &format!("[jwt]\nalgorithm = \"HS256\"\nsecret = \"{KEY}\"\n\n[[agents]]\nid = \"courier-bot\"\ntoken = true\n"),
        &[courier],
    );
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "courier-bot", "exp": jsonwebtoken::get_current_timestamp() + 600}),
        &jsonwebtoken::EncodingKey::from_secret(KEY.as_bytes()),
    )
    .unwrap();
    let (st, _) = common::http_json(s.port, "GET", "/collections", Some(&token), None);
    assert_eq!(st, 401);
}

/// SIGTERM: the shim accepts no new connection, answers the request in flight (its body was
/// half sent when the signal came) and writes its audit record, closes an idle keep-alive
/// connection, and the process exits 0.
#[test]
fn sigterm_lets_a_request_in_flight_finish() {
    use std::io::{Read, Write};
    use std::time::Duration;
    let mut s = start(Store::Embedded);
    load(&s);
    let connect = || std::net::TcpStream::connect(("127.0.0.1", s.port));
    // An idle keep-alive connection, one request answered.
    let mut idle = connect().unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    idle.write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = idle.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    // A request in flight: its head and the start of its body sent.
    let body = json!({ "points": [point(6, 1, &["support"], "internal")] }).to_string();
    let mut busy = connect().unwrap();
    busy.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    busy.write_all(
        format!(
            "PUT /collections/support_docs/points?wait=true HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             api-key: ingestor:{}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{}",
            secret("ingestor"),
            body.len(),
            &body[..10]
        )
        .as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let status = Command::new("kill")
        .args(["-TERM", &s.env.proxy_pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        connect().is_err(),
        "a new connection was accepted while shutting down"
    );
    // The idle connection is closed.
    assert_eq!(
        idle.read(&mut buf).unwrap_or(0),
        0,
        "the idle connection stayed open"
    );
    // The request in flight completes, and its connection then closes.
    busy.write_all(&body.as_bytes()[10..]).unwrap();
    let mut reply = String::new();
    busy.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "{reply}\n{}",
        s.env.proxy_log()
    );
    assert!(reply.contains(r#""status":"ok""#), "{reply}");
    let exit = s.env.proxy_exit(Duration::from_secs(10));
    assert!(
        exit.is_some_and(|e| e.success()),
        "exit {exit:?}\n{}",
        s.env.proxy_log()
    );
    let recorded = s.entries().into_iter().any(|e| {
        e["statement"] == "PUT /collections/support_docs/points"
            && e["decision"] == "rewrite"
            && e["written"] == json!([6])
    });
    assert!(
        recorded,
        "no audit record of the upsert answered while draining"
    );
}

fn python() -> PathBuf {
    let p = repo_root().join(".venv/bin/python");
    assert!(
        p.is_file(),
        "{} not found: run `bash tests/setup.sh` first",
        p.display()
    );
    p
}
