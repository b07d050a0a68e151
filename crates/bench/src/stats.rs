//! Summaries of measurements: latency percentiles and the spread of
//! repeated runs.
//!
//! This module is pure arithmetic over samples the caller collected. It
//! never measures, sleeps or reads a clock, so every figure in a report can
//! be recomputed from the raw samples.

use std::time::Duration;

/// The nearest-rank percentile of samples sorted in ascending order: the
/// smallest sample such that at least `percent` % of all samples are less
/// than or equal to it. `None` for no samples or a percent outside 0..=100.
///
/// Nearest-rank always returns a sample that was actually observed, which
/// is what a reader expects from "p99 was 1.9 ms".
pub fn percentile<T: Copy>(sorted: &[T], percent: f64) -> Option<T> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&percent) {
        return None;
    }
    let n = sorted.len();
    // The rank is at least 1 and at most n; the float-to-int conversion
    // saturates, and the clamp keeps the index in range for any input.
    let rank = ((percent / 100.0) * n as f64).ceil() as usize;
    let index = rank.clamp(1, n) - 1;
    sorted.get(index).copied()
}

/// Percentiles of a set of latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// How many samples.
    pub count: usize,
    /// Fastest sample.
    pub min: Duration,
    /// Median (nearest rank).
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest sample.
    pub max: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
}

impl LatencySummary {
    /// Summarises `samples`; `None` when there are none.
    pub fn from_samples(samples: &[Duration]) -> Option<Self> {
        let mut sorted = samples.to_vec();
        sorted.sort_unstable();
        let count = sorted.len();
        let total: Duration = sorted.iter().sum();
        let mean = total.checked_div(u32::try_from(count).ok()?)?;
        Some(LatencySummary {
            count,
            min: *sorted.first()?,
            p50: percentile(&sorted, 50.0)?,
            p90: percentile(&sorted, 90.0)?,
            p99: percentile(&sorted, 99.0)?,
            max: *sorted.last()?,
            mean,
        })
    }
}

/// Median, minimum and maximum of repeated measurements of one figure (for
/// example transactions per second over five runs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// How many runs.
    pub count: usize,
    /// The median; for an even count, the mean of the two middle values.
    pub median: f64,
    /// Lowest.
    pub min: f64,
    /// Highest.
    pub max: f64,
}

impl Spread {
    /// Summarises `values`; `None` when there are none or one is NaN.
    pub fn from_values(values: &[f64]) -> Option<Self> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut sorted = values.to_vec();
        sorted.sort_unstable_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            *sorted.get(n / 2)?
        } else {
            (sorted.get((n / 2).checked_sub(1)?)? + sorted.get(n / 2)?) / 2.0
        };
        Some(Spread {
            count: n,
            median,
            min: *sorted.first()?,
            max: *sorted.last()?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn nearest_rank_percentiles_of_one_to_a_hundred() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(50));
        assert_eq!(percentile(&sorted, 99.0), Some(99));
        assert_eq!(percentile(&sorted, 99.5), Some(100));
        assert_eq!(percentile(&sorted, 100.0), Some(100));
        assert_eq!(percentile(&sorted, 0.0), Some(1));
    }

    #[test]
    fn percentile_of_few_samples_is_an_observed_sample() {
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
        assert_eq!(percentile(&[1, 2], 51.0), Some(2));
    }

    #[test]
    fn percentile_rejects_empty_input_and_bad_percent() {
        assert_eq!(percentile::<u32>(&[], 50.0), None);
        assert_eq!(percentile(&[1], -1.0), None);
        assert_eq!(percentile(&[1], 100.1), None);
        assert_eq!(percentile(&[1], f64::NAN), None);
    }

    #[test]
    fn latency_summary_sorts_its_input() {
        let s = LatencySummary::from_samples(&[ms(3), ms(1), ms(2), ms(10)]).unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.min, ms(1));
        assert_eq!(s.p50, ms(2));
        assert_eq!(s.p99, ms(10));
        assert_eq!(s.max, ms(10));
        assert_eq!(s.mean, ms(4));
        assert_eq!(LatencySummary::from_samples(&[]), None);
    }

    #[test]
    fn spread_median_of_odd_and_even_counts() {
        let odd = Spread::from_values(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (3.0, 1.0, 5.0));
        let even = Spread::from_values(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((even.median, even.min, even.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::from_values(&[]), None);
        assert_eq!(Spread::from_values(&[1.0, f64::NAN]), None);
    }
}
