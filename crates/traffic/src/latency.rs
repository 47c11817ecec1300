//! Request latencies as counts in fixed log-linear buckets — eight per
//! doubling, from 1.024 µs to about a minute — so that replicas can report
//! cumulative counts and the registry can sum them and read a quantile of
//! any window from the difference. The layout is part of `ReportTraffic`'s
//! contract: every replica and the registry share it.

use std::sync::atomic::{AtomicU64, Ordering};

/// Below 2^10 ns everything falls in bucket 0.
const MIN_SHIFT: u32 = 10;
/// From 2^36 ns (68.7 s) on, everything falls in the last bucket.
const MAX_SHIFT: u32 = 36;
/// Buckets per doubling (the top three bits after the leading one): a bucket
/// is at most 12.5% wide, and interpolating inside it does better.
const SUB: u32 = 8;
/// How many buckets a report carries.
pub const BUCKETS: usize = ((MAX_SHIFT - MIN_SHIFT) * SUB + 2) as usize;

/// The bucket of a latency of `ns` nanoseconds.
pub fn bucket(ns: u64) -> usize {
    if ns < 1 << MIN_SHIFT {
        return 0;
    }
    let log = 63 - ns.leading_zeros();
    if log >= MAX_SHIFT {
        return BUCKETS - 1;
    }
    let frac = ((ns >> (log - 3)) & 7) as u32;
    ((log - MIN_SHIFT) * SUB + frac + 1) as usize
}

/// The nanoseconds bucket `i` covers: `[lower, upper)`.
fn bounds(i: usize) -> (f64, f64) {
    if i == 0 {
        return (0.0, f64::from(1u32 << MIN_SHIFT));
    }
    let (octave, frac) = ((i as u32 - 1) / SUB, (i as u32 - 1) % SUB);
    let base = (1u64 << (MIN_SHIFT + octave)) as f64;
    (base * f64::from(SUB + frac) / f64::from(SUB), base * f64::from(SUB + frac + 1) / f64::from(SUB))
}

/// The `q` quantile (0 to 1) of the latencies counted, in nanoseconds,
/// interpolated inside its bucket; `None` when nothing was counted.
pub fn quantile(counts: &[u64], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0);
    let mut before = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (before + n) as f64 >= rank {
            let (lo, hi) = bounds(i.min(BUCKETS - 1));
            if i >= BUCKETS - 1 {
                return Some(lo);
            }
            return Some(lo + (hi - lo) * (rank - before as f64) / n as f64);
        }
        before += n;
    }
    None
}

/// Cumulative counts, recorded on the request path: one atomic add.
#[derive(Debug)]
pub struct LatencyCounts([AtomicU64; BUCKETS]);

impl Default for LatencyCounts {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl LatencyCounts {
    pub fn record(&self, ns: u64) {
        self.0[bucket(ns)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_contiguous_and_hold_their_values() {
        for i in 1..BUCKETS - 1 {
            assert_eq!(bounds(i).1, bounds(i + 1).0, "bucket {i} ends where {} begins", i + 1);
        }
        for ns in [0, 1023, 1024, 1279, 1280, 50_000, 999_999, 12_345_678, 1 << 35, (1 << 36) - 1] {
            let (lo, hi) = bounds(bucket(ns));
            assert!(lo <= ns as f64 && (ns as f64) < hi, "{ns} in [{lo}, {hi})");
        }
        assert_eq!(bucket(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_come_within_a_bucket_of_the_truth() {
        let counts = LatencyCounts::default();
        // 1,000 requests: 1 ms to 1,000 ms in 1 ms steps (p99 is 990 ms, p50 500 ms).
        for ms in 1..=1000u64 {
            counts.record(ms * 1_000_000);
        }
        let c = counts.snapshot();
        for (q, truth) in [(0.5, 500e6), (0.99, 990e6)] {
            let got = quantile(&c, q).unwrap();
            assert!((got / truth - 1.0).abs() < 0.125, "q{q}: {got} vs {truth}, more than a bucket off");
        }
        assert_eq!(quantile(&vec![0; BUCKETS], 0.99), None);
    }
}
