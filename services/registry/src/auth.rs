//! Bearer-token access control with roles. Each token has a name — the
//! caller's identity in the moves Ferry records — and a role:
//!
//! | role | may |
//! |---|---|
//! | `read` | watch, get, list, resolve |
//! | `replica` | read, and report traffic (what inference replicas need) |
//! | `write` | replica's, and register, stage, alias, roll back, set policies |
//! | `admin` | everything (the single `FERRY_REGISTRY_TOKEN` is admin) |
//!
//! Mutating calls always need a token when one is configured; reads need it
//! only when `protect_reads` is on. A token whose role does not cover the
//! call gets PERMISSION_DENIED / 403; none, or an unknown one, UNAUTHENTICATED / 401.

use sha2::{Digest, Sha256};

use crate::error::{RegistryError, Result};

/// What a call needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Read,
    /// `ReportTraffic`: the figures rollouts are decided on.
    Report,
    Write,
}

/// What a token may do; each role covers the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Replica,
    Write,
    Admin,
}

impl Access {
    /// The least role that may make such a call.
    fn least_role(self) -> Role {
        match self {
            Access::Read => Role::Read,
            Access::Report => Role::Replica,
            Access::Write => Role::Write,
        }
    }
}

impl Role {
    fn allows(self, access: Access) -> bool {
        self >= access.least_role()
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Role::Read),
            "replica" => Some(Role::Replica),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Replica => "replica",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// A configured token: its name, role and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub name: String,
    pub role: Role,
    pub secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("name", &self.name).field("role", &self.role).finish_non_exhaustive()
    }
}

#[derive(Clone, Default)]
pub struct Auth {
    /// SHA-256 of each token, with its name and role: comparing digests keeps
    /// the comparison constant-time and independent of the token's length.
    tokens: Vec<([u8; 32], String, Role)>,
    protect_reads: bool,
}

/// The identity of a caller when no token is configured.
pub const ANONYMOUS: &str = "anonymous";

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.iter().map(|(_, name, role)| (name.as_str(), *role)).collect::<Vec<_>>())
            .field("protect_reads", &self.protect_reads)
            .finish()
    }
}

impl Auth {
    /// One token, whose callers are named `token`, with every right.
    pub fn new(token: Option<&str>, protect_reads: bool) -> Self {
        let token = token.map(|t| Token { name: "token".into(), role: Role::Admin, secret: t.into() });
        Self::with_tokens(token.into_iter(), protect_reads)
    }

    pub fn with_tokens(tokens: impl Iterator<Item = Token>, protect_reads: bool) -> Self {
        let tokens = tokens
            .filter(|t| !t.secret.is_empty())
            .map(|t| (Sha256::digest(t.secret.as_bytes()).into(), t.name, t.role))
            .collect();
        Self { tokens, protect_reads }
    }

    /// Parses `name=token` (role `write`) and `name:role=token` pairs separated by commas.
    pub fn parse_named(text: &str) -> std::result::Result<Vec<Token>, String> {
        const HOW: &str = "FERRY_REGISTRY_TOKENS takes name=token or name:role=token pairs separated by commas \
                           (roles: read, replica, write, admin)";
        text.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| {
                let (who, secret) = p.split_once('=').ok_or(HOW)?;
                let (name, role) = match who.split_once(':') {
                    Some((n, r)) => (n.trim(), Role::parse(r.trim()).ok_or(HOW)?),
                    None => (who.trim(), Role::Write),
                };
                if name.is_empty() || secret.trim().is_empty() {
                    return Err(HOW.to_owned());
                }
                Ok(Token { name: name.to_owned(), role, secret: secret.trim().to_owned() })
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
        for (want, name, role) in &self.tokens {
            if constant_time_eq(&got, want) {
                found = Some((name, *role));
            }
        }
        let (name, role) = found.ok_or_else(|| RegistryError::Unauthenticated("invalid bearer token".into()))?;
        if !role.allows(access) {
            return Err(RegistryError::PermissionDenied(format!(
                "token {name:?} has role {}; this call needs {} or above",
                role.as_str(),
                access.least_role().as_str()
            )));
        }
        Ok(name.clone())
    }
}

pub(crate) use ferry_server::constant_time_eq;

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
        let auth = Auth::with_tokens(named.into_iter(), false);
        assert_eq!(auth.check(Some("Bearer t2"), Access::Write).unwrap(), "alice", "the token names its caller");
        assert!(Auth::parse_named("ci").is_err());
    }

    #[test]
    fn a_role_covers_its_calls_and_no_more() {
        let tokens = Auth::parse_named("dash:read=r, pods:replica=p, ci:write=w, ops:admin=a").unwrap();
        assert_eq!(tokens[1], Token { name: "pods".into(), role: Role::Replica, secret: "p".into() });
        let auth = Auth::with_tokens(tokens.into_iter(), true);
        let code = |token: &str, access| match auth.check(Some(&format!("Bearer {token}")), access) {
            Ok(_) => "ok",
            Err(RegistryError::PermissionDenied(_)) => "denied",
            Err(RegistryError::Unauthenticated(_)) => "unauthenticated",
            Err(_) => "other",
        };
        let table: Vec<_> = ["r", "p", "w", "a", "x"]
            .iter()
            .map(|t| [Access::Read, Access::Report, Access::Write].map(|a| code(t, a)))
            .collect();
        assert_eq!(
            table,
            [
                ["ok", "denied", "denied"],
                ["ok", "ok", "denied"],
                ["ok", "ok", "ok"],
                ["ok", "ok", "ok"],
                ["unauthenticated", "unauthenticated", "unauthenticated"]
            ]
        );
        let err = auth.check(Some("Bearer r"), Access::Write).unwrap_err().to_string();
        assert!(
            err.contains("\"dash\" has role read") && err.contains("needs write") && !err.contains("Bearer"),
            "{err}"
        );
        assert!(Auth::parse_named("ci:owner=t").unwrap_err().contains("roles: read, replica, write, admin"));
        assert!(
            format!("{:?}", Auth::parse_named("ci:write=t0psecret").unwrap()).contains("ci")
                && !format!("{:?}", Auth::parse_named("ci:write=t0psecret").unwrap()).contains("t0psecret")
        );
    }
}
