//! Optional API keys on the data plane (`FERRY_API_KEYS`). Without them the
//! prediction APIs are open to whoever reaches the ports, said at start-up;
//! with them every prediction and metadata call needs one, on either
//! transport, as `Authorization: Bearer <key>` or `x-api-key: <key>` (what
//! Triton's and KServe's clients can send as a header). Health checks, the
//! OpenAPI document and the console's page (not its data) stay open, for
//! probes and for a person to enter a key. Each transport asks `check` and
//! maps its error once (`grpc::status`, `http::ApiError`).

use std::sync::Arc;

use crate::error::ServeError;

/// The configured keys: a name (for logs) and the secret.
#[derive(Clone, Default)]
pub(crate) struct ApiKeys(Arc<Vec<(String, Vec<u8>)>>);

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_tuple("ApiKeys").field(&names).finish()
    }
}

impl ApiKeys {
    /// `name=key` or a bare `key`, comma-separated; keys of at least 16 characters.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (i, entry) in text.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (name, key) = entry.split_once('=').unwrap_or(("", entry));
            let name = if name.is_empty() { format!("key{}", i + 1) } else { name.to_owned() };
            if key.len() < 16 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!(
                    "FERRY_API_KEYS: the key named {name:?} must be at least 16 characters, without spaces"
                ));
            }
            keys.push((name, key.as_bytes().to_vec()));
        }
        Ok(Self(Arc::new(keys)))
    }

    pub(crate) fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// The name of the key presented, from an `authorization` or an
    /// `x-api-key` header's value; always `Ok` when no keys are configured.
    pub(crate) fn check(
        &self,
        authorization: Option<&str>,
        x_api_key: Option<&str>,
    ) -> Result<Option<&str>, ServeError> {
        if self.is_open() {
            return Ok(None);
        }
        let presented = x_api_key.or_else(|| {
            let (scheme, rest) = authorization?.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
        });
        let Some(presented) = presented else {
            return Err(ServeError::Unauthenticated(
                "an API key is required: send it as `Authorization: Bearer <key>` or `x-api-key: <key>`".into(),
            ));
        };
        // Every key is compared, so the time taken does not say which one nearly matched.
        let mut found = None;
        for (name, key) in self.0.iter() {
            if ferry_server::constant_time_eq(presented.as_bytes(), key) {
                found = Some(name.as_str());
            }
        }
        found.map(Some).ok_or_else(|| ServeError::Unauthenticated("the API key is not valid here".into()))
    }
}

/// Paths anyone may reach when keys are configured: probes, the API's
/// description and the console's page (its data needs a key).
pub(crate) fn open_path(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/openapi.json" | "/console" | "/v2/health/live" | "/v2/health/ready")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_by_either_header_and_never_named_in_errors() {
        let keys = ApiKeys::parse("bff=0123456789abcdef, fedcba9876543210fedcba").unwrap();
        assert_eq!(keys.check(Some("Bearer 0123456789abcdef"), None).unwrap(), Some("bff"));
        assert_eq!(keys.check(None, Some("fedcba9876543210fedcba")).unwrap(), Some("key2"));
        for (auth, x) in
            [(None, None), (Some("Bearer nope"), None), (Some("Basic 0123456789abcdef"), None), (None, Some(""))]
        {
            let e = keys.check(auth, x).unwrap_err();
            assert!(matches!(e, ServeError::Unauthenticated(_)), "{auth:?} {x:?}");
            assert!(!e.to_string().contains("0123456789abcdef"), "an error never shows a key");
        }
        assert!(ApiKeys::parse("short").is_err(), "too short a key is refused at start-up");
        assert!(format!("{keys:?}").contains("bff") && !format!("{keys:?}").contains("0123"), "Debug shows names only");
        assert_eq!(ApiKeys::default().check(None, None).unwrap(), None, "no keys: open");
        assert!(open_path("/healthz") && !open_path("/v1/console/state") && !open_path("/predict"));
    }
}
