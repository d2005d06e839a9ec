//! Passive health of a peer (a backend pod, a waypoint pod): a failed connection takes it
//! out of the picks for a back-off, 1 s doubling with each failure in a row up to 8 s, and a
//! new connection that succeeds brings it back at once. Lock-free, so that a pick can ask
//! on every call. Those who pick still take an unreachable peer when no other is left.

use std::{
    sync::{
        LazyLock,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

#[derive(Debug, Default)]
pub struct Reachability {
    /// Until when the peer is out, in milliseconds after [`EPOCH`] (plus one); 0 when it is
    /// in.
    until: AtomicU64,
    failures: AtomicU32,
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The first back-off.
pub const BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF_DOUBLINGS: u32 = 3;

fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(*EPOCH).as_millis() as u64 + 1
}

impl Reachability {
    /// Whether the peer may be picked at `now`: no failure, or its back-off is over.
    pub fn reachable(&self, now: Instant) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        until == 0 || millis(now) >= until
    }

    /// A connection to the peer failed (or was reset): it is out for a while.
    pub fn failed(&self, now: Instant) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed);
        let backoff = BACKOFF * 2u32.pow(failures.min(MAX_BACKOFF_DOUBLINGS));
        self.until.store(millis(now + backoff), Ordering::Relaxed);
    }

    /// A new connection succeeded: the peer is back.
    pub fn reached(&self) {
        if self.failures.swap(0, Ordering::Relaxed) > 0 {
            self.until.store(0, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_to_eight_seconds_and_a_success_ends_it() {
        let (r, now) = (Reachability::default(), Instant::now());
        assert!(r.reachable(now));
        r.failed(now);
        assert!(!r.reachable(now + Duration::from_millis(900)));
        assert!(r.reachable(now + Duration::from_millis(1100)));
        r.failed(now);
        assert!(!r.reachable(now + Duration::from_millis(1900)));
        assert!(r.reachable(now + Duration::from_millis(2100)));
        for _ in 0..5 {
            r.failed(now);
        }
        assert!(!r.reachable(now + Duration::from_millis(7900)));
        assert!(
            r.reachable(now + Duration::from_millis(8100)),
            "capped at 8 s"
        );
        r.reached();
        assert!(r.reachable(now));
        // The doubling starts over.
        r.failed(now);
        assert!(r.reachable(now + Duration::from_millis(1100)));
    }
}
