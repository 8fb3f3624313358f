//! Server side of SCRAM-SHA-256 (RFC 5802/7677) as PostgreSQL speaks it: agents prove they hold
//! their secret without sending it; Portcullis stores only verifiers.
//!
//! Channel binding (SCRAM-SHA-256-PLUS) is not offered; clients that require it are refused.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = hmac::Hmac<Sha256>;

/// A stored SCRAM-SHA-256 verifier, in PostgreSQL's `SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`.
#[derive(Clone)]
pub struct Verifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Verifier(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")]
    BadVerifier,
    #[error("malformed SCRAM message")]
    Malformed,
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("authentication failed")]
    Failed,
}

impl Verifier {
    /// Parses PostgreSQL's verifier format.
    pub fn parse(s: &str) -> Result<Self, ScramError> {
        let rest = s
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(ScramError::BadVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(ScramError::BadVerifier)?;
        let (iter, salt) = params.split_once(':').ok_or(ScramError::BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(ScramError::BadVerifier)?;
        let iterations: u32 = iter.parse().map_err(|_| ScramError::BadVerifier)?;
        if iterations == 0 {
            return Err(ScramError::BadVerifier);
        }
        let key = |k: &str| -> Result<[u8; 32], ScramError> {
            B64.decode(k)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or(ScramError::BadVerifier)
        };
        Ok(Verifier {
            iterations,
            salt: B64.decode(salt).map_err(|_| ScramError::BadVerifier)?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// Derives a verifier from a plaintext secret with a fresh random salt.
    pub fn from_secret(secret: &str) -> Self {
        Self::parse(&postgres_protocol::password::scram_sha_256(
            secret.as_bytes(),
        ))
        .expect("postgres-protocol produces valid verifiers")
    }

    /// Whether `password` is the secret this verifier was made from (the same SASLprep and
    /// PBKDF2 as a SCRAM exchange). Costs the verifier's iterations: the vector shim, whose
    /// clients send a plaintext API key, remembers keys it has checked.
    pub fn check_password(&self, password: &str) -> bool {
        let normalized = match stringprep::saslprep(password) {
            Ok(p) => p.into_owned(),
            Err(_) => password.to_string(),
        };
        let pw = normalized.as_bytes();
        let mut first = self.salt.clone();
        first.extend_from_slice(&1u32.to_be_bytes());
        let mut u = hmac(pw, &first);
        let mut salted = u;
        for _ in 1..self.iterations {
            u = hmac(pw, &u);
            for (s, x) in salted.iter_mut().zip(u) {
                *s ^= x;
            }
        }
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        constant_time_eq(&stored, &self.stored_key)
    }

    /// A verifier no secret matches, with a salt derived from `name` and `instance_key`, so that
    /// unknown agents see the same exchange (stable salt, same iterations) as known ones.
    pub fn decoy(name: &str, instance_key: &[u8; 32]) -> Self {
        let mut mac = HmacSha256::new_from_slice(instance_key).expect("any key length");
        mac.update(name.as_bytes());
        let digest = mac.finalize().into_bytes();
        Verifier {
            iterations: 4096,
            salt: digest[..16].to_vec(),
            stored_key: rand::random(),
            server_key: rand::random(),
        }
    }
}

/// The server's state between its first message and the client's final message.
pub struct Exchange {
    verifier: Verifier,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
}

impl Exchange {
    /// Takes the client-first-message and returns the exchange and the server-first-message.
    pub fn start(verifier: Verifier, client_first: &[u8]) -> Result<(Self, String), ScramError> {
        let msg = std::str::from_utf8(client_first).map_err(|_| ScramError::Malformed)?;
        // gs2-header = cbind-flag "," [authzid] ","
        let mut parts = msg.splitn(3, ',');
        let flag = parts.next().ok_or(ScramError::Malformed)?;
        let authzid = parts.next().ok_or(ScramError::Malformed)?;
        let bare = parts.next().ok_or(ScramError::Malformed)?;
        match flag {
            "n" | "y" => {}
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed),
        }
        if !authzid.is_empty() && !authzid.starts_with("a=") {
            return Err(ScramError::Malformed);
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        if client_nonce.is_empty()
            || !client_nonce
                .bytes()
                .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::Malformed);
        }
        let server_nonce = B64.encode(rand::random::<[u8; 18]>());
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let exchange = Exchange {
            verifier,
            gs2_header: format!("{flag},{authzid},"),
            client_first_bare: bare.to_string(),
            server_first: server_first.clone(),
            nonce,
        };
        Ok((exchange, server_first))
    }

    /// Checks the client-final-message's proof; on success returns the server-final-message.
    pub fn finish(self, client_final: &[u8]) -> Result<String, ScramError> {
        let msg = std::str::from_utf8(client_final).map_err(|_| ScramError::Malformed)?;
        let (without_proof, proof) = msg.rsplit_once(",p=").ok_or(ScramError::Malformed)?;
        let mut attrs = without_proof.split(',');
        let binding = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed)?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed)?;
        if B64.decode(binding).ok().as_deref() != Some(self.gs2_header.as_bytes()) {
            return Err(ScramError::Failed);
        }
        if nonce != self.nonce {
            return Err(ScramError::Failed);
        }
        let proof: [u8; 32] = B64
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or(ScramError::Malformed)?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = hmac(&self.verifier.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for i in 0..32 {
            client_key[i] = proof[i] ^ client_signature[i];
        }
        let computed: [u8; 32] = Sha256::digest(client_key).into();
        if !constant_time_eq(&computed, &self.verifier.stored_key) {
            return Err(ScramError::Failed);
        }
        let server_signature = hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    fn run(secret_stored: &str, secret_client: &str) -> Result<(), ScramError> {
        let verifier = Verifier::from_secret(secret_stored);
        let mut client = ScramSha256::new(secret_client.as_bytes(), ChannelBinding::unsupported());
        let (exchange, server_first) = Exchange::start(verifier, client.message())?;
        client.update(server_first.as_bytes()).unwrap();
        let server_final = exchange.finish(client.message())?;
        client
            .finish(server_final.as_bytes())
            .map_err(|_| ScramError::Failed)
    }

    #[test]
    fn the_right_secret_authenticates_both_ways() {
        run("s3cret", "s3cret").unwrap();
    }

    #[test]
    fn a_wrong_secret_fails() {
        assert_eq!(run("s3cret", "guess"), Err(ScramError::Failed));
    }

    #[test]
    fn verifiers_parse_and_reject_garbage() {
        let v = postgres_protocol::password::scram_sha_256(b"x");
        assert!(Verifier::parse(&v).is_ok());
        assert!(Verifier::parse("md5abc").is_err());
        assert!(Verifier::parse("SCRAM-SHA-256$0:c2FsdA==$a:b").is_err());
    }

    #[test]
    fn channel_binding_requests_are_refused() {
        let v = Verifier::from_secret("x");
        assert_eq!(
            Exchange::start(v, b"p=tls-server-end-point,,n=,r=abc").err(),
            Some(ScramError::ChannelBinding)
        );
    }

    #[test]
    fn decoys_are_stable_in_salt() {
        let k = [7u8; 32];
        assert_eq!(Verifier::decoy("a", &k).salt, Verifier::decoy("a", &k).salt);
        assert_ne!(Verifier::decoy("a", &k).salt, Verifier::decoy("b", &k).salt);
    }

    #[test]
    fn a_plaintext_secret_checks_against_its_verifier() {
        let v = Verifier::from_secret("s3cret-ü");
        assert!(v.check_password("s3cret-ü"));
        assert!(!v.check_password("s3cret-u"));
        assert!(!v.check_password(""));
        let decoy = Verifier::decoy("nobody", &[7; 32]);
        assert!(!decoy.check_password("s3cret-ü"));
    }
}
