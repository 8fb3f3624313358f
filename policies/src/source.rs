//! The files of a policy-set directory: which ones belong to the set, read in a stable order.

use std::path::{Path, PathBuf};

/// What a file of the set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SourceKind {
    Schema,
    Policies,
    Entities,
}

/// One file of a policy set: its name within the set (no directories) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub kind: SourceKind,
    pub name: String,
    pub text: String,
}

/// Reads the set's files from `dir`: `*.cedarschema`, `*.cedar`, `entities.json`. Other files
/// (tests, READMEs) and subdirectories are not part of the set. Sorted by kind, then name.
pub(crate) fn read_dir(dir: &Path) -> std::io::Result<Vec<SourceFile>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path: PathBuf = entry?.path();
        if !path.is_file() {
            continue;
        }
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
        else {
            continue;
        };
        let kind = if name.ends_with(".cedarschema") {
            SourceKind::Schema
        } else if name.ends_with(".cedar") {
            SourceKind::Policies
        } else if name == "entities.json" {
            SourceKind::Entities
        } else {
            continue;
        };
        let text = std::fs::read_to_string(&path)?;
        files.push(SourceFile { kind, name, text });
    }
    files.sort_by(|a, b| (a.kind, &a.name).cmp(&(b.kind, &b.name)));
    Ok(files)
}
