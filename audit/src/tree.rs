//! The Merkle tree's stored hashes in memory (Go `sumdb/tlog`'s layout, through `tlog_tiles`):
//! appending record n stores its leaf hash and the hashes of the subtrees it completes, so the
//! tree head of any size and the proofs are read from stored hashes without rehashing entries.

use tlog_tiles::{Hash, HashReader};

/// Every stored hash of a tree, in stored-hash index order.
#[derive(Debug, Default, Clone)]
pub(crate) struct Tree {
    hashes: Vec<Hash>,
    records: u64,
}

impl HashReader for Tree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes
            .iter()
            .map(|&i| {
                usize::try_from(i)
                    .ok()
                    .and_then(|i| self.hashes.get(i).copied())
                    .ok_or(tlog_tiles::Error::IndexesNotInTree)
            })
            .collect()
    }
}

impl Tree {
    /// Records appended so far.
    pub fn size(&self) -> u64 {
        self.records
    }

    /// Appends a record with this entry's bytes; returns the hashes newly stored.
    pub fn append(&mut self, entry: &[u8]) -> Vec<Hash> {
        let new = tlog_tiles::stored_hashes(self.records, entry, self)
            .expect("the hashes of earlier records are all stored");
        self.hashes.extend_from_slice(&new);
        self.records += 1;
        new
    }

    /// The leaf hash of record `n`.
    pub fn leaf(&self, n: u64) -> Option<Hash> {
        let i = usize::try_from(tlog_tiles::stored_hash_index(0, n)).ok()?;
        self.hashes.get(i).copied().filter(|_| n < self.records)
    }

    /// The tree head of the first `n` records.
    pub fn root(&self, n: u64) -> Option<Hash> {
        (n <= self.records).then(|| tlog_tiles::tree_hash(n, self).ok())?
    }

    /// The inclusion proof of record `n` in the tree of size `size`.
    pub fn prove(&self, size: u64, n: u64) -> Option<Vec<Hash>> {
        (n < size && size <= self.records).then(|| tlog_tiles::prove_record(size, n, self).ok())?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_check_against_roots() {
        let mut t = Tree::default();
        for i in 0..37u32 {
            t.append(format!("entry {i}").as_bytes());
        }
        for size in [1, 2, 7, 8, 37] {
            let root = t.root(size).unwrap();
            for n in 0..size {
                let proof = t.prove(size, n).unwrap();
                let leaf = tlog_tiles::record_hash(format!("entry {n}").as_bytes());
                tlog_tiles::check_record(&proof, size, root, n, leaf).unwrap();
                assert!(
                    tlog_tiles::check_record(
                        &proof,
                        size,
                        root,
                        n,
                        t.leaf((n + 1) % size).unwrap()
                    )
                    .is_err()
                        || size == 1
                );
            }
        }
        assert_eq!(t.root(0), Some(tlog_tiles::EMPTY_HASH));
        assert!(t.root(38).is_none());
    }
}
