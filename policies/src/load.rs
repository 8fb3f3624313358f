//! Loading a policy set: parse the schema fragments, every policy file (ids from `@id`) and the entities,
//! then validate the policies strictly against the schema. Every problem found is reported, not
//! just the first, each with its file and position.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use cedar_policy::{
    Entities, PolicyId, PolicySet, Schema, SchemaFragment, ValidationMode, Validator,
};

use crate::diagnostics::Diagnostic;
use crate::source::{self, SourceFile, SourceKind};
use crate::version::Version;

/// A loaded, valid policy set.
#[derive(Debug, Clone)]
pub struct PolicyBundle {
    pub version: Version,
    pub schema: Schema,
    pub policies: PolicySet,
    pub entities: Entities,
    /// The files the set was loaded from (what the version hashes and the store keeps).
    pub files: Vec<SourceFile>,
    /// Validator warnings: reported, not fatal.
    pub warnings: Vec<Diagnostic>,
    /// Which file each policy id came from.
    pub origin: HashMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read policy set {}: {source}", dir.display())]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid policy set:\n{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

fn render(diagnostics: &[Diagnostic]) -> String {
    diagnostics
        .iter()
        .map(|d| format!("  {d}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads and validates the policy set in `dir`.
pub fn load_dir(dir: &Path) -> Result<PolicyBundle, LoadError> {
    let files = source::read_dir(dir).map_err(|source| LoadError::Io {
        dir: dir.to_path_buf(),
        source,
    })?;
    load_sources(files)
}

/// Loads and validates a policy set from its files' contents.
pub fn load_sources(files: Vec<SourceFile>) -> Result<PolicyBundle, LoadError> {
    let mut errors = Vec::new();
    let of_kind = |k: SourceKind| files.iter().filter(move |f| f.kind == k);

    let schema = load_schema(
        &of_kind(SourceKind::Schema).collect::<Vec<_>>(),
        &mut errors,
    );

    let mut policies = PolicySet::new();
    let mut origin: HashMap<String, String> = HashMap::new();
    let mut texts: HashMap<String, &str> = HashMap::new();
    for file in of_kind(SourceKind::Policies) {
        texts.insert(file.name.clone(), &file.text);
        let parsed = match PolicySet::from_str(&file.text) {
            Ok(p) => p,
            Err(e) => {
                errors.extend(
                    e.iter()
                        .map(|pe| Diagnostic::from_miette(&file.name, &file.text, pe)),
                );
                continue;
            }
        };
        for (n, policy) in parsed.policies().enumerate() {
            let Some(id) = policy.annotation("id").map(str::to_string) else {
                errors.push(Diagnostic::at(
                    &file.name,
                    &file.text,
                    None,
                    format!(
                        "policy #{} has no @id(\"…\") annotation; every policy needs a unique id",
                        n + 1
                    ),
                ));
                continue;
            };
            if let Some(first) = origin.get(&id) {
                errors.push(
                    Diagnostic::at(
                        &file.name,
                        &file.text,
                        None,
                        format!("duplicate @id, first defined in {first}"),
                    )
                    .for_policy(&id),
                );
                continue;
            }
            if let Some(why) = crate::columns::check_mask_annotation(policy) {
                errors.push(Diagnostic::at(&file.name, &file.text, None, why).for_policy(&id));
                continue;
            }
            if let Err(e) = policies.add(policy.new_id(PolicyId::new(&id))) {
                errors.push(
                    Diagnostic::at(&file.name, &file.text, None, e.to_string()).for_policy(&id),
                );
                continue;
            }
            origin.insert(id, file.name.clone());
        }
    }
    if origin.is_empty() && errors.is_empty() {
        errors.push(layout(
            "no policies: the set needs at least one *.cedar file with a policy",
        ));
    }

    let mut warnings = Vec::new();
    if let Some(schema) = &schema {
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        let locate = |id: &PolicyId, d: &dyn miette::Diagnostic| {
            let id: &str = id.as_ref();
            let file = origin.get(id).map(String::as_str).unwrap_or("?");
            Diagnostic::from_miette(file, texts.get(file).copied().unwrap_or(""), d).for_policy(id)
        };
        errors.extend(result.validation_errors().map(|e| locate(e.policy_id(), e)));
        warnings.extend(
            result
                .validation_warnings()
                .map(|w| locate(w.policy_id(), w)),
        );
    }

    let entities = match of_kind(SourceKind::Entities).next() {
        Some(file) => match Entities::from_json_str(&file.text, schema.as_ref()) {
            Ok(e) => Some(e),
            Err(e) => {
                errors.push(Diagnostic::from_miette(&file.name, &file.text, &e));
                None
            }
        },
        None => {
            errors.push(layout(
                "no entities.json: the set needs one (it may be `[]`)",
            ));
            None
        }
    };

    match (schema, entities) {
        (Some(schema), Some(entities)) if errors.is_empty() => Ok(PolicyBundle {
            version: Version::of(&files),
            schema,
            policies,
            entities,
            files,
            warnings,
            origin,
        }),
        _ => Err(LoadError::Invalid(errors)),
    }
}

/// One or more schema fragments (e.g. hand-written principals plus imported tables), combined.
fn load_schema(files: &[&SourceFile], errors: &mut Vec<Diagnostic>) -> Option<Schema> {
    if files.is_empty() {
        errors.push(layout(
            "no schema: the set needs at least one *.cedarschema file",
        ));
        return None;
    }
    let mut fragments = Vec::new();
    for f in files {
        match SchemaFragment::from_cedarschema_str(&f.text) {
            Ok((fragment, _warnings)) => fragments.push(fragment),
            Err(e) => errors.push(Diagnostic::from_miette(&f.name, &f.text, &e)),
        }
    }
    if fragments.len() < files.len() {
        return None;
    }
    match Schema::from_schema_fragments(fragments) {
        Ok(schema) => Some(schema),
        Err(e) => {
            // Errors across fragments have no single file; with one file, positions still apply.
            let (name, text) = match files {
                [one] => (one.name.clone(), one.text.as_str()),
                _ => (
                    files
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(" + "),
                    "",
                ),
            };
            errors.push(Diagnostic::from_miette(&name, text, &e));
            None
        }
    }
}

fn layout(message: &str) -> Diagnostic {
    Diagnostic {
        file: "(policy set)".into(),
        line: 0,
        column: 0,
        message: message.into(),
        policy: None,
    }
}
