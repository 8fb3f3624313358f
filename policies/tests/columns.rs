//! Column rules derived from the finance example: each kind of rule, the default for a column
//! no permit covers, and tables without column rules.

use std::path::Path;
use std::str::FromStr;

use cedar_policy::{Context, EntityUid, RestrictedExpression};
use policies::{
    derive_columns, load_dir, load_sources, rule_depends_on_name, ColumnRule, Filter, Mask,
    PolicyBundle, SourceFile, SourceKind, READ_COLUMN, READ_FIELD,
};

fn example(name: &str) -> PolicyBundle {
    load_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name),
    )
    .unwrap()
}

fn agent(id: &str) -> EntityUid {
    EntityUid::from_str(&format!("Agent::\"{id}\"")).unwrap()
}

fn for_user(user: &str) -> Context {
    Context::from_pairs([(
        "on_behalf_of".to_string(),
        RestrictedExpression::new_entity_uid(
            EntityUid::from_str(&format!("User::\"{user}\"")).unwrap(),
        ),
    )])
    .unwrap()
}

#[test]
fn each_kind_of_rule() {
    let b = example("finance");
    let bot = agent("support-bot");
    let rules = derive_columns(
        &b,
        &bot,
        "public::transfers",
        &["amount", "iban", "metadata"],
        &Context::empty(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(rules.columns["amount"], ColumnRule::Visible);
    assert_eq!(
        rules.columns["iban"],
        ColumnRule::Masked {
            mask: Mask::Last4,
            unless: Filter::False
        }
    );
    match &rules.columns["metadata"] {
        ColumnRule::Masked {
            mask: Mask::Null,
            unless,
        } => assert_ne!(*unless, Filter::False),
        other => panic!("metadata: {other:?}"),
    }
    assert!(rules
        .determining
        .contains(&"low-clearance-no-large-transfer-metadata".to_string()));

    let auditor = agent("auditor");
    let rules = derive_columns(
        &b,
        &auditor,
        "public::customers",
        &["ssn", "email"],
        &for_user("alice"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        rules.columns["ssn"],
        ColumnRule::Denied,
        "forbid without @mask"
    );
    assert_eq!(
        rules.columns["email"],
        ColumnRule::Masked {
            mask: Mask::Hash,
            unless: Filter::False
        }
    );
}

/// The finance set with `columns.cedar` replaced.
fn with_columns(policies: &str) -> PolicyBundle {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/finance");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        let kind = match path.extension().and_then(|e| e.to_str()) {
            Some("cedarschema") => SourceKind::Schema,
            Some("cedar") => SourceKind::Policies,
            Some("json") => SourceKind::Entities,
            _ => continue,
        };
        let text = if name == "columns.cedar" {
            policies.to_string()
        } else {
            std::fs::read_to_string(&path).unwrap()
        };
        files.push(SourceFile { kind, name, text });
    }
    load_sources(files).unwrap()
}

#[test]
fn a_column_no_permit_covers_is_denied() {
    let b = with_columns(
        r#"@id("only-ids")
permit (principal, action == Action::"read_column", resource)
when { context.column == "id" };"#,
    );
    let rules = derive_columns(
        &b,
        &agent("auditor"),
        "public::customers",
        &["id", "name"],
        &Context::empty(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(rules.columns["id"], ColumnRule::Visible);
    assert_eq!(rules.columns["name"], ColumnRule::Denied);
}

#[test]
fn the_strongest_mask_wins_and_a_conditional_forbid_without_mask_hides_as_null() {
    let b = with_columns(
        r#"@id("all")
permit (principal, action == Action::"read_column", resource);
@id("last4")
@mask("last4")
forbid (principal, action == Action::"read_column", resource) when { context.column == "name" };
@id("redact")
@mask("redact")
forbid (principal, action == Action::"read_column", resource) when { context.column == "name" };
@id("own-tenant-emails")
permit (principal, action == Action::"read_column", resource is public::customers)
when { context.column == "email" && resource.tenant_id == principal.tenant_id };
@id("emails-only-own-tenant")
forbid (principal, action == Action::"read_column", resource is public::customers)
unless { context.column != "email" || resource.tenant_id == principal.tenant_id };"#,
    );
    let rules = derive_columns(
        &b,
        &agent("support-bot"),
        "public::customers",
        &["name", "email"],
        &Context::empty(),
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        rules.columns["name"],
        ColumnRule::Masked {
            mask: Mask::Redact,
            unless: Filter::False
        }
    );
    match &rules.columns["email"] {
        ColumnRule::Masked {
            mask: Mask::Null,
            unless,
        } => assert_ne!(*unless, Filter::False),
        other => panic!("email: {other:?}"),
    }
}

#[test]
fn tables_without_read_column_have_no_column_rules() {
    let b = example("rag");
    let rules = derive_columns(
        &b,
        &agent("rag-bot"),
        "qdrant::support_docs",
        &["title"],
        &Context::empty(),
    )
    .unwrap();
    assert_eq!(rules, None);
}

/// A small vector set: `search` by tenant, `read_field` decided by `fields` (policies text).
fn vector_set(fields: &str) -> PolicyBundle {
    let schema = r#"
entity Agent { tenant_id: Long };
namespace qdrant { entity docs { tenant_id: Long, title: String, author: String }; }
action search appliesTo { principal: [Agent], resource: [qdrant::docs], context: { purpose: String } };
action read_field appliesTo { principal: [Agent], resource: [qdrant::docs], context: { field: String } };
"#;
    let policies = format!(
        r#"@id("own-tenant")
permit (principal, action == Action::"search", resource is qdrant::docs)
when {{ resource.tenant_id == principal.tenant_id && context.purpose == "support" }};
{fields}"#
    );
    load_sources(vec![
        SourceFile {
            kind: SourceKind::Schema,
            name: "schema.cedarschema".into(),
            text: schema.into(),
        },
        SourceFile {
            kind: SourceKind::Policies,
            name: "policies.cedar".into(),
            text: policies,
        },
        SourceFile {
            kind: SourceKind::Entities,
            name: "entities.json".into(),
            text: "[]".into(),
        },
    ])
    .unwrap()
}

#[test]
fn a_field_rule_depends_on_the_name_only_when_a_policy_for_the_action_reads_the_context() {
    // Every field readable: one derivation holds for all (the `search` policy reads the
    // context too, but it is not a `read_field` policy).
    let all = vector_set(
        r#"@id("f1") permit (principal, action == Action::"read_field", resource is qdrant::docs);"#,
    );
    assert!(!rule_depends_on_name(&all, READ_FIELD));
    // By name, by a forbid on one name, through `context` as a whole, through an action list:
    // each may decide fields differently.
    for fields in [
        r#"@id("f2") permit (principal, action == Action::"read_field", resource) when { context.field == "title" };"#,
        r#"@id("f3") permit (principal, action == Action::"read_field", resource);
@id("f4") forbid (principal, action == Action::"read_field", resource) when { context.field like "auth*" };"#,
        r#"@id("f5") permit (principal, action == Action::"read_field", resource) when { context == {"field": "title"} };"#,
        r#"@id("f6") permit (principal, action in [Action::"read_field"], resource) when { context.field == "title" };"#,
    ] {
        assert!(
            rule_depends_on_name(&vector_set(fields), READ_FIELD),
            "{fields}"
        );
    }
    // A row condition is not a name condition.
    let by_row = vector_set(
        r#"@id("f7") permit (principal, action == Action::"read_field", resource) when { resource.tenant_id == 1 };"#,
    );
    assert!(!rule_depends_on_name(&by_row, READ_FIELD));
    // SQL column rules: the finance set names its columns.
    assert!(rule_depends_on_name(&example("finance"), READ_COLUMN));
}
