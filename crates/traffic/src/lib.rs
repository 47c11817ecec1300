//! Traffic policy: how one served model's requests are shared between its
//! variants — each a selector in MLflow (`@champion`, `@challenger`,
//! `:Staging`, `/7`) — by weight, by a request header naming the variant, or
//! by a sticky key, so that the same user meets the same variant on every
//! replica while the weights hold.
//!
//! The policy lives in MLflow, as the registered model's `ferry.traffic` tag
//! (JSON, versioned by `format`), so it is edited with the MLflow UI or
//! Python client as well as with Ferry; [`Policy::parse`] is the one
//! validation both services use. The choice per request ([`Router::choose`])
//! is pure and allocation-free.
//!
//! ```json
//! {"format": 1,
//!  "variants": [{"name": "champion", "selector": "@champion", "weight": 90},
//!               {"name": "challenger", "selector": "@challenger", "weight": 10}],
//!  "sticky_header": "x-user-id"}
//! ```

use std::fmt;

pub mod latency;
mod rollout;

pub use rollout::{Decision, Figures, Measured, RolloutSpec};

use ferry_mlflow::{ModelRef, Selector};
use serde::{Deserialize, Serialize};

/// The registered-model tag holding the policy.
pub const POLICY_TAG: &str = "ferry.traffic";
/// The header (or gRPC metadata key) that names a variant outright, unless the policy names another.
pub const DEFAULT_ROUTE_HEADER: &str = "x-ferry-variant";
/// The only format this version of Ferry reads.
pub const FORMAT: u32 = 1;
/// Weights are percentages; a request's bucket is one of this many.
const BUCKETS: u64 = 10_000;
const MAX_VARIANTS: usize = 8;

/// A policy as written in the tag.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub format: u32,
    pub variants: Vec<VariantSpec>,
    /// The header naming a variant outright (testers, internal users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_header: Option<String>,
    /// The header whose value (a user or session id) keeps a caller on one variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_header: Option<String>,
    /// A share of the other variants' requests also sent to this variant, off
    /// the request path; its answers are compared, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowSpec>,
    /// Steps the registry moves one variant through while it stays healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShadowSpec {
    /// A variant of the policy (usually one with weight 0).
    pub variant: String,
    /// Percent of the other variants' requests mirrored to it, 1 to 100.
    pub percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    pub name: String,
    /// `@alias`, `:Stage` or `/version`.
    pub selector: String,
    /// Percent of the traffic not routed by header; the weights sum to 100.
    pub weight: u32,
}

/// A variant ready to serve: its name and what it resolves in MLflow.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Variant {
    pub name: String,
    pub selector: Selector,
    pub weight: u32,
}

/// Why a policy was refused; says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError(pub String);

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {POLICY_TAG} policy: {}", self.0)
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// Reads and validates a policy for `model` from its tag's text.
    pub fn parse(model: &str, text: &str) -> Result<Router, PolicyError> {
        let policy: Policy = serde_json::from_str(text).map_err(|e| PolicyError(e.to_string()))?;
        policy.validate(model)
    }

    /// Checks every rule and builds the router: the known format, 1 to 8
    /// variants with unique names (letters, digits, `-`, `_`), selectors that
    /// parse, weights summing to 100, and legal, distinct header names.
    pub fn validate(&self, model: &str) -> Result<Router, PolicyError> {
        let bad = |m: String| Err(PolicyError(m));
        if self.format != FORMAT {
            return bad(format!("format {} is not supported (this Ferry reads format {FORMAT})", self.format));
        }
        if self.variants.is_empty() || self.variants.len() > MAX_VARIANTS {
            return bad(format!("a policy has 1 to {MAX_VARIANTS} variants, not {}", self.variants.len()));
        }
        let mut variants: Vec<Variant> = Vec::with_capacity(self.variants.len());
        for v in &self.variants {
            let ok_name = !v.name.is_empty()
                && v.name.len() <= 32
                && v.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok_name {
                return bad(format!("variant name {:?}: use 1 to 32 letters, digits, '-' or '_'", v.name));
            }
            if variants.iter().any(|o| o.name == v.name) {
                return bad(format!("variant {:?} is named twice", v.name));
            }
            if !v.selector.starts_with(['@', ':', '/']) {
                return bad(format!(
                    "variant {:?}: selector {:?} must be @alias, :Stage or /version",
                    v.name, v.selector
                ));
            }
            let parsed: ModelRef = format!("{model}{}", v.selector)
                .parse()
                .map_err(|e: String| PolicyError(format!("variant {:?}: {e}", v.name)))?;
            if v.weight > 100 {
                return bad(format!("variant {:?}: weight {} is over 100", v.name, v.weight));
            }
            variants.push(Variant { name: v.name.clone(), selector: parsed.selector, weight: v.weight });
        }
        let total: u32 = variants.iter().map(|v| v.weight).sum();
        if total != 100 {
            return bad(format!("the weights sum to {total}, not 100"));
        }
        let header = |h: &Option<String>, default: Option<&str>| -> Result<Option<http::HeaderName>, PolicyError> {
            match h.as_deref().or(default) {
                None => Ok(None),
                Some(name) => {
                    let parsed = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| PolicyError(format!("{name:?} is not a legal header name")))?;
                    if parsed.as_str() != name || name.starts_with("grpc-") || name.starts_with(':') {
                        return Err(PolicyError(format!(
                            "header {name:?}: use lowercase, and not a gRPC-reserved or pseudo header"
                        )));
                    }
                    Ok(Some(parsed))
                }
            }
        };
        let shadow = match &self.shadow {
            None => None,
            Some(sh) => {
                let Some(i) = variants.iter().position(|v| v.name == sh.variant) else {
                    return bad(format!("shadow variant {:?} is not one of the variants", sh.variant));
                };
                if !(1..=100).contains(&sh.percent) {
                    return bad(format!("shadow percent {} is not between 1 and 100", sh.percent));
                }
                Some((i, sh.percent))
            }
        };
        if let Some(plan) = &self.rollout {
            let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
            let shadow_name = shadow.map(|(i, _)| names[i]);
            plan.validate(model, &names, shadow_name).map_err(PolicyError)?;
        }
        let route_header = header(&self.route_header, Some(DEFAULT_ROUTE_HEADER))?;
        let sticky_header = header(&self.sticky_header, None)?;
        if route_header.is_some() && route_header == sticky_header {
            return bad("route_header and sticky_header must differ".into());
        }
        Ok(Router::new(model, variants, route_header, sticky_header, shadow))
    }
}

/// The per-request choice between a model's variants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Router {
    variants: Vec<Variant>,
    /// Upper bucket bound of each variant, in policy order (weights × 100, summed).
    bounds: Vec<u64>,
    route_header: Option<http::HeaderName>,
    sticky_header: Option<http::HeaderName>,
    /// Keys are hashed with the model's name, so two models split one user independently.
    salt: u64,
    /// The shadow variant and the percent of other requests mirrored to it.
    shadow: Option<(usize, u32)>,
}

/// How a request came to its variant (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Header,
    Sticky,
    Weight,
}

impl Router {
    fn new(
        model: &str,
        variants: Vec<Variant>,
        route_header: Option<http::HeaderName>,
        sticky_header: Option<http::HeaderName>,
        shadow: Option<(usize, u32)>,
    ) -> Self {
        let mut bound = 0;
        let bounds = variants
            .iter()
            .map(|v| {
                bound += u64::from(v.weight) * (BUCKETS / 100);
                bound
            })
            .collect();
        Self { variants, bounds, route_header, sticky_header, salt: fnv1a(FNV_OFFSET, model.as_bytes()), shadow }
    }

    pub fn variants(&self) -> &[Variant] {
        &self.variants
    }

    /// The shadow variant and its percent, if the policy has one.
    pub fn shadow(&self) -> Option<(usize, u32)> {
        self.shadow
    }

    /// Whether a request served by variant `chosen` is also mirrored to the
    /// shadow variant; `draw` is the request's number (as for [`Router::choose`]).
    pub fn mirrors(&self, chosen: usize, draw: u64) -> bool {
        self.shadow.is_some_and(|(s, percent)| s != chosen && mix(draw ^ SHADOW_SALT) % 100 < u64::from(percent))
    }

    pub fn route_header(&self) -> Option<&http::HeaderName> {
        self.route_header.as_ref()
    }

    pub fn sticky_header(&self) -> Option<&http::HeaderName> {
        self.sticky_header.as_ref()
    }

    /// Chooses a variant: the one the route header names; else, with a sticky
    /// key, the one its hash falls on; else the one `draw` (any well-mixed
    /// number, one per request) falls on. An unknown name in the route header
    /// is an error naming the variants there are.
    pub fn choose(&self, named: Option<&str>, sticky: Option<&str>, draw: u64) -> Result<(usize, Reason), String> {
        if let Some(name) = named.filter(|n| !n.is_empty()) {
            return match self.variants.iter().position(|v| v.name == name) {
                Some(i) => Ok((i, Reason::Header)),
                None => Err(format!(
                    "variant {name:?} is not in the policy; variants: {:?}",
                    self.variants.iter().map(|v| v.name.as_str()).collect::<Vec<_>>()
                )),
            };
        }
        let (bucket, reason) = match sticky.filter(|k| !k.is_empty()) {
            Some(key) => (mix(fnv1a(self.salt, key.as_bytes())) % BUCKETS, Reason::Sticky),
            None => (mix(draw) % BUCKETS, Reason::Weight),
        };
        // Variants with weight 0 own an empty range and are never drawn.
        let i = self.bounds.iter().position(|&b| bucket < b).unwrap_or(self.variants.len() - 1);
        Ok((i, reason))
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// Decorrelates the mirroring draw from the variant draw of the same request.
const SHADOW_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a: a fixed, specified hash, so every replica (and every Ferry
/// version) puts a key in the same bucket.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

/// SplitMix64's finalizer: spreads FNV's low bits and a counter's steps over all 64 bits.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(champion: u32, sticky: bool) -> Router {
        let mut text = format!(
            r#"{{"format":1,"variants":[{{"name":"champion","selector":"@champion","weight":{champion}}},
                {{"name":"challenger","selector":"@challenger","weight":{}}}]"#,
            100 - champion
        );
        if sticky {
            text.push_str(r#","sticky_header":"x-user-id""#);
        }
        text.push('}');
        Policy::parse("iris", &text).unwrap()
    }

    #[test]
    fn a_valid_policy_reads_back() {
        let r = split(90, true);
        let names: Vec<_> = r.variants().iter().map(|v| (v.name.as_str(), v.weight)).collect();
        assert_eq!(names, [("champion", 90), ("challenger", 10)]);
        assert_eq!(r.variants()[1].selector, Selector::Alias("challenger".into()));
        assert_eq!(r.route_header().map(http::HeaderName::as_str), Some(DEFAULT_ROUTE_HEADER));
        assert_eq!(r.sticky_header().map(http::HeaderName::as_str), Some("x-user-id"));
        let stage =
            Policy::parse("iris", r#"{"format":1,"variants":[{"name":"a","selector":":staging","weight":100}]}"#);
        assert_eq!(stage.unwrap().variants()[0].selector, Selector::Stage("Staging".into()));
    }

    #[test]
    fn each_rule_is_enforced_with_a_message_that_says_what_to_fix() {
        let v = |body: &str| format!(r#"{{"format":1,"variants":[{body}]}}"#);
        let cases = [
            (r#"{"format":2,"variants":[]}"#.to_owned(), "format 2"),
            (v(""), "1 to 8 variants"),
            (v(r#"{"name":"a","selector":"@a","weight":60},{"name":"b","selector":"@b","weight":30}"#), "sum to 90"),
            (v(r#"{"name":"a","selector":"@a","weight":50},{"name":"a","selector":"@b","weight":50}"#), "named twice"),
            (v(r#"{"name":"a b","selector":"@a","weight":100}"#), "variant name"),
            (v(r#"{"name":"a","selector":"champion","weight":100}"#), "@alias, :Stage or /version"),
            (v(r#"{"name":"a","selector":":Prod","weight":100}"#), "unknown stage"),
            (v(r#"{"name":"a","selector":"/x","weight":100}"#), "not a number"),
            (v(r#"{"name":"a","selector":"@a","weight":101}"#), "over 100"),
            (v(r#"{"name":"a","selector":"@a","weight":100,"shadow":true}"#), "unknown field"),
            (
                r#"{"format":1,"variants":[{"name":"a","selector":"@a","weight":100}],"shadow":{"variant":"b","percent":5}}"#
                    .into(),
                "not one of the variants",
            ),
            (
                r#"{"format":1,"variants":[{"name":"a","selector":"@a","weight":100}],"shadow":{"variant":"a","percent":0}}"#
                    .into(),
                "between 1 and 100",
            ),
            (
                r#"{"format":1,"variants":[{"name":"a","selector":"@a","weight":100}],"sticky_header":"X-User"}"#.into(),
                "lowercase",
            ),
            (
                r#"{"format":1,"variants":[{"name":"a","selector":"@a","weight":100}],"sticky_header":"x user"}"#.into(),
                "not a legal header",
            ),
            (
                r#"{"format":1,"variants":[{"name":"a","selector":"@a","weight":100}],"sticky_header":"x-ferry-variant"}"#
                    .into(),
                "must differ",
            ),
        ];
        for (text, says) in cases {
            let err = Policy::parse("iris", &text).expect_err(&text).to_string();
            assert!(err.contains(says), "{text}: {err:?} should say {says:?}");
        }
    }

    #[test]
    fn the_header_names_a_variant_exactly() {
        let r = split(100, false);
        assert_eq!(r.choose(Some("challenger"), Some("user-1"), 7), Ok((1, Reason::Header)), "even at weight 0");
        assert!(r.choose(Some("nope"), None, 7).unwrap_err().contains("challenger"));
        for draw in 0..1000 {
            assert_eq!(r.choose(None, None, draw).unwrap().0, 0, "weight 0 is never drawn");
        }
    }

    /// 10,000 draws at 90/10: the challenger's count is binomial (mean 1,000,
    /// sd 30); ±5 sd fails by chance about once in 3.5 million runs.
    #[test]
    fn weights_split_within_binomial_bounds() {
        let r = split(90, false);
        let n = 10_000u64;
        let challenger = (0..n).filter(|&d| r.choose(None, None, d).unwrap().0 == 1).count() as f64;
        let sd = (n as f64 * 0.1 * 0.9).sqrt();
        assert!((challenger - 1000.0).abs() < 5.0 * sd, "{challenger} of {n}");
        let keyed = (0..n).filter(|k| r.choose(None, Some(&format!("user-{k}")), 0).unwrap().0 == 1).count() as f64;
        assert!((keyed - 1000.0).abs() < 5.0 * sd, "sticky keys split by weight too: {keyed} of {n}");
    }

    #[test]
    fn sticky_keys_hold_and_move_only_the_share_that_must() {
        let (before, after) = (split(90, true), split(75, true));
        let keys: Vec<String> = (0..10_000).map(|k| format!("session-{k}")).collect();
        let pick = |r: &Router, k: &str| r.choose(None, Some(k), 0).unwrap().0;
        // The same key, any draw, any replica (a fresh router): the same variant.
        for k in &keys[..100] {
            let first = pick(&before, k);
            assert!((0..50).all(|d| before.choose(None, Some(k), d).unwrap().0 == first));
            assert_eq!(pick(&split(90, true), k), first);
        }
        let moved: Vec<_> = keys.iter().filter(|k| pick(&before, k) != pick(&after, k)).collect();
        assert!(
            moved.iter().all(|k| pick(&before, k) == 0 && pick(&after, k) == 1),
            "keys move only to the grown variant"
        );
        let share = moved.len() as f64 / keys.len() as f64;
        assert!((share - 0.15).abs() < 0.02, "90/10 → 75/25 moves 15% of keys, not {share}");
        // Another model splits the same users independently.
        let other = Policy::parse(
            "fraud",
            r#"{"format":1,"variants":[{"name":"a","selector":"@a","weight":90},{"name":"b","selector":"@b","weight":10}]}"#,
        )
        .unwrap();
        let same = keys.iter().filter(|k| pick(&before, k) == pick(&other, k)).count();
        assert!(same < keys.len(), "keys are salted with the model's name");
    }

    #[test]
    fn a_shadow_mirrors_its_share_of_the_other_variants_requests() {
        let r = Policy::parse(
            "iris",
            r#"{"format":1,"variants":[{"name":"champion","selector":"@champion","weight":100},
                {"name":"challenger","selector":"@challenger","weight":0}],
                "shadow":{"variant":"challenger","percent":20}}"#,
        )
        .unwrap();
        assert_eq!(r.shadow(), Some((1, 20)));
        let n = 10_000u64;
        let mirrored = (0..n).filter(|&d| r.mirrors(0, d)).count() as f64;
        // Binomial: mean 2,000, sd 40; ±5 sd.
        assert!((mirrored - 2000.0).abs() < 200.0, "{mirrored} of {n}");
        assert!((0..n).all(|d| !r.mirrors(1, d)), "the shadow's own requests are not mirrored to it");
        assert!(!split(90, false).mirrors(0, 1), "no shadow, no mirroring");
    }
}
