//! Bearer-token access control. Mutating calls always need the token when one
//! is configured; reads need it only when `protect_reads` is on.

use sha2::{Digest, Sha256};

use crate::error::{RegistryError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Clone, Default)]
pub struct Auth {
    /// SHA-256 of the token: comparing digests keeps the comparison
    /// constant-time and independent of the token's length.
    token: Option<[u8; 32]>,
    protect_reads: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("token", &self.token.map(|_| "<redacted>"))
            .field("protect_reads", &self.protect_reads)
            .finish()
    }
}

impl Auth {
    pub fn new(token: Option<&str>, protect_reads: bool) -> Self {
        Self { token: token.filter(|t| !t.is_empty()).map(|t| Sha256::digest(t.as_bytes()).into()), protect_reads }
    }

    /// Checks an `Authorization` header value (`Bearer <token>`).
    pub fn check(&self, authorization: Option<&str>, access: Access) -> Result<()> {
        let Some(want) = &self.token else { return Ok(()) };
        if access == Access::Read && !self.protect_reads {
            return Ok(());
        }
        let presented =
            authorization.and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer "))).ok_or_else(
                || RegistryError::Unauthenticated("missing bearer token (authorization: Bearer <token>)".into()),
            )?;
        let got: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        if constant_time_eq(&got, want) {
            Ok(())
        } else {
            Err(RegistryError::Unauthenticated("invalid bearer token".into()))
        }
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
        assert!(auth.check(Some("Bearer s3cret"), Access::Write).is_ok());
        assert!(auth.check(None, Access::Read).is_ok());
        let strict = Auth::new(Some("s3cret"), true);
        assert!(strict.check(None, Access::Read).is_err());
        assert!(Auth::new(None, true).check(None, Access::Write).is_ok());
    }
}
