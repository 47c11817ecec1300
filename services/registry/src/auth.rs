//! Bearer-token access control. Mutating calls always need a token when one
//! is configured; reads need it only when `protect_reads` is on. Each token
//! has a name, the caller's identity in the moves Ferry records.

use sha2::{Digest, Sha256};

use crate::error::{RegistryError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Clone, Default)]
pub struct Auth {
    /// SHA-256 of each token, with its name: comparing digests keeps the
    /// comparison constant-time and independent of the token's length.
    tokens: Vec<([u8; 32], String)>,
    protect_reads: bool,
}

/// The identity of a caller when no token is configured.
pub const ANONYMOUS: &str = "anonymous";

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.iter().map(|(_, name)| name.as_str()).collect::<Vec<_>>())
            .field("protect_reads", &self.protect_reads)
            .finish()
    }
}

impl Auth {
    /// One token, whose callers are named `token`.
    pub fn new(token: Option<&str>, protect_reads: bool) -> Self {
        Self::named(token.map(|t| ("token", t)).into_iter(), protect_reads)
    }

    /// Tokens by name (`FERRY_REGISTRY_TOKENS=ci=…,alice=…`).
    pub fn named<'a>(tokens: impl Iterator<Item = (&'a str, &'a str)>, protect_reads: bool) -> Self {
        let tokens = tokens
            .filter(|(_, t)| !t.is_empty())
            .map(|(name, t)| (Sha256::digest(t.as_bytes()).into(), name.to_owned()))
            .collect();
        Self { tokens, protect_reads }
    }

    /// Parses `name=token,name=token`.
    pub fn parse_named(text: &str) -> std::result::Result<Vec<(String, String)>, String> {
        text.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.split_once('=') {
                Some((n, t)) if !n.trim().is_empty() && !t.trim().is_empty() => {
                    Ok((n.trim().to_owned(), t.trim().to_owned()))
                }
                _ => Err("FERRY_REGISTRY_TOKENS takes name=token pairs separated by commas".to_owned()),
            })
            .collect()
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Checks an `Authorization` header value (`Bearer <token>`); returns the
    /// caller's identity (its token's name, or `anonymous` when no token is
    /// configured or a read needs none).
    pub fn check(&self, authorization: Option<&str>, access: Access) -> Result<String> {
        if self.tokens.is_empty() || (access == Access::Read && !self.protect_reads) {
            return Ok(ANONYMOUS.to_owned());
        }
        let presented =
            authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).ok_or_else(
                || RegistryError::Unauthenticated("missing bearer token (authorization: Bearer <token>)".into()),
            )?;
        let got: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        // Every token is compared, so the time taken says nothing about which matched.
        let mut found = None;
        for (want, name) in &self.tokens {
            if constant_time_eq(&got, want) {
                found = Some(name);
            }
        }
        found.cloned().ok_or_else(|| RegistryError::Unauthenticated("invalid bearer token".into()))
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_need_the_token() {
        let auth = Auth::new(Some("s3cret"), false);
        assert!(auth.check(None, Access::Write).is_err());
        assert!(auth.check(Some("Bearer nope"), Access::Write).is_err());
        assert_eq!(auth.check(Some("Bearer s3cret"), Access::Write).unwrap(), "token");
        assert!(auth.check(None, Access::Read).is_ok());
        let strict = Auth::new(Some("s3cret"), true);
        assert!(strict.check(None, Access::Read).is_err());
        assert_eq!(Auth::new(None, true).check(None, Access::Write).unwrap(), ANONYMOUS);
        let named = Auth::parse_named("ci=t1, alice=t2").unwrap();
        let auth = Auth::named(named.iter().map(|(n, t)| (n.as_str(), t.as_str())), false);
        assert_eq!(auth.check(Some("Bearer t2"), Access::Write).unwrap(), "alice", "the token names its caller");
        assert!(Auth::parse_named("ci").is_err());
    }
}
