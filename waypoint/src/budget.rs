//! The retry budget: over the last `WINDOW`, retries may be at most `percent` of requests,
//! or `min_per_second` per second when that is more. A failing backend then costs a bounded
//! share of extra load instead of `attempts` times the load (a retry storm). This is the
//! budget idea of Finagle and Envoy (`RetryBudget` in its circuit breakers), written from
//! their documentation; the window is counted in one-second buckets.

use std::time::{Duration, Instant};

use weft_mesh::config::RetryBudget;

const BUCKETS: usize = 10;
const WINDOW: Duration = Duration::from_secs(BUCKETS as u64);

#[derive(Debug, Clone, Default)]
pub struct Budget {
    /// (requests, retries) per second, indexed by second modulo `BUCKETS`.
    buckets: [(u64, u64); BUCKETS],
    /// The second the newest bucket counts, from `origin`.
    second: u64,
    origin: Option<Instant>,
}

impl Budget {
    fn advance(&mut self, now: Instant) -> usize {
        let origin = *self.origin.get_or_insert(now);
        let second = now.duration_since(origin).as_secs();
        if second > self.second {
            let stale = (second - self.second).min(BUCKETS as u64);
            for i in 1..=stale {
                self.buckets[((self.second + i) % BUCKETS as u64) as usize] = (0, 0);
            }
            self.second = second;
        }
        (self.second % BUCKETS as u64) as usize
    }

    /// Counts `n` original requests (not retries).
    pub fn requests(&mut self, n: u64, now: Instant) {
        let i = self.advance(now);
        self.buckets[i].0 += n;
    }

    /// Counts a retry if the budget has room for it.
    pub fn try_retry(&mut self, budget: &RetryBudget, now: Instant) -> bool {
        let i = self.advance(now);
        let (requests, retries) = self
            .buckets
            .iter()
            .fold((0, 0), |(q, r), (bq, br)| (q + bq, r + br));
        let by_share = requests as f64 * budget.percent / 100.0;
        let by_floor = budget.min_per_second as f64 * WINDOW.as_secs_f64();
        if (retries as f64) < by_share.max(by_floor) {
            self.buckets[i].1 += 1;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stay_within_the_share_of_requests() {
        let policy = RetryBudget {
            percent: 20.0,
            min_per_second: 0,
        };
        let mut b = Budget::default();
        let now = Instant::now();
        let mut allowed = 0;
        for _ in 0..100 {
            b.requests(1, now);
            for _ in 0..3 {
                allowed += b.try_retry(&policy, now) as u32;
            }
        }
        assert_eq!(allowed, 20);
    }

    #[test]
    fn the_floor_allows_retries_at_low_traffic() {
        let policy = RetryBudget {
            percent: 20.0,
            min_per_second: 1,
        };
        let mut b = Budget::default();
        let now = Instant::now();
        b.requests(1, now);
        let allowed = (0..20).filter(|_| b.try_retry(&policy, now)).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let policy = RetryBudget {
            percent: 0.0,
            min_per_second: 1,
        };
        let mut b = Budget::default();
        let t0 = Instant::now();
        let used = (0..20).filter(|_| b.try_retry(&policy, t0)).count();
        assert_eq!(used, 10);
        assert!(!b.try_retry(&policy, t0 + Duration::from_secs(5)));
        assert!(b.try_retry(&policy, t0 + Duration::from_secs(11)));
    }
}
