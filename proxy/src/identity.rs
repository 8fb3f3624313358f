//! Agent identity: how each configured agent proves who it is — its secret over SCRAM-SHA-256,
//! or a signed token (JWT) sent as the password — and, with a token, the human it acts for.
//!
//! A token must be signed with the configured key and algorithm, unexpired (`exp` required),
//! from the configured issuer and for the configured audience when those are set, and name
//! the connecting agent in `sub`. Its optional `on_behalf_of` claim becomes the Cedar context's
//! `on_behalf_of` (`User::"<id>"`): a delegation the agent cannot assert on its own.

use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::pg::scram::Verifier;

/// How one configured agent authenticates.
#[derive(Clone)]
pub enum Credential {
    Secret(Verifier),
    /// A JWT as the password, checked by the configured [`TokenVerifier`].
    Token,
}

/// Checks agent tokens.
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid token: {0}")]
    Invalid(#[from] jsonwebtoken::errors::Error),
    #[error("the token is for {0:?}, not the connecting agent")]
    WrongSubject(String),
    #[error("the token's on_behalf_of is empty")]
    EmptyDelegation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    on_behalf_of: Option<String>,
}

impl TokenVerifier {
    /// `algorithm` is `HS256` (with `key` the shared secret) or `RS256`/`ES256` (with `key` the
    /// issuer's public key, PEM).
    pub fn new(
        algorithm: &str,
        key: &[u8],
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Result<Self, String> {
        let (algorithm, key) = match algorithm {
            "HS256" => (Algorithm::HS256, DecodingKey::from_secret(key)),
            "RS256" => (
                Algorithm::RS256,
                DecodingKey::from_rsa_pem(key).map_err(|e| e.to_string())?,
            ),
            "ES256" => (
                Algorithm::ES256,
                DecodingKey::from_ec_pem(key).map_err(|e| e.to_string())?,
            ),
            other => {
                return Err(format!(
                    "unsupported algorithm {other:?} (HS256, RS256, ES256)"
                ))
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.required_spec_claims.insert("aud".into());
            }
            None => validation.validate_aud = false,
        }
        Ok(TokenVerifier { key, validation })
    }

    /// Verifies `token` for `agent`; returns the human it acts for, if any.
    pub fn verify(&self, token: &str, agent: &str) -> Result<Option<String>, TokenError> {
        let (sub, on_behalf_of) = self.verify_any(token)?;
        if sub != agent {
            return Err(TokenError::WrongSubject(sub));
        }
        Ok(on_behalf_of)
    }

    /// Verifies `token` for whichever agent its `sub` names (the vector shim, whose clients
    /// send only a token); returns the agent and the human it acts for, if any.
    pub fn verify_any(&self, token: &str) -> Result<(String, Option<String>), TokenError> {
        let claims = decode::<Claims>(token, &self.key, &self.validation)?.claims;
        if claims.on_behalf_of.as_deref() == Some("") {
            return Err(TokenError::EmptyDelegation);
        }
        Ok((claims.sub, claims.on_behalf_of))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};

    fn token(claims: &serde_json::Value, key: &[u8]) -> String {
        encode(&Header::default(), claims, &EncodingKey::from_secret(key)).unwrap()
    }

    fn later() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn checks_signature_subject_expiry_issuer_audience_and_algorithm() {
        let v = TokenVerifier::new("HS256", b"k", Some("idp"), Some("portcullis")).unwrap();
        let good = serde_json::json!({
            "sub": "bot", "exp": later(), "iss": "idp", "aud": "portcullis", "on_behalf_of": "alice"
        });
        assert_eq!(
            v.verify(&token(&good, b"k"), "bot").unwrap().as_deref(),
            Some("alice")
        );
        assert!(
            v.verify(&token(&good, b"other"), "bot").is_err(),
            "signature"
        );
        assert!(matches!(
            v.verify(&token(&good, b"k"), "other-bot"),
            Err(TokenError::WrongSubject(_))
        ));
        let with = |key: &str, value: serde_json::Value| {
            let mut c = good.clone();
            c[key] = value;
            token(&c, b"k")
        };
        let past = jsonwebtoken::get_current_timestamp() - 120;
        assert!(
            v.verify(&with("exp", past.into()), "bot").is_err(),
            "expiry"
        );
        assert!(
            v.verify(&with("iss", "evil".into()), "bot").is_err(),
            "issuer"
        );
        assert!(
            v.verify(&with("aud", "elsewhere".into()), "bot").is_err(),
            "audience"
        );
        assert!(
            v.verify(&with("on_behalf_of", "".into()), "bot").is_err(),
            "empty"
        );
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(
            v.verify(&token(&no_exp, b"k"), "bot").is_err(),
            "exp is required"
        );
        let other_alg = encode(
            &Header::new(Algorithm::HS384),
            &good,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(
            v.verify(&other_alg, "bot").is_err(),
            "only the configured algorithm"
        );
    }
}
