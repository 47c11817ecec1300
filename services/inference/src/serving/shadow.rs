//! Shadow traffic: a share of a model's requests also runs on its shadow
//! variant, after the caller's answer is computed and off its path. The
//! shadow's answers are compared with the caller's and never returned; a
//! busy shadow (a few copies in flight already) drops the copy and counts
//! it, so it can neither hold up nor fail a caller.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use super::slot::ModelSlot;
use crate::tensor::{NamedTensor, TensorData};

/// What a shadow variant's mirrored requests came to.
#[derive(Debug, Default)]
pub struct ShadowStats {
    /// Answered and compared with the caller's answer.
    pub compared: AtomicU64,
    /// Not run: the shadow was busy or had nothing loaded.
    pub dropped: AtomicU64,
    /// Run and failed (the caller's answer was unaffected).
    pub failed: AtomicU64,
    /// Compared answers with class outputs, and those whose classes all agreed.
    pub classified: AtomicU64,
    pub agreed: AtomicU64,
    /// Compared answers with float outputs, and their mean absolute differences summed (×1e9).
    pub diffed: AtomicU64,
    pub abs_diff_nano: AtomicU64,
}

impl ShadowStats {
    /// Share of compared answers whose top classes matched the caller's.
    pub fn agreement(&self) -> Option<f64> {
        let n = self.classified.load(Ordering::Relaxed);
        (n > 0).then(|| self.agreed.load(Ordering::Relaxed) as f64 / n as f64)
    }

    /// Mean absolute difference of float outputs, averaged over compared answers.
    pub fn mean_abs_diff(&self) -> Option<f64> {
        let n = self.diffed.load(Ordering::Relaxed);
        (n > 0).then(|| self.abs_diff_nano.load(Ordering::Relaxed) as f64 / 1e9 / n as f64)
    }

    fn record(&self, c: Comparison) {
        self.compared.fetch_add(1, Ordering::Relaxed);
        if let Some(agreed) = c.agreed {
            self.classified.fetch_add(1, Ordering::Relaxed);
            self.agreed.fetch_add(u64::from(agreed), Ordering::Relaxed);
        }
        if let Some(d) = c.mean_abs_diff {
            self.diffed.fetch_add(1, Ordering::Relaxed);
            self.abs_diff_nano.fetch_add((d * 1e9).min(u64::MAX as f64 / 2.0) as u64, Ordering::Relaxed);
        }
    }
}

/// Runs `inputs` on the shadow slot's serving version in a task of its own
/// and compares its answer with `answered`, the caller's.
pub(super) fn mirror(
    shadow: Arc<ModelSlot>,
    inputs: Vec<NamedTensor>,
    wanted: Vec<String>,
    answered: Vec<NamedTensor>,
) {
    let stats = &shadow.stats.shadow;
    // Bounded: a few copies in flight per shadow; one that does not fit is dropped.
    let (Ok(permit), Some(model)) = (Arc::clone(&shadow.shadow_in_flight).try_acquire_owned(), shadow.current()) else {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    tokio::spawn(async move {
        let result = super::execute(&shadow, &model, inputs, wanted, None).await;
        drop(permit);
        match result {
            Ok((outputs, _)) => shadow.stats.shadow.record(compare(&answered, &outputs)),
            Err(e) => {
                shadow.stats.shadow.failed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(error = %e, "shadow request failed");
            }
        }
    });
}

/// How a shadow's answer compares with the caller's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Comparison {
    /// Whether every class output agreed: labels (integers, booleans, strings)
    /// equal, and for float outputs whose last dimension is 2 or more (class
    /// scores), the top class of every row the same. `None` without such outputs.
    pub(crate) agreed: Option<bool>,
    /// Mean absolute difference over every float element; `None` without float outputs.
    pub(crate) mean_abs_diff: Option<f64>,
}

pub(crate) fn compare(answered: &[NamedTensor], shadow: &[NamedTensor]) -> Comparison {
    let mut agreed: Option<bool> = None;
    let mut agree = |ok: bool| agreed = Some(agreed.unwrap_or(true) && ok);
    let (mut diff, mut n) = (0.0, 0usize);
    for a in answered {
        let Some(s) = shadow.iter().find(|s| s.name == a.name).filter(|s| s.shape == a.shape) else {
            agree(false);
            continue;
        };
        let width = a.shape.last().copied().unwrap_or(1).max(1) as usize;
        let floats = |x: &TensorData| -> Option<Vec<f64>> {
            match x {
                TensorData::F32(v) => Some(v.iter().map(|&f| f64::from(f)).collect()),
                TensorData::F64(v) => Some(v.clone()),
                TensorData::I32(_) | TensorData::I64(_) | TensorData::Bool(_) | TensorData::Str(_) => None,
            }
        };
        match (floats(&a.data), floats(&s.data)) {
            (Some(x), Some(y)) if x.len() == y.len() => {
                diff += x.iter().zip(&y).map(|(p, q)| (p - q).abs()).sum::<f64>();
                n += x.len();
                if width >= 2 {
                    agree(x.chunks(width).zip(y.chunks(width)).all(|(p, q)| argmax(p) == argmax(q)));
                }
            }
            (None, None) => agree(a.data == s.data),
            _ => agree(false),
        }
    }
    Comparison { agreed, mean_abs_diff: (n > 0).then(|| diff / n as f64) }
}

fn argmax(row: &[f64]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, v)| if *v > row[best] { i } else { best })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, shape: Vec<i64>, data: TensorData) -> NamedTensor {
        NamedTensor { name: name.into(), shape, data }
    }

    #[test]
    fn classes_agree_by_label_or_top_score_and_floats_give_their_difference() {
        let label = |v: Vec<i64>| t("label", vec![v.len() as i64], TensorData::I64(v));
        let probs = |v: Vec<f32>| t("probabilities", vec![2, 3], TensorData::F32(v));
        let answered = [label(vec![2, 0]), probs(vec![0.1, 0.2, 0.7, 0.8, 0.1, 0.1])];
        let same = compare(&answered, &answered);
        assert_eq!(same, Comparison { agreed: Some(true), mean_abs_diff: Some(0.0) });
        let close = [label(vec![2, 0]), probs(vec![0.2, 0.2, 0.6, 0.7, 0.2, 0.1])];
        let c = compare(&answered, &close);
        assert_eq!(c.agreed, Some(true), "same top classes");
        assert!((c.mean_abs_diff.unwrap() - 0.2 / 6.0 * 2.0).abs() < 1e-6, "{c:?}");
        let other = [label(vec![1, 0]), probs(vec![0.1, 0.2, 0.7, 0.8, 0.1, 0.1])];
        assert_eq!(compare(&answered, &other).agreed, Some(false), "a label differs");
        let flipped = [label(vec![2, 0]), probs(vec![0.1, 0.7, 0.2, 0.8, 0.1, 0.1])];
        assert_eq!(compare(&answered, &flipped).agreed, Some(false), "a row's top class differs");
        let regression = [t("y", vec![2, 1], TensorData::F64(vec![1.0, 2.0]))];
        let c = compare(&regression, &[t("y", vec![2, 1], TensorData::F64(vec![1.5, 2.5]))]);
        assert_eq!(c, Comparison { agreed: None, mean_abs_diff: Some(0.5) }, "regression: a difference, no classes");
        assert_eq!(compare(&regression, &[]).agreed, Some(false), "a missing output disagrees");
    }
}
