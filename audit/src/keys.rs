//! Log keys in the C2SP signed-note encodings: the private key as `PRIVATE+KEY+<name>+<id>+<key>`
//! (kept by the node, never logged), the public key as `<name>+<id>+<key>` (given to auditors).
//! The name is the log's origin, `portcullis/<node-id>`.

use signed_note::{Signer, StandardSigner};

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a signed-note private key (PRIVATE+KEY+name+id+key): {0}")]
    Private(String),
    #[error("not a signed-note public key (name+id+key): {0}")]
    Public(String),
    #[error("key name {0:?} is not a valid signed-note name (no spaces or '+')")]
    Name(String),
}

/// A new Ed25519 key pair for the log named `origin`: (private, public).
pub fn generate_key(origin: &str) -> Result<(String, String), KeyError> {
    if !signed_note::is_key_name_valid(origin) {
        return Err(KeyError::Name(origin.into()));
    }
    Ok(signed_note::generate_key(&mut rand_core::OsRng, origin))
}

/// The public key of a private one.
pub fn verifier_key_of(private: &str) -> Result<String, KeyError> {
    let signer = signer(private)?;
    // PRIVATE+KEY+name+id+key: the key's base64 may itself hold '+'.
    let key = private
        .trim()
        .splitn(5, '+')
        .nth(4)
        .ok_or_else(|| KeyError::Private("no key".into()))?;
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, key)
        .map_err(|e| KeyError::Private(e.to_string()))?;
    let secret: [u8; 32] = bytes
        .get(1..33)
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| KeyError::Private("not an Ed25519 key".into()))?;
    let public = ed25519_dalek::SigningKey::from_bytes(&secret).verifying_key();
    Ok(signed_note::new_ed25519_verifier_key(
        signer.name(),
        &public,
    ))
}

pub(crate) fn signer(private: &str) -> Result<StandardSigner, KeyError> {
    StandardSigner::new(private.trim()).map_err(|e| KeyError::Private(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let (private, public) = generate_key("portcullis/node-1").unwrap();
        assert!(private.starts_with("PRIVATE+KEY+portcullis/node-1+"));
        assert!(public.starts_with("portcullis/node-1+"));
        assert_eq!(verifier_key_of(&private).unwrap(), public);
        assert!(signer(&public).is_err());
        assert!(generate_key("has space").is_err());
    }
}
