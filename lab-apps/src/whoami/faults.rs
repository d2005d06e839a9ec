//! Backends that misbehave on purpose.
//!
//! A waypoint's retries, outlier detection and timeouts can only be tested against a
//! backend that fails, and a test can only assert exact counts if the backend fails
//! predictably. So every fault here is deterministic: a share of calls fails by the calls'
//! arrival order, not by chance, and "fail the first N" counts per request key, so a test
//! that sends one key per logical call sees exactly N failed attempts before one succeeds,
//! whichever backend the retries reach.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

/// The request header whose value groups attempts of one logical call for `fail_first`.
pub const REQUEST_KEY: &str = "x-request-key";
/// A request header that overrides the server's delay for one call, in milliseconds.
pub const DELAY_HEADER: &str = "x-delay-ms";
/// The longest delay a header may ask for, so that a typo cannot park a call for days.
pub const MAX_DELAY: Duration = Duration::from_secs(300);
/// How many request keys `fail_first` remembers. Keys past this pass without failing
/// (and the server says so once on stderr) rather than growing the server without bound.
const MAX_KEYS: usize = 100_000;

/// How a server misbehaves; the default misbehaves in no way.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultConfig {
    /// Calls of each request key that fail with `Unavailable` before one is let through.
    pub fail_first: u64,
    /// The status of the `fail_percent` share of Whoami calls.
    pub fail_status: Code,
    /// 0..=100.
    pub fail_percent: u8,
    /// How long each Whoami call waits before it answers (success or failure).
    pub delay: Duration,
    /// Every Whoami call fails at once with this status, before anything else happens.
    pub trailers_only: Option<Code>,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            fail_first: 0,
            fail_status: Code::Unavailable,
            fail_percent: 0,
            delay: Duration::ZERO,
            trailers_only: None,
        }
    }
}

/// What a Whoami call does after it arrived: wait, then fail or answer.
#[derive(Debug)]
pub struct WhoamiPlan {
    pub delay: Duration,
    pub fail: Option<Status>,
}

/// The faults of one server, and what it must remember to apply them.
#[derive(Debug, Default)]
pub struct Faults {
    cfg: FaultConfig,
    /// Calls seen per request key.
    keys: Mutex<HashMap<String, u64>>,
    keys_full_reported: AtomicBool,
    /// Whoami calls that reached the percentage check, in arrival order.
    whoami_seen: AtomicU64,
}

impl Faults {
    pub fn new(cfg: FaultConfig) -> Self {
        Self {
            cfg,
            ..Self::default()
        }
    }

    pub fn config(&self) -> &FaultConfig {
        &self.cfg
    }

    /// The `fail_first` fault, which every method honours: `Some` when this call is one of
    /// the first N of its request key. Calls without a key are never failed by it.
    pub fn fail_first(&self, metadata: &MetadataMap) -> Option<Status> {
        if self.cfg.fail_first == 0 {
            return None;
        }
        let key = metadata.get(REQUEST_KEY)?.to_str().ok()?;
        let seen = {
            // A poisoned lock only means another call panicked mid-count; the map is intact.
            let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
            let len = keys.len();
            match keys.get_mut(key) {
                Some(seen) => {
                    *seen += 1;
                    *seen - 1
                }
                None if len < MAX_KEYS => {
                    keys.insert(key.to_string(), 1);
                    0
                }
                None => {
                    if !self.keys_full_reported.swap(true, Ordering::Relaxed) {
                        eprintln!(
                            "uuid-server: {MAX_KEYS} request keys remembered; calls with new keys are no longer failed"
                        );
                    }
                    return None;
                }
            }
        };
        (seen < self.cfg.fail_first).then(|| {
            Status::unavailable(format!(
                "fail-first: attempt {} of key {key:?} fails ({} must)",
                seen + 1,
                self.cfg.fail_first
            ))
        })
    }

    /// Decides, as a Whoami call arrives, what it will do. `Err` is the answer to give at
    /// once: trailers-only mode, or a delay header that is not a number of milliseconds.
    pub fn whoami(&self, metadata: &MetadataMap) -> Result<WhoamiPlan, Status> {
        if let Some(code) = self.cfg.trailers_only {
            return Err(Status::new(
                code,
                "trailers-only-status: failing every call",
            ));
        }
        let delay = match metadata.get(DELAY_HEADER) {
            None => self.cfg.delay,
            Some(value) => parse_delay(value.to_str().ok())?,
        };
        let mut fail = self.fail_first(metadata);
        let k = self.whoami_seen.fetch_add(1, Ordering::Relaxed);
        if fail.is_none() && in_share(k, self.cfg.fail_percent) {
            fail = Some(Status::new(
                self.cfg.fail_status,
                format!("fail-percent: {}% of calls fail", self.cfg.fail_percent),
            ));
        }
        Ok(WhoamiPlan { delay, fail })
    }
}

fn parse_delay(value: Option<&str>) -> Result<Duration, Status> {
    let ms: u64 = value
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| Status::invalid_argument(format!("{DELAY_HEADER} is not a number")))?;
    let delay = Duration::from_millis(ms);
    if delay > MAX_DELAY {
        return Err(Status::invalid_argument(format!(
            "{DELAY_HEADER} {ms} is over the limit of {} ms",
            MAX_DELAY.as_millis()
        )));
    }
    Ok(delay)
}

/// Whether call number `k` (from 0) is in a `percent` share spread evenly over the calls:
/// it is when it raises the count `floor(calls * percent / 100)`, so every run of 100
/// consecutive calls holds exactly `percent` of them, and 100 means all.
fn in_share(k: u64, percent: u8) -> bool {
    let p = u64::from(percent.min(100));
    (k + 1) * p / 100 > k * p / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    #[test]
    fn share_is_exact_over_every_hundred_calls() {
        for percent in [0u8, 1, 10, 33, 50, 99, 100] {
            for start in [0u64, 17, 1000] {
                let failed = (start..start + 100)
                    .filter(|&k| in_share(k, percent))
                    .count();
                assert_eq!(failed, usize::from(percent), "{percent}% from {start}");
            }
        }
        assert!((0..1000).all(|k| in_share(k, 100)));
        assert!((0..1000).all(|k| !in_share(k, 0)));
    }

    #[test]
    fn fail_first_counts_per_key() {
        let faults = Faults::new(FaultConfig {
            fail_first: 2,
            ..FaultConfig::default()
        });
        let a = with(&[(REQUEST_KEY, "a")]);
        let b = with(&[(REQUEST_KEY, "b")]);
        assert_eq!(
            faults.fail_first(&a).map(|s| s.code()),
            Some(Code::Unavailable)
        );
        assert!(faults.fail_first(&b).is_some());
        assert!(faults.fail_first(&a).is_some());
        assert!(faults.fail_first(&a).is_none());
        assert!(faults.fail_first(&a).is_none());
        assert!(faults.fail_first(&b).is_some());
        assert!(faults.fail_first(&b).is_none());
        // No key, no fault.
        assert!(faults.fail_first(&MetadataMap::new()).is_none());
    }

    #[test]
    fn trailers_only_comes_first() {
        let faults = Faults::new(FaultConfig {
            trailers_only: Some(Code::ResourceExhausted),
            fail_first: 5,
            ..FaultConfig::default()
        });
        let err = faults.whoami(&with(&[(REQUEST_KEY, "a")])).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
    }

    #[test]
    fn delay_header_overrides_and_is_checked() {
        let faults = Faults::new(FaultConfig {
            delay: Duration::from_millis(50),
            ..FaultConfig::default()
        });
        let plan = faults.whoami(&MetadataMap::new()).unwrap();
        assert_eq!(plan.delay, Duration::from_millis(50));
        assert!(plan.fail.is_none());
        let plan = faults.whoami(&with(&[(DELAY_HEADER, "7")])).unwrap();
        assert_eq!(plan.delay, Duration::from_millis(7));
        let err = faults.whoami(&with(&[(DELAY_HEADER, "soon")])).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        let err = faults
            .whoami(&with(&[(DELAY_HEADER, "99999999")]))
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }

    #[test]
    fn percent_fails_with_the_configured_status() {
        let faults = Faults::new(FaultConfig {
            fail_status: Code::Internal,
            fail_percent: 50,
            ..FaultConfig::default()
        });
        let codes: Vec<_> = (0..4)
            .map(|_| {
                faults
                    .whoami(&MetadataMap::new())
                    .unwrap()
                    .fail
                    .map(|s| s.code())
            })
            .collect();
        assert_eq!(
            codes,
            [None, Some(Code::Internal), None, Some(Code::Internal)]
        );
    }
}
