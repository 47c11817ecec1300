//! Rollout plans: one variant of a two-variant policy goes up step by step
//! while it holds the plan's thresholds — error rate, p99 latency against the
//! other variant, and agreement with it on shadow traffic — and back to 0 on
//! a breach. The registry decides, once for the fleet, on the figures the
//! replicas report; this module is the pure decision.

use serde::{Deserialize, Serialize};

use crate::latency;

/// A rollout plan, as written in the policy's `rollout` field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// The variant rolled out (of a two-variant policy; the other takes the rest).
    pub variant: String,
    /// Its weight at each step, increasing, 1 to 100.
    pub steps: Vec<u32>,
    /// At least this long at each step...
    #[serde(default = "default_min_seconds")]
    pub min_seconds: u64,
    /// ...and at least this many of its requests, across the fleet (and, for
    /// the comparisons, as many of the other variant's or of shadow answers).
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
    /// The highest share of its requests that may fail (0.01 = 1%).
    pub max_error_rate: f64,
    /// Its p99 latency over the other variant's, at most (1.5: half as slow
    /// again), compared while the other still takes traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ratio: Option<f64>,
    /// With the variant also the policy's shadow: the least share of mirrored
    /// requests whose top classes match the other variant's answers...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agreement: Option<f64>,
    /// ...or, for regression outputs, the largest mean absolute difference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_mean_abs_diff: Option<f64>,
    /// On completion this alias moves to the variant's version; when the other
    /// variant's selector is this alias, the weights go back to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promote: Option<String>,
    /// On a breach this alias moves back to the version it designated before
    /// (as `Rollback` does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_alias: Option<String>,
}

fn default_min_seconds() -> u64 {
    60
}

fn default_min_requests() -> u64 {
    100
}

// f64 thresholds: equality is exact comparison of what was written.
impl Eq for RolloutSpec {}

/// One variant's figures, summed over the fleet: cumulative as reported, or
/// over a step ([`Figures::since`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    /// Successful requests' latencies, in [`latency`] buckets.
    pub latency: Vec<u64>,
    /// As the shadow: compared answers with class outputs, and those that agreed.
    pub classified: u64,
    pub agreed: u64,
    /// As the shadow: compared answers with float outputs, and their mean
    /// absolute differences summed (×1e9).
    pub diffed: u64,
    pub abs_diff_nano: u64,
}

impl Figures {
    pub fn add(&mut self, o: &Figures) {
        self.requests += o.requests;
        self.errors += o.errors;
        if self.latency.len() < o.latency.len() {
            self.latency.resize(o.latency.len(), 0);
        }
        for (a, b) in self.latency.iter_mut().zip(&o.latency) {
            *a += b;
        }
        self.classified += o.classified;
        self.agreed += o.agreed;
        self.diffed += o.diffed;
        self.abs_diff_nano += o.abs_diff_nano;
    }

    /// What was added since `base` (a replica gone quiet can only lower a count: never below 0).
    pub fn since(&self, base: &Figures) -> Figures {
        let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0);
        Figures {
            requests: self.requests.saturating_sub(base.requests),
            errors: self.errors.saturating_sub(base.errors),
            latency: (0..self.latency.len())
                .map(|i| at(&self.latency, i).saturating_sub(at(&base.latency, i)))
                .collect(),
            classified: self.classified.saturating_sub(base.classified),
            agreed: self.agreed.saturating_sub(base.agreed),
            diffed: self.diffed.saturating_sub(base.diffed),
            abs_diff_nano: self.abs_diff_nano.saturating_sub(base.abs_diff_nano),
        }
    }

    fn p99_ms(&self) -> Option<f64> {
        latency::quantile(&self.latency, 0.99).map(|ns| ns / 1e6)
    }
}

/// What a step's figures call for.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not enough time, requests or comparisons yet.
    Wait,
    /// Healthy: the variant's next weight.
    Advance(u32),
    /// Healthy at the last step.
    Complete,
    /// A threshold broken: why.
    RollBack(String),
}

/// The step's figures as judged, for the status a person reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Measured {
    pub requests: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_p99_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_abs_diff: Option<f64>,
}

impl RolloutSpec {
    /// Checks the plan against the policy's variants and shadow.
    pub(crate) fn validate(&self, model: &str, variants: &[&str], shadow: Option<&str>) -> Result<(), String> {
        if variants.len() != 2 {
            return Err("a rollout moves one variant of a two-variant policy".into());
        }
        if !variants.contains(&self.variant.as_str()) {
            return Err(format!("rollout variant {:?} is not one of the variants", self.variant));
        }
        let increasing = self.steps.windows(2).all(|w| w[0] < w[1]);
        if self.steps.is_empty() || !increasing || self.steps.iter().any(|w| !(1..=100).contains(w)) {
            return Err("rollout steps are weights from 1 to 100, increasing".into());
        }
        let share = |name: &str, v: Option<f64>| match v {
            Some(x) if !(0.0..=1.0).contains(&x) => Err(format!("rollout {name} is a share between 0 and 1")),
            _ => Ok(()),
        };
        share("max_error_rate", Some(self.max_error_rate))?;
        share("min_agreement", self.min_agreement)?;
        if self.max_latency_ratio.is_some_and(|r| !(r.is_finite() && r >= 1.0)) {
            return Err("rollout max_latency_ratio is 1 or more (1.5: at most half as slow again)".into());
        }
        if self.max_mean_abs_diff.is_some_and(|d| !(d.is_finite() && d >= 0.0)) {
            return Err("rollout max_mean_abs_diff is 0 or more".into());
        }
        let compares = self.min_agreement.is_some() || self.max_mean_abs_diff.is_some();
        if compares && shadow != Some(self.variant.as_str()) {
            return Err(format!(
                "rollout min_agreement and max_mean_abs_diff compare shadow answers: make {:?} the shadow variant",
                self.variant
            ));
        }
        for alias in [&self.promote, &self.rollback_alias].into_iter().flatten() {
            format!("{model}@{alias}")
                .parse::<ferry_mlflow::ModelRef>()
                .map_err(|e| format!("rollout alias {alias:?}: {e}"))?;
        }
        Ok(())
    }

    /// Decides on one step's figures: the variant's and the other's since the
    /// step began, `seconds` ago. A breach is acted on as soon as
    /// `min_requests` have been seen, before the step's time is up; a
    /// comparison with the other variant is waited for while the other still
    /// takes traffic, and waived at 100%, where there is nothing to compare.
    pub fn decide(&self, step: usize, seconds: u64, variant: &Figures, other: &Figures) -> (Decision, Measured) {
        let weight = self.steps.get(step).copied().unwrap_or(0);
        let mut m = Measured { requests: variant.requests, errors: variant.errors, ..Measured::default() };
        if variant.requests < self.min_requests {
            return (Decision::Wait, m);
        }
        let back = |why: String| Decision::RollBack(format!("{why} at {weight}%"));
        let rate = variant.errors as f64 / variant.requests as f64;
        if rate > self.max_error_rate {
            let why = format!(
                "error rate {:.1}% over {:.1}% ({} of {} requests)",
                rate * 100.0,
                self.max_error_rate * 100.0,
                variant.errors,
                variant.requests
            );
            return (back(why), m);
        }
        let comparable = weight < 100;
        let mut waiting = false;
        if let Some(max) = self.max_latency_ratio {
            let enough = other.requests.saturating_sub(other.errors) >= self.min_requests;
            m.p99_ms = variant.p99_ms();
            m.other_p99_ms = other.p99_ms();
            match (m.p99_ms, m.other_p99_ms) {
                (Some(p), Some(o)) if enough && o > 0.0 && p / o > max => {
                    let why =
                        format!("p99 latency {p:.2} ms is {:.2}× the other variant's {o:.2} ms (over {max}×)", p / o);
                    return (back(why), m);
                }
                _ => waiting |= comparable && !enough,
            }
        }
        if self.min_agreement.is_some() || self.max_mean_abs_diff.is_some() {
            let compared = variant.classified.max(variant.diffed);
            if compared >= self.min_requests {
                if variant.classified > 0 {
                    m.agreement = Some(variant.agreed as f64 / variant.classified as f64);
                }
                if variant.diffed > 0 {
                    m.mean_abs_diff = Some(variant.abs_diff_nano as f64 / 1e9 / variant.diffed as f64);
                }
                if let Some(min) = self.min_agreement {
                    match m.agreement {
                        None => {
                            return (back("min_agreement needs class outputs, and this model has none (use max_mean_abs_diff)".into()), m);
                        }
                        Some(a) if a < min => {
                            let why = format!(
                                "agreement {:.1}% under {:.1}% ({} of {} shadow answers)",
                                a * 100.0,
                                min * 100.0,
                                variant.agreed,
                                variant.classified
                            );
                            return (back(why), m);
                        }
                        Some(_) => {}
                    }
                }
                if let (Some(max), Some(d)) = (self.max_mean_abs_diff, m.mean_abs_diff)
                    && d > max
                {
                    return (back(format!("mean absolute difference {d:.4} over {max} on shadow answers")), m);
                }
            } else {
                waiting |= comparable;
            }
        }
        if waiting || seconds < self.min_seconds {
            return (Decision::Wait, m);
        }
        let next = match self.steps.get(step + 1) {
            Some(&next) => Decision::Advance(next),
            None => Decision::Complete,
        };
        (next, m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Policy, latency::LatencyCounts};

    fn plan() -> RolloutSpec {
        RolloutSpec {
            variant: "challenger".into(),
            steps: vec![5, 25, 100],
            min_seconds: 10,
            min_requests: 100,
            max_error_rate: 0.02,
            max_latency_ratio: None,
            min_agreement: None,
            max_mean_abs_diff: None,
            promote: None,
            rollback_alias: None,
        }
    }

    fn served(requests: u64, errors: u64, ms: u64) -> Figures {
        let counts = LatencyCounts::default();
        for _ in errors..requests {
            counts.record(ms * 1_000_000);
        }
        Figures { requests, errors, latency: counts.snapshot(), ..Figures::default() }
    }

    #[test]
    fn a_rollout_advances_while_healthy_and_rolls_back_on_a_breach() {
        let plan = plan();
        let none = Figures::default();
        let d = |step, secs, q, e| plan.decide(step, secs, &served(q, e, 1), &none).0;
        assert_eq!(d(0, 60, 50, 0), Decision::Wait, "too few requests");
        assert_eq!(d(0, 5, 500, 1), Decision::Wait, "too soon");
        assert_eq!(d(0, 10, 500, 1), Decision::Advance(25));
        assert_eq!(d(2, 10, 500, 1), Decision::Complete);
        let breach = d(1, 1, 200, 10);
        assert!(
            matches!(&breach, Decision::RollBack(why) if why.contains("5.0% over 2.0%") && why.ends_with("at 25%")),
            "{breach:?}"
        );
    }

    #[test]
    fn a_slow_variant_is_rolled_back_while_the_other_still_takes_traffic() {
        let plan = RolloutSpec { max_latency_ratio: Some(1.5), ..plan() };
        let (fast, slow) = (served(1000, 0, 2), served(500, 0, 5));
        let (d, m) = plan.decide(0, 60, &slow, &fast);
        assert!(matches!(&d, Decision::RollBack(why) if why.contains("p99 latency") && why.contains("2.50×")), "{d:?}");
        assert!(m.p99_ms.is_some_and(|p| (p / 5.0 - 1.0).abs() < 0.1), "{m:?}");
        assert_eq!(plan.decide(0, 60, &served(500, 0, 2), &fast).0, Decision::Advance(25), "as fast: advances");
        assert_eq!(plan.decide(0, 60, &slow, &served(50, 0, 2)).0, Decision::Wait, "the other's figures are awaited");
        assert_eq!(plan.decide(2, 60, &slow, &Figures::default()).0, Decision::Complete, "at 100% nothing to compare");
    }

    #[test]
    fn shadow_answers_that_disagree_roll_back() {
        let plan = RolloutSpec { min_agreement: Some(0.9), ..plan() };
        let with = |classified, agreed| Figures { classified, agreed, ..served(500, 0, 1) };
        let (d, m) = plan.decide(0, 60, &with(400, 200), &Figures::default());
        assert!(matches!(&d, Decision::RollBack(why) if why.contains("agreement 50.0% under 90.0%")), "{d:?}");
        assert_eq!(m.agreement, Some(0.5));
        assert_eq!(plan.decide(0, 60, &with(400, 396), &Figures::default()).0, Decision::Advance(25));
        assert_eq!(plan.decide(0, 60, &with(10, 10), &Figures::default()).0, Decision::Wait, "too few compared");
        let regression = Figures { diffed: 400, abs_diff_nano: 400 * 300_000_000, ..served(500, 0, 1) };
        let (d, _) = plan.decide(0, 60, &regression, &Figures::default());
        assert!(matches!(&d, Decision::RollBack(why) if why.contains("class outputs")), "{d:?}");
        let by_diff = RolloutSpec { max_mean_abs_diff: Some(0.1), ..plan.clone() };
        let by_diff = RolloutSpec { min_agreement: None, ..by_diff };
        let (d, m) = by_diff.decide(0, 60, &regression, &Figures::default());
        assert!(matches!(&d, Decision::RollBack(why) if why.contains("0.3000 over 0.1")), "{d:?} {m:?}");
    }

    #[test]
    fn figures_sum_and_subtract_bucket_by_bucket() {
        let mut total = served(10, 1, 2);
        total.add(&served(5, 0, 2));
        assert_eq!((total.requests, total.errors, total.latency.iter().sum::<u64>()), (15, 1, 14));
        let step = total.since(&served(10, 1, 2));
        assert_eq!((step.requests, step.latency.iter().sum::<u64>()), (5, 5));
        assert_eq!(Figures::default().since(&total), Figures { latency: vec![], ..Figures::default() });
    }

    #[test]
    fn each_plan_rule_says_what_to_fix() {
        let bad = |rollout: &str, shadow: &str| {
            let text = format!(
                r#"{{"format":1,"variants":[{{"name":"a","selector":"@a","weight":100}},{{"name":"b","selector":"@b","weight":0}}],"rollout":{rollout}{shadow}}}"#
            );
            Policy::parse("iris", &text).map(|_| ()).unwrap_err().to_string()
        };
        let cases = [
            (r#"{"variant":"c","steps":[5],"max_error_rate":0.1}"#, "", "not one of the variants"),
            (r#"{"variant":"b","steps":[50,5],"max_error_rate":0.1}"#, "", "increasing"),
            (r#"{"variant":"b","steps":[5],"max_error_rate":2}"#, "", "between 0 and 1"),
            (r#"{"variant":"b","steps":[5],"max_error_rate":0.1,"max_latency_ratio":0.5}"#, "", "1 or more"),
            (r#"{"variant":"b","steps":[5],"max_error_rate":0.1,"min_agreement":0.9}"#, "", "shadow variant"),
            (
                r#"{"variant":"b","steps":[5],"max_error_rate":0.1,"min_agreement":0.9}"#,
                r#","shadow":{"variant":"a","percent":10}"#,
                "shadow variant",
            ),
            (r#"{"variant":"b","steps":[5],"max_error_rate":0.1,"promote":"a b"}"#, "", "rollout alias"),
        ];
        for (rollout, shadow, says) in cases {
            let err = bad(rollout, shadow);
            assert!(err.contains(says), "{rollout}{shadow}: {err:?} should say {says:?}");
        }
        let ok = r#"{"format":1,"variants":[{"name":"a","selector":"@a","weight":100},{"name":"b","selector":"@b","weight":0}],
            "shadow":{"variant":"b","percent":50},
            "rollout":{"variant":"b","steps":[5,100],"max_error_rate":0.1,"min_agreement":0.9,"max_latency_ratio":1.5,"promote":"a"}}"#;
        assert!(Policy::parse("iris", ok).is_ok());
    }
}
