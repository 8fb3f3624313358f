//! A policy set's version: the SHA-256 of its files' names and contents in a canonical order,
//! so the same set has the same version wherever it is loaded from, and any change to schema,
//! policies or entities makes a new one.

use std::fmt;

use sha2::{Digest, Sha256};

use crate::source::{SourceFile, SourceKind};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Version(String);

impl Version {
    pub(crate) fn of(files: &[SourceFile]) -> Version {
        let mut h = Sha256::new();
        h.update(b"portcullis-policy-set-v1\0");
        for f in files {
            let kind: &[u8] = match f.kind {
                SourceKind::Schema => b"schema",
                SourceKind::Policies => b"policies",
                SourceKind::Entities => b"entities",
            };
            for part in [kind, f.name.as_bytes(), f.text.as_bytes()] {
                h.update((part.len() as u64).to_be_bytes());
                h.update(part);
            }
        }
        Version(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Parses a full 64-hex-digit version.
    pub fn parse(s: &str) -> Option<Version> {
        (s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| Version(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
