//! How a model's version is designated — by stage, alias or number — and
//! which version that is in MLflow right now: the one selector and resolver
//! both services use, so that the registry's `ResolveVersion` and what
//! inference serves can never disagree.

use std::{fmt, str::FromStr};

use crate::{Client, ModelVersion, Result, canonical_stage};

/// How a model's serving version is chosen in MLflow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Selector {
    /// The newest version in a stage (`Production`, `Staging`, ...), canonically spelled.
    Stage(String),
    /// The version an alias points at (`champion`).
    Alias(String),
    /// A pinned version number.
    Version(String),
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Stage(s) => write!(f, "stage:{s}"),
            Selector::Alias(a) => write!(f, "alias:{a}"),
            Selector::Version(v) => write!(f, "version:{v}"),
        }
    }
}

/// A registered model and a selector: `name:Stage`, `name@alias` or
/// `name/version`, e.g. `iris:Production`, `iris@champion`, `iris/3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRef {
    pub name: String,
    pub selector: Selector,
}

impl Selector {
    /// The selector as it follows a name in a [`ModelRef`]: `:Stage`, `@alias`, `/version`.
    pub fn suffix(&self) -> String {
        match self {
            Selector::Stage(s) => format!(":{s}"),
            Selector::Alias(a) => format!("@{a}"),
            Selector::Version(v) => format!("/{v}"),
        }
    }
}

impl fmt::Display for ModelRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.name, self.selector.suffix())
    }
}

impl FromStr for ModelRef {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let s = s.trim();
        let (name, selector) = if let Some((n, a)) = s.split_once('@') {
            (n, Selector::Alias(a.to_owned()))
        } else if let Some((n, st)) = s.split_once(':') {
            let stage = canonical_stage(st)
                .ok_or_else(|| format!("{s:?}: unknown stage {st:?} (use None, Staging, Production or Archived)"))?;
            (n, Selector::Stage(stage.to_owned()))
        } else if let Some((n, v)) = s.rsplit_once('/') {
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("{s:?}: version {v:?} is not a number"));
            }
            (n, Selector::Version(v.to_owned()))
        } else {
            return Err(format!("{s:?}: expected name:Stage, name@alias or name/version"));
        };
        let ok = |x: &str| !x.is_empty() && !x.chars().any(char::is_whitespace);
        let sel_ok = match &selector {
            Selector::Stage(x) | Selector::Alias(x) | Selector::Version(x) => ok(x),
        };
        if !ok(name) || !sel_ok {
            return Err(format!("{s:?}: empty or blank name or selector"));
        }
        Ok(ModelRef { name: name.to_owned(), selector })
    }
}

impl Client {
    /// The version `selector` designates in MLflow now; `None` when it
    /// designates none (no version in the stage, no such alias or version).
    pub async fn resolve(&self, name: &str, selector: &Selector) -> Result<Option<ModelVersion>> {
        let found = match selector {
            Selector::Stage(stage) => return self.latest_version_in_stage(name, stage).await,
            Selector::Alias(alias) => self.get_version_by_alias(name, alias).await,
            Selector::Version(v) => self.get_model_version(name, v).await,
        };
        match found {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form() {
        let p = |s: &str| s.parse::<ModelRef>().unwrap();
        assert_eq!(p("iris:production").selector, Selector::Stage("Production".into()));
        assert_eq!(p("iris@champion").selector, Selector::Alias("champion".into()));
        assert_eq!(p("iris/3").selector, Selector::Version("3".into()));
        assert_eq!(p("iris:Production").to_string(), "iris:Production");
        assert!("iris".parse::<ModelRef>().is_err());
        assert!("iris:Prod".parse::<ModelRef>().is_err());
        assert!("iris/x".parse::<ModelRef>().is_err());
        assert!("@a".parse::<ModelRef>().is_err());
    }
}
