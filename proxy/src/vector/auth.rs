//! Who is asking the vector shim. Qdrant clients send one credential, in the `api-key` header
//! (or `Authorization: Bearer`). Portcullis reads it as `agent:secret` for an agent with a
//! secret, or as a JWT for an agent with `token = true` (its `sub` names the agent and its
//! `on_behalf_of` the human, as on the SQL side). Every failure is the same 401, and an unknown
//! agent costs the same PBKDF2 as a wrong secret (a decoy verifier), so neither the answer nor
//! its timing tells them apart.
//!
//! A secret's check costs the verifier's PBKDF2 iterations, so keys that passed are remembered
//! for a few minutes, by their HMAC under a per-process key (the cache holds no secret).

use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use hmac::{KeyInit, Mac};

use crate::enforce::Principal;
use crate::identity::Credential;
use crate::server::Shared;

/// How long a verified secret is remembered.
const REMEMBER: Duration = Duration::from_secs(300);

/// An authenticated caller.
pub struct Caller {
    pub agent: String,
    pub on_behalf_of: Option<String>,
    pub principal: Principal,
}

/// Verified `api-key` values, by HMAC.
pub struct KeyCache {
    key: [u8; 32],
    verified: quick_cache::sync::Cache<[u8; 32], (String, Instant)>,
}

impl KeyCache {
    pub fn new(capacity: usize) -> Self {
        KeyCache {
            key: rand::random(),
            verified: quick_cache::sync::Cache::new(capacity),
        }
    }

    fn tag(&self, api_key: &str) -> [u8; 32] {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).expect("any key");
        mac.update(api_key.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// The one answer to every failed authentication.
#[derive(Debug, thiserror::Error)]
#[error("Must provide a valid API key of a Portcullis agent (agent:secret, or the agent's token)")]
pub struct Unauthorized;

/// The credential a request carries, if any.
fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("api-key") {
        return v.to_str().ok();
    }
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Authenticates a request by its headers. Blocking (PBKDF2 on a cache miss): run it on the
/// blocking pool. Tokens, bearer credentials that name a human, are accepted only over TLS
/// unless `jwt.allow_plaintext` (as on the SQL side).
pub fn authenticate(
    shared: &Shared,
    keys: &KeyCache,
    headers: &HeaderMap,
    tls: bool,
) -> Result<Caller, Unauthorized> {
    let presented = credential(headers).ok_or(Unauthorized)?;
    let (agent, on_behalf_of) = if looks_like_jwt(presented) {
        if !tls && !shared.tokens_without_tls {
            return Err(Unauthorized);
        }
        let tokens = shared.tokens.as_ref().ok_or(Unauthorized)?;
        let (agent, on_behalf_of) = tokens.verify_any(presented).map_err(|_| Unauthorized)?;
        match shared.agents.get(&agent) {
            Some(Credential::Token) => (agent, on_behalf_of),
            _ => return Err(Unauthorized),
        }
    } else {
        (check_secret(shared, keys, presented)?, None)
    };
    let principal = Principal::new(&agent, on_behalf_of.as_deref()).map_err(|_| Unauthorized)?;
    Ok(Caller {
        agent,
        on_behalf_of,
        principal,
    })
}

fn looks_like_jwt(s: &str) -> bool {
    s.split('.').count() == 3 && !s.contains(':')
}

/// The caller, if its credential is a secret verified recently: no PBKDF2, so it can run on an
/// async worker; `None` sends the request to [`authenticate`] on the blocking pool.
pub fn remembered(keys: &KeyCache, headers: &HeaderMap) -> Option<Caller> {
    let presented = credential(headers)?;
    if looks_like_jwt(presented) {
        return None;
    }
    let agent = recent(keys, &keys.tag(presented))?;
    let principal = Principal::new(&agent, None).ok()?;
    Some(Caller {
        agent,
        on_behalf_of: None,
        principal,
    })
}

fn recent(keys: &KeyCache, tag: &[u8; 32]) -> Option<String> {
    let (agent, at) = keys.verified.get(tag)?;
    if at.elapsed() < REMEMBER {
        Some(agent)
    } else {
        keys.verified.remove(tag);
        None
    }
}

fn check_secret(shared: &Shared, keys: &KeyCache, presented: &str) -> Result<String, Unauthorized> {
    let tag = keys.tag(presented);
    if let Some(agent) = recent(keys, &tag) {
        return Ok(agent);
    }
    let (agent, secret) = presented.split_once(':').ok_or(Unauthorized)?;
    let ok = match shared.agents.get(agent) {
        Some(Credential::Secret(verifier)) => verifier.check_password(secret),
        _ => {
            // The same work as a wrong secret, so timing does not reveal which agents exist.
            let _ =
                crate::pg::scram::Verifier::decoy(agent, &shared.decoy_key).check_password(secret);
            false
        }
    };
    if !ok {
        return Err(Unauthorized);
    }
    keys.verified
        .insert(tag, (agent.to_string(), Instant::now()));
    Ok(agent.to_string())
}
