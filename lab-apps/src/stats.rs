//! Latency summaries for `rr`.

use std::time::Duration;

/// Percentiles and mean of a set of round-trip times, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub mean_us: f64,
}

impl Summary {
    /// Summarises `samples` (reordered in place). `None` when there are none.
    ///
    /// Percentiles use the nearest-rank method: the smallest sample that at least p% of
    /// the samples do not exceed, so every reported value is one that was measured.
    pub fn of(samples: &mut [Duration]) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        // Rounded to whole nanoseconds, which is all a Duration holds, to print short floats.
        let us = |d: Duration| (d.as_secs_f64() * 1e9).round() / 1e3;
        let rank = |p: f64| {
            let n = samples.len();
            let r = (p / 100.0 * n as f64).ceil() as usize;
            us(samples[r.clamp(1, n) - 1])
        };
        let total: Duration = samples.iter().sum();
        Some(Self {
            count: samples.len(),
            p50_us: rank(50.0),
            p90_us: rank(90.0),
            p99_us: rank(99.0),
            mean_us: (us(total) / samples.len() as f64 * 1e3).round() / 1e3,
        })
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "count": self.count,
            "p50_us": self.p50_us,
            "p90_us": self.p90_us,
            "p99_us": self.p99_us,
            "mean_us": self.mean_us,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples: Vec<Duration> = (1..=100).rev().map(Duration::from_micros).collect();
        let s = Summary::of(&mut samples).unwrap();
        assert_eq!(s.count, 100);
        assert_eq!(s.p50_us, 50.0);
        assert_eq!(s.p90_us, 90.0);
        assert_eq!(s.p99_us, 99.0);
        assert_eq!(s.mean_us, 50.5);
    }

    #[test]
    fn one_sample() {
        let s = Summary::of(&mut [Duration::from_micros(7)]).unwrap();
        assert_eq!((s.p50_us, s.p99_us, s.mean_us), (7.0, 7.0, 7.0));
    }

    #[test]
    fn no_samples() {
        assert!(Summary::of(&mut []).is_none());
    }
}
