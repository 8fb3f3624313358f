//! Loading real policy-set directories: the shipped examples, and broken copies of them whose
//! errors must name the file, the line and (for validation) the policy.

use std::path::{Path, PathBuf};

use policies::{load_dir, LoadError, Version, VersionStore};

fn finance() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/finance")
}

/// A copy of the finance set in a temp dir, with `edit` applied to one file.
fn broken(file: &str, edit: impl FnOnce(String) -> String) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(finance()).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let target = dir.path().join(file);
    let text = std::fs::read_to_string(&target).unwrap_or_default();
    std::fs::write(&target, edit(text)).unwrap();
    dir
}

fn errors(dir: &Path) -> Vec<policies::Diagnostic> {
    match load_dir(dir) {
        Err(LoadError::Invalid(d)) => d,
        other => panic!("expected an invalid set, got {other:?}"),
    }
}

#[test]
fn the_finance_example_loads_with_its_policy_ids() {
    let b = load_dir(&finance()).unwrap();
    let mut ids: Vec<String> = b.policies.policies().map(|p| p.id().to_string()).collect();
    ids.sort();
    assert_eq!(
        ids,
        [
            "auditor-hashed-emails",
            "auditor-reads-all",
            "columns-readable",
            "delegated-no-ssn",
            "delegation-intersects-tenants",
            "kb-auditor-all",
            "kb-fields-readable",
            "kb-internal-notes-auditor-only",
            "kb-support-own-tenant",
            "low-clearance-no-large-transfer-metadata",
            "low-clearance-no-large-transfers",
            "no-agent-priority-one",
            "support-deletes-closed-tickets",
            "support-iban-last4",
            "support-no-ssn",
            "support-reads-own-tenant",
            "support-updates-own-customers",
            "support-writes-own-tickets",
        ]
    );
    assert_eq!(b.origin["support-reads-own-tenant"], "rows.cedar");
    assert_eq!(b.version.as_str().len(), 64);
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
}

#[test]
fn the_version_is_the_content_and_only_the_content() {
    let v = load_dir(&finance()).unwrap().version;
    // The same files elsewhere: the same version.
    let copy = broken("rows.cedar", |t| t);
    assert_eq!(load_dir(copy.path()).unwrap().version, v);
    // Any change to policies, schema or entities: a new version.
    for (file, edit) in [
        ("rows.cedar", "\n// a comment is a change too\n"),
        ("tables.cedarschema", "\n// schema edit\n"),
    ] {
        let d = broken(file, |t| t + edit);
        assert_ne!(load_dir(d.path()).unwrap().version, v, "{file}");
    }
    let d = broken("entities.json", |t| {
        t.replace("\"clearance\": 1", "\"clearance\": 2")
    });
    assert_ne!(load_dir(d.path()).unwrap().version, v);
    // Files outside the set (tests, docs) do not count.
    let d = broken("README.md", |_| "notes".into());
    assert_eq!(load_dir(d.path()).unwrap().version, v);
}

#[test]
fn a_syntax_error_names_file_line_and_column() {
    let d = broken("rows.cedar", |t| {
        t.replace(
            "resource.tenant_id == principal.tenant_id",
            "resource.tenant_id === principal.tenant_id",
        )
    });
    let e = errors(d.path());
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].file, "rows.cedar");
    let line = std::fs::read_to_string(d.path().join("rows.cedar"))
        .unwrap()
        .lines()
        .position(|l| l.contains("==="))
        .unwrap()
        + 1;
    assert_eq!(e[0].line, line, "{}", e[0]);
    assert!(e[0].column > 1, "{}", e[0]);
}

#[test]
fn a_validation_error_names_the_policy_and_its_position() {
    let d = broken("rows.cedar", |t| {
        t.replace(
            "resource.tenant_id == principal.tenant_id",
            "resource.tennant_id == principal.tenant_id",
        )
    });
    let e = errors(d.path());
    assert!(!e.is_empty());
    let first = &e[0];
    assert_eq!(first.file, "rows.cedar");
    assert_eq!(first.policy.as_deref(), Some("support-reads-own-tenant"));
    assert!(first.line > 0, "{first}");
    assert!(first.to_string().contains("tennant_id"), "{first}");
}

#[test]
fn ids_are_required_and_unique() {
    let d = broken("rows.cedar", |t| {
        t.replace("@id(\"auditor-reads-all\")\n", "")
    });
    assert!(errors(d.path())
        .iter()
        .any(|d| d.message.contains("no @id")));
    let d = broken("delegation.cedar", |t| {
        t.replace("delegation-intersects-tenants", "auditor-reads-all")
    });
    assert!(errors(d.path())
        .iter()
        .any(|d| d.message.contains("duplicate @id")));
}

#[test]
fn entities_and_schema_are_checked_too() {
    let d = broken("entities.json", |t| {
        t.replace("\"clearance\": 1", "\"clearance\": \"high\"")
    });
    assert!(errors(d.path()).iter().any(|d| d.file == "entities.json"));
    let d = broken("principals.cedarschema", |t| {
        t.replace("entity Role;", "entity Role")
    });
    assert!(errors(d.path())
        .iter()
        .any(|d| d.file == "principals.cedarschema" && d.line > 0));
    // A type used in one fragment but defined in none.
    let d = broken("principals.cedarschema", |t| t.replace("entity Role;", ""));
    assert!(
        errors(d.path()).iter().any(|d| d.message.contains("Role")),
        "{:?}",
        errors(d.path())
    );
    let d = broken("principals.cedarschema", |t| t);
    std::fs::remove_file(d.path().join("principals.cedarschema")).unwrap();
    std::fs::remove_file(d.path().join("tables.cedarschema")).unwrap();
    std::fs::remove_file(d.path().join("knowledge.cedarschema")).unwrap();
    assert!(errors(d.path())
        .iter()
        .any(|d| d.message.contains("no schema")));
}

#[test]
fn the_store_keeps_versions_and_detects_tampering() {
    let root = tempfile::tempdir().unwrap();
    let store = VersionStore::open(root.path()).unwrap();
    let a = load_dir(&finance()).unwrap();
    let d = broken("rows.cedar", |t| t + "\n// v2\n");
    let b = load_dir(d.path()).unwrap();
    store.save(&a).unwrap();
    store.save(&b).unwrap();
    store.save(&a).unwrap(); // idempotent
    let mut want = vec![a.version.clone(), b.version.clone()];
    want.sort();
    assert_eq!(store.versions().unwrap(), want);
    let again = store.load(&a.version).unwrap();
    assert_eq!(again.version, a.version);
    assert_eq!(
        again.policies.num_of_policies(),
        a.policies.num_of_policies()
    );

    // A stored version whose files changed no longer loads as that version.
    let stored = root.path().join(b.version.as_str()).join("rows.cedar");
    std::fs::write(
        &stored,
        std::fs::read_to_string(&stored).unwrap() + "// tampered\n",
    )
    .unwrap();
    assert!(matches!(
        store.load(&b.version),
        Err(policies::StoreError::Corrupt { .. })
    ));
    let missing = Version::parse(&"0".repeat(64)).unwrap();
    assert!(matches!(
        store.load(&missing),
        Err(policies::StoreError::Missing(_))
    ));
}

#[test]
fn the_rag_example_loads() {
    let b = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/rag")).unwrap();
    assert_eq!(b.policies.num_of_policies(), 15);
    assert!(b.policies.policies().all(|p| p.annotation("id").is_some()));
}

#[test]
fn mask_annotations_are_checked_at_load() {
    let cases = [
        (
            "@mask(\"scramble\")\nforbid (principal, action == Action::\"read_column\", resource);",
            "unknown mask \"scramble\"",
        ),
        (
            "@mask(\"null\")\npermit (principal, action == Action::\"read_column\", resource);",
            "@mask belongs on a forbid policy",
        ),
        (
            "@mask(\"null\")\nforbid (principal, action == Action::\"select\", resource);",
            "only Action::\"read_column\"",
        ),
        (
            "@mask(\"null\")\nforbid (principal, action, resource);",
            "only Action::\"read_column\"",
        ),
    ];
    for (policy, message) in cases {
        let dir = broken("extra.cedar", |_| format!("@id(\"bad-mask\")\n{policy}\n"));
        let errs = errors(dir.path());
        assert!(
            errs.iter().any(|d| d.file == "extra.cedar"
                && d.policy.as_deref() == Some("bad-mask")
                && d.message.contains(message)),
            "{policy}: {errs:?}"
        );
    }
}
