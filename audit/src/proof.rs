//! Inclusion proofs in the C2SP `tlog-proof` format: the entry's index, the Merkle path to the
//! root of a checkpointed tree, and that signed checkpoint. Checking one needs nothing but the
//! entry, the proof and the log's public key.

use std::path::Path;

use tlog_tiles::Hash;

use crate::layout::LATEST;
use crate::log::read_entries;
use crate::tree::Tree;
use crate::verify::open_checkpoint;

const HEADER: &str = "c2sp.org/tlog-proof@v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProofError {
    #[error("cannot read the log: {0}")]
    Unreadable(String),
    #[error("no entry {0} in the log's latest checkpoint")]
    NoEntry(u64),
    #[error("malformed proof: {0}")]
    Malformed(String),
    #[error("the checkpoint: {0}")]
    Checkpoint(String),
    #[error("the entry is not included at index {index} in the checkpointed tree of size {size}")]
    NotIncluded { index: u64, size: u64 },
}

/// What a verified proof establishes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    pub origin: String,
    pub index: u64,
    pub size: u64,
}

/// The index and bytes of the entry whose `"id"` is `id`.
pub fn find(dir: &Path, id: &str) -> Result<Option<(u64, Vec<u8>)>, ProofError> {
    let (entries, _) = read_entries(dir).map_err(|e| ProofError::Unreadable(e.to_string()))?;
    Ok(entries.into_iter().enumerate().find_map(|(i, e)| {
        let v: serde_json::Value = serde_json::from_slice(&e).ok()?;
        (v.get("id")?.as_str()? == id).then_some((i as u64, e))
    }))
}

/// The proof that entry `index` is in the tree of the log's latest checkpoint.
pub fn prove(dir: &Path, index: u64) -> Result<String, ProofError> {
    let (entries, _) = read_entries(dir).map_err(|e| ProofError::Unreadable(e.to_string()))?;
    let checkpoint =
        std::fs::read(dir.join(LATEST)).map_err(|e| ProofError::Unreadable(e.to_string()))?;
    let note = signed_note::Note::from_bytes(&checkpoint)
        .map_err(|e| ProofError::Checkpoint(e.to_string()))?;
    let head = tlog_tiles::Checkpoint::from_bytes(note.text())
        .map_err(|e| ProofError::Checkpoint(e.to_string()))?;
    let mut tree = Tree::default();
    for entry in entries.iter().take(head.size() as usize) {
        tree.append(entry);
    }
    let path = tree
        .prove(head.size(), index)
        .ok_or(ProofError::NoEntry(index))?;
    let mut out = format!("{HEADER}\nindex {index}\n");
    for h in path {
        out.push_str(&h.to_string());
        out.push('\n');
    }
    out.push('\n');
    out.push_str(
        std::str::from_utf8(&checkpoint).map_err(|e| ProofError::Checkpoint(e.to_string()))?,
    );
    Ok(out)
}

/// Checks that `entry` (its exact bytes, without a newline) is in the log of `public_key` at the
/// index `proof` names, under the checkpoint it carries.
pub fn verify_proof(entry: &[u8], proof: &str, public_key: &str) -> Result<Proven, ProofError> {
    let malformed = |what: &str| ProofError::Malformed(what.into());
    let (head, checkpoint) = proof
        .split_once("\n\n")
        .ok_or_else(|| malformed("no blank line before the checkpoint"))?;
    let mut lines = head.lines();
    if lines.next() != Some(HEADER) {
        return Err(malformed("it does not start with c2sp.org/tlog-proof@v1"));
    }
    let mut line = lines.next().ok_or_else(|| malformed("no index line"))?;
    if line.starts_with("extra ") {
        line = lines.next().ok_or_else(|| malformed("no index line"))?;
    }
    let index: u64 = line
        .strip_prefix("index ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| malformed("bad index line"))?;
    let path: Vec<Hash> = lines
        .map(|l| Hash::parse_hash(l).map_err(|_| malformed("bad hash line")))
        .collect::<Result<_, _>>()?;
    let checkpoint =
        open_checkpoint(checkpoint.as_bytes(), public_key).map_err(ProofError::Checkpoint)?;
    let leaf = tlog_tiles::record_hash(entry);
    tlog_tiles::check_record(&path, checkpoint.size(), *checkpoint.hash(), index, leaf).map_err(
        |_| ProofError::NotIncluded {
            index,
            size: checkpoint.size(),
        },
    )?;
    Ok(Proven {
        origin: checkpoint.origin().to_string(),
        index,
        size: checkpoint.size(),
    })
}
