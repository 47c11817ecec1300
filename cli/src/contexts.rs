//! Named contexts (local, staging, prod): where the services are and which
//! environment variable holds the token, from an optional TOML file —
//! `--config`, `FERRY_CONFIG`, or `~/.config/ferry/config.toml`. Flags and
//! environment variables win over the context; the context over the defaults.
//! Tokens are never stored in the file, only the name of the variable that
//! holds one.
//!
//! ```toml
//! current = "local"
//!
//! [contexts.local]
//! registry = "http://127.0.0.1:50051"
//! inference = "http://127.0.0.1:50052"
//!
//! [contexts.prod]
//! registry = "http://ferry-registry.ferry.svc:50051"
//! inference = "http://ferry-inference.ferry.svc:50052"
//! token_env = "FERRY_PROD_TOKEN"
//! ```

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// The context used when none is named.
    pub(crate) current: Option<String>,
    #[serde(default)]
    pub(crate) contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Context {
    pub(crate) registry: Option<String>,
    pub(crate) inference: Option<String>,
    /// The environment variable holding this context's registry token.
    pub(crate) token_env: Option<String>,
}

/// Where the file is looked for when not named.
pub(crate) fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("ferry/config.toml"))
}

impl Config {
    /// Reads the file: a named one must exist; the default one may not.
    pub(crate) fn load(named: Option<&PathBuf>) -> anyhow::Result<(Self, Option<PathBuf>)> {
        let (path, required) = match named {
            Some(p) => (p.clone(), true),
            None => match default_path() {
                Some(p) => (p, false),
                None => return Ok((Self::default(), None)),
            },
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => return Ok((Self::default(), None)),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let config: Self =
            toml::from_str(&text).with_context(|| format!("{} is not a valid config", path.display()))?;
        Ok((config, Some(path)))
    }

    /// The context named (flag or `FERRY_CONTEXT`), else the file's current one, else none.
    pub(crate) fn pick(&self, named: Option<&str>) -> anyhow::Result<Option<(String, Context)>> {
        let Some(name) = named.or(self.current.as_deref()) else { return Ok(None) };
        match self.contexts.get(name) {
            Some(c) => Ok(Some((name.to_owned(), c.clone()))),
            None => bail!(
                "no context {name:?} in the config; contexts: {:?}",
                self.contexts.keys().map(String::as_str).collect::<Vec<_>>()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_read_and_picked_by_name_or_as_current() {
        let config: Config = toml::from_str(
            r#"current = "local"
               [contexts.local]
               registry = "http://127.0.0.1:50051"
               [contexts.prod]
               registry = "http://registry.prod:50051"
               token_env = "FERRY_PROD_TOKEN""#,
        )
        .unwrap();
        assert_eq!(config.pick(None).unwrap().unwrap().0, "local");
        let (_, prod) = config.pick(Some("prod")).unwrap().unwrap();
        assert_eq!(
            (prod.registry.as_deref(), prod.token_env.as_deref()),
            (Some("http://registry.prod:50051"), Some("FERRY_PROD_TOKEN"))
        );
        assert!(config.pick(Some("staging")).unwrap_err().to_string().contains("\"local\", \"prod\""));
        assert!(toml::from_str::<Config>("[contexts.x]\ntoken = \"s3cret\"").is_err(), "no token in the file");
    }
}
