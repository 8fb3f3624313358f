//! The key of `@mask("hash")`: masked values are HMAC-SHA256(key, value), computed by PostgreSQL
//! from a setting Portcullis gives each upstream session at login (`portcullis.mask_key`), so the
//! key is never in the statement text, in `EXPLAIN VERBOSE` output or in a log of statements.
//! Agents cannot read or change `portcullis.` settings (the gate refuses `SHOW`,
//! `current_setting`, `set_config` and `SET` of them, and `pg_settings` is not readable).
//!
//! The setting holds the HMAC's two padded keys, `key ⊕ ipad` and `key ⊕ opad` (RFC 2104), in hex,
//! so that SQL computes `sha256(k_opad || sha256(k_ipad || value))` with built-ins only.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The upstream setting that carries the key.
pub const SETTING: &str = "portcullis.mask_key";

/// The shortest secret accepted from a key file, in bytes.
const MIN_KEY_BYTES: usize = 16;

/// Reads the key from `path` (its contents, surrounding whitespace trimmed).
pub fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("policies.hash_key_file {}: {e}", path.display()))?;
    let key = text.trim_ascii().to_vec();
    if key.len() < MIN_KEY_BYTES {
        anyhow::bail!(
            "policies.hash_key_file {}: the key must be at least {MIN_KEY_BYTES} bytes",
            path.display()
        );
    }
    Ok(key)
}

/// A key made now, for a run without a key file (hashed values change at each restart).
pub fn random() -> Vec<u8> {
    rand::random::<[u8; 32]>().to_vec()
}

/// The value of [`SETTING`] for `key`: hex of `key ⊕ ipad` then hex of `key ⊕ opad`.
pub fn setting_value(key: &[u8]) -> String {
    let mut block = [0u8; 64];
    if key.len() > block.len() {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut out = String::with_capacity(256);
    for pad in [0x36u8, 0x5c] {
        for b in block {
            out.push_str(&format!("{:02x}", b ^ pad));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{KeyInit, Mac};

    /// What PostgreSQL computes from the setting, done here with the same steps, equals the
    /// HMAC of the `hmac` crate.
    #[test]
    fn the_setting_computes_hmac_sha256() {
        for key in [&b"sixteen byte key"[..], &[7u8; 100][..]] {
            let value = setting_value(key);
            let bytes: Vec<u8> = (0..value.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&value[i..i + 2], 16).unwrap())
                .collect();
            let (ipad, opad) = bytes.split_at(64);
            let inner = Sha256::new()
                .chain_update(ipad)
                .chain_update(b"a@b.c")
                .finalize();
            let outer = Sha256::new()
                .chain_update(opad)
                .chain_update(inner)
                .finalize();
            let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
            mac.update(b"a@b.c");
            assert_eq!(outer.as_slice(), mac.finalize().into_bytes().as_slice());
        }
    }
}
