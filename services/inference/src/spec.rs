//! Which version of which registered model to serve.

use std::{fmt, str::FromStr};

use ferry_mlflow::ModelRef;
pub use ferry_mlflow::Selector;

/// `name:Stage`, `name@alias` or `name/version` (see `ferry_mlflow::ModelRef`),
/// and whether it is served here or forwarded.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelSpec {
    pub name: String,
    pub selector: Selector,
    /// Served by forwarding to the server named in the registered model's tags.
    pub remote: bool,
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        ModelRef { name: self.name.clone(), selector: self.selector.clone() }.fmt(f)
    }
}

impl FromStr for ModelSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ModelRef { name, selector } = s.parse()?;
        Ok(ModelSpec { name, selector, remote: false })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form() {
        let p = |s: &str| s.parse::<ModelSpec>().unwrap();
        assert_eq!(p("iris:production").selector, Selector::Stage("Production".into()));
        assert_eq!(p("iris@champion").selector, Selector::Alias("champion".into()));
        assert_eq!(p("iris/3").selector, Selector::Version("3".into()));
        assert_eq!(p("iris:Production").to_string(), "iris:Production");
        assert!("iris".parse::<ModelSpec>().is_err());
        assert!("iris:Prod".parse::<ModelSpec>().is_err());
        assert!("iris/x".parse::<ModelSpec>().is_err());
        assert!("@a".parse::<ModelSpec>().is_err());
    }
}
