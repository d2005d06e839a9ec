//! A cluster's circuit breakers (Envoy's, as Istio's `connectionPool.http` sets them): at
//! most `http2MaxRequests` requests and `maxRetries` retries in flight, and the retry
//! budget on top. A slot is held by a guard and given back when the guard drops, however
//! the call ends.
//!
//! The counters are shared with the cluster's next versions (a rebuild after a new
//! configuration), so that calls started before it still count.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Instant,
};

use weft_mesh::config::RetryBudget;

use crate::budget::Budget;

pub struct Breaker {
    pub max_requests: Option<usize>,
    pub max_retries: Option<usize>,
    pub budget_policy: RetryBudget,
    /// Requests and retries in flight.
    pub active: Arc<AtomicUsize>,
    pub retries_active: Arc<AtomicUsize>,
    pub budget: Mutex<Budget>,
    /// Requests admitted since the budget last counted them: counted in batches (at the
    /// next retry, or by [`Breaker::fold`] each second), so that a call takes no lock.
    pub unbudgeted: AtomicU64,
}

/// A request slot within `http2MaxRequests`, released when dropped.
pub struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A retry slot within `maxRetries`, released when dropped.
pub struct RetrySlot(Arc<AtomicUsize>);

impl Drop for RetrySlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Breaker {
    /// Admits a request unless `http2MaxRequests` are already in flight, and counts it in
    /// the budget's requests.
    pub fn admit(&self) -> Option<Admission> {
        let now = self.active.fetch_add(1, Ordering::AcqRel);
        let admission = Admission(self.active.clone());
        if self.max_requests.is_some_and(|max| now >= max) {
            return None;
        }
        self.unbudgeted.fetch_add(1, Ordering::Relaxed);
        Some(admission)
    }

    /// Takes a retry slot if `maxRetries` allows and the budget has room.
    pub fn retry(&self) -> Option<RetrySlot> {
        let now = self.retries_active.fetch_add(1, Ordering::AcqRel);
        let slot = RetrySlot(self.retries_active.clone());
        if self.max_retries.is_some_and(|max| now >= max) {
            return None;
        }
        let now = Instant::now();
        let allowed = self.budget.lock().is_ok_and(|mut b| {
            b.requests(self.unbudgeted.swap(0, Ordering::Relaxed), now);
            b.try_retry(&self.budget_policy, now)
        });
        allowed.then_some(slot)
    }

    /// Counts the requests admitted since the last count in the budget's current second.
    pub fn fold(&self) {
        let admitted = self.unbudgeted.swap(0, Ordering::Relaxed);
        if admitted > 0
            && let Ok(mut b) = self.budget.lock()
        {
            b.requests(admitted, Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(max_requests: Option<usize>, max_retries: Option<usize>, percent: f64) -> Breaker {
        Breaker {
            max_requests,
            max_retries,
            budget_policy: RetryBudget {
                percent,
                min_per_second: 0,
            },
            active: Arc::default(),
            retries_active: Arc::default(),
            budget: Mutex::default(),
            unbudgeted: AtomicU64::default(),
        }
    }

    #[test]
    fn requests_past_the_limit_are_refused_until_a_slot_is_given_back() {
        let b = breaker(Some(2), None, 100.0);
        let (one, two) = (b.admit(), b.admit());
        assert!(one.is_some() && two.is_some());
        assert!(b.admit().is_none());
        drop(one);
        assert!(b.admit().is_some());
        assert!(breaker(None, None, 0.0).admit().is_some());
    }

    #[test]
    fn retries_need_a_slot_and_budget() {
        let b = breaker(None, Some(1), 100.0);
        let _admitted = b.admit();
        let slot = b.retry();
        assert!(slot.is_some());
        assert!(b.retry().is_none(), "maxRetries: 1 in flight");
        drop(slot);
        // One request admitted, one retry spent: 100% of one is used up.
        assert!(b.retry().is_none(), "the budget");
        let _again = b.admit();
        assert!(b.retry().is_some());
    }
}
