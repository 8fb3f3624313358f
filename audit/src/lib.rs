//! Portcullis's audit log, as a library with no networking: what the proxy writes and what an
//! auditor runs to check it.
//!
//! A log is a directory holding canonical JSON entries, one per line (`entries`), the RFC 6962
//! Merkle tree's stored hashes (`hashes`, derivable from the entries), and checkpoints: C2SP
//! `tlog-checkpoint` tree heads in the C2SP `signed-note` format, signed with the node's Ed25519
//! key (`checkpoints/<size>`, the latest also as `checkpoint`). [`verify`] rebuilds the tree
//! from the entries and checks every checkpoint against it; [`prove`] and [`verify_proof`] make
//! and check C2SP `tlog-proof` inclusion proofs offline, with the public key alone.

mod canonical;
mod keys;
mod log;
mod proof;
mod search;
mod tail;
mod tree;
mod verify;

pub use canonical::{canonical, CanonicalError};
pub use keys::{generate_key, verifier_key_of, KeyError};
pub use log::{Log, LogError};
pub use proof::{find, prove, verify_proof, ProofError, Proven};
pub use search::{search, search_entries, Hit, Query};
pub use tail::{latest_checkpoint, Tail};
pub use verify::{verify, Problem, Report};

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of `bytes`, in hex (how records name digests and snapshots).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(bytes))
}

/// The file names of a log directory.
pub mod layout {
    /// Canonical JSON entries, one per line.
    pub const ENTRIES: &str = "entries";
    /// The Merkle tree's stored hashes, 32 bytes each, in `tlog` stored-hash order.
    pub const HASHES: &str = "hashes";
    /// Every checkpoint published, one file per tree size (zero-padded to 20 digits).
    pub const CHECKPOINTS: &str = "checkpoints";
    /// The latest checkpoint.
    pub const LATEST: &str = "checkpoint";
}
