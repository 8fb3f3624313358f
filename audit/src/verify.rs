//! Verifying a log directory as an auditor would: rebuild the Merkle tree from the entries,
//! check that every entry is canonical and matches the hash stored for it, and that every
//! checkpoint is signed by the log's key and is the tree head of the entries it covers (so all
//! checkpoints are consistent with each other); optionally that a checkpoint the auditor kept
//! from earlier is consistent with the log now.

use std::path::Path;

use signed_note::{Note, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash};

use crate::canonical::is_canonical;
use crate::layout::HASHES;
use crate::log::{read_checkpoints, read_entries};
use crate::tree::Tree;

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub entries: u64,
    pub checkpoints: usize,
    /// The size of the latest checkpoint.
    pub latest: Option<u64>,
}

/// The first thing found wrong, naming the entry or checkpoint.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Problem {
    #[error("cannot read the log: {0}")]
    Unreadable(String),
    #[error("not a public key of a signed-note log: {0}")]
    Key(String),
    #[error("entry {0} is not canonical JSON (it was edited)")]
    NotCanonical(u64),
    #[error(
        "entry {0} is not the entry that was logged at that index (edited, deleted or reordered)"
    )]
    EntryChanged(u64),
    #[error("checkpoint {size}: {reason}")]
    BadCheckpoint { size: u64, reason: String },
    #[error("checkpoint {size} covers {size} entries but only {entries} are left (entries {entries} and later were deleted)")]
    Truncated { size: u64, entries: u64 },
    #[error("checkpoint {size} does not match the entries: one of entries {from}..{size} was changed, deleted or reordered")]
    Mismatch { from: u64, size: u64 },
    #[error("the kept checkpoint of size {size} is not consistent with this log: {reason}")]
    Inconsistent { size: u64, reason: String },
}

/// A signed checkpoint's tree head, after checking its signature with `public_key` and that its
/// origin is the key's name.
pub(crate) fn open_checkpoint(bytes: &[u8], public_key: &str) -> Result<Checkpoint, String> {
    let verifier = StandardVerifier::new(public_key.trim()).map_err(|e| e.to_string())?;
    let origin = signed_note::Verifier::name(&verifier).to_string();
    let note = Note::from_bytes(bytes).map_err(|e| format!("not a signed note: {e}"))?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| format!("signature does not verify with the log's key: {e}"))?;
    let checkpoint =
        Checkpoint::from_bytes(note.text()).map_err(|e| format!("not a checkpoint: {e}"))?;
    if checkpoint.origin() != origin {
        return Err(format!(
            "origin {:?} is not the key's log {origin:?}",
            checkpoint.origin()
        ));
    }
    Ok(checkpoint)
}

/// Verifies the log in `dir` with the log's public key; `kept` is a checkpoint the auditor
/// kept from an earlier look, which the log must still extend.
pub fn verify(dir: &Path, public_key: &str, kept: Option<&[u8]>) -> Result<Report, Problem> {
    StandardVerifier::new(public_key.trim()).map_err(|e| Problem::Key(e.to_string()))?;
    let (entries, _) = read_entries(dir).map_err(|e| Problem::Unreadable(e.to_string()))?;
    let stored = std::fs::read(dir.join(HASHES)).unwrap_or_default();
    let stored_leaf = |n: u64| -> Option<Hash> {
        let i = usize::try_from(tlog_tiles::stored_hash_index(0, n)).ok()? * 32;
        let bytes: [u8; 32] = stored.get(i..i + 32)?.try_into().ok()?;
        Some(Hash(bytes))
    };
    let mut tree = Tree::default();
    for (n, entry) in entries.iter().enumerate() {
        let n = n as u64;
        if !is_canonical(entry) {
            return Err(Problem::NotCanonical(n));
        }
        tree.append(entry);
        if let Some(leaf) = stored_leaf(n) {
            if tree.leaf(n) != Some(leaf) {
                return Err(Problem::EntryChanged(n));
            }
        }
    }
    let size = tree.size();
    let checkpoints = read_checkpoints(dir).map_err(|e| Problem::Unreadable(e.to_string()))?;
    let mut previous = 0;
    for (named, bytes) in &checkpoints {
        let bad = |reason: String| Problem::BadCheckpoint {
            size: *named,
            reason,
        };
        let checkpoint = open_checkpoint(bytes, public_key).map_err(bad)?;
        if checkpoint.size() != *named {
            return Err(bad(format!(
                "its file says size {named}, it says {}",
                checkpoint.size()
            )));
        }
        if checkpoint.size() > size {
            return Err(Problem::Truncated {
                size: checkpoint.size(),
                entries: size,
            });
        }
        if tree.root(checkpoint.size()) != Some(*checkpoint.hash()) {
            return Err(Problem::Mismatch {
                from: previous,
                size: checkpoint.size(),
            });
        }
        previous = checkpoint.size();
    }
    if let Some(kept) = kept {
        let checkpoint = open_checkpoint(kept, public_key)
            .map_err(|reason| Problem::Inconsistent { size: 0, reason })?;
        let inconsistent = |reason: &str| Problem::Inconsistent {
            size: checkpoint.size(),
            reason: reason.into(),
        };
        if checkpoint.size() > size {
            return Err(inconsistent(
                "the log is shorter than it was (entries were deleted)",
            ));
        }
        if tree.root(checkpoint.size()) != Some(*checkpoint.hash()) {
            return Err(inconsistent(
                "its first entries differ from the ones it signed (history was rewritten)",
            ));
        }
    }
    Ok(Report {
        entries: size,
        checkpoints: checkpoints.len(),
        latest: checkpoints.last().map(|(s, _)| *s),
    })
}
