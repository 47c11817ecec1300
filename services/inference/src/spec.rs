//! Which version of which registered model to serve.

use std::{collections::BTreeMap, fmt, str::FromStr};

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
    /// Versions fixed by the operator (`FERRY_PIN`), overriding the registry.
    pub pin: Pin,
}

/// An operator's override of the registry, for emergencies: the model's
/// configured selector, or one variant of its traffic policy, held at a version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Pin {
    /// The configured selector a model-level pin replaced (the spec's selector is the pinned version).
    pub overrides: Option<Selector>,
    /// Variant name → version.
    pub variants: BTreeMap<String, String>,
}

/// One `FERRY_PIN` entry: `MODEL=VERSION` or `MODEL#VARIANT=VERSION`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinArg {
    pub model: String,
    pub variant: Option<String>,
    pub version: String,
}

impl FromStr for PinArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{s:?}: expected MODEL=VERSION or MODEL#VARIANT=VERSION");
        let (target, version) = s.trim().rsplit_once('=').ok_or_else(bad)?;
        if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("{s:?}: version {version:?} is not a number"));
        }
        let (model, variant) = match target.split_once('#') {
            Some((m, v)) if !v.is_empty() => (m, Some(v.to_owned())),
            Some(_) => return Err(bad()),
            None => (target, None),
        };
        if model.is_empty() {
            return Err(bad());
        }
        Ok(PinArg { model: model.to_owned(), variant, version: version.to_owned() })
    }
}

/// Applies pins to the configured models; a pin naming a model not served here is refused.
pub fn apply_pins(specs: &mut [ModelSpec], pins: &[PinArg]) -> Result<(), String> {
    for p in pins {
        let spec = specs
            .iter_mut()
            .find(|s| s.name == p.model)
            .ok_or_else(|| format!("FERRY_PIN names model {:?}, which is not served here", p.model))?;
        match &p.variant {
            Some(v) => {
                spec.pin.variants.insert(v.clone(), p.version.clone());
            }
            None => {
                let original = std::mem::replace(&mut spec.selector, Selector::Version(p.version.clone()));
                spec.pin.overrides.get_or_insert(original);
            }
        }
    }
    Ok(())
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
        Ok(ModelSpec { name, selector, remote: false, pin: Pin::default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forms themselves are `ferry_mlflow::ModelRef`'s (tested there).
    #[test]
    fn a_spec_reads_and_prints_as_its_model_ref() {
        let spec: ModelSpec = "iris:production".parse().unwrap();
        assert_eq!(
            (spec.selector.clone(), spec.remote, spec.to_string()),
            (Selector::Stage("Production".into()), false, "iris:Production".into())
        );
        assert!("iris".parse::<ModelSpec>().is_err());
    }

    #[test]
    fn pins_hold_a_model_or_one_variant() {
        let mut specs = vec!["iris@champion".parse::<ModelSpec>().unwrap(), "mlp:Production".parse().unwrap()];
        let pins: Vec<PinArg> = ["iris#challenger=7", "mlp=3"].iter().map(|p| p.parse().unwrap()).collect();
        apply_pins(&mut specs, &pins).unwrap();
        assert_eq!(specs[0].selector, Selector::Alias("champion".into()), "a variant pin leaves the model's selector");
        assert_eq!(specs[0].pin.variants.get("challenger").map(String::as_str), Some("7"));
        assert_eq!(specs[1].selector, Selector::Version("3".into()));
        assert_eq!(specs[1].pin.overrides, Some(Selector::Stage("Production".into())));
        let unknown = apply_pins(&mut specs, &["fraud=1".parse().unwrap()]).unwrap_err();
        assert!(unknown.contains("fraud"), "{unknown}");
        for bad in ["iris", "iris=x", "=3", "iris#=3"] {
            assert!(bad.parse::<PinArg>().is_err(), "{bad}");
        }
    }
}
