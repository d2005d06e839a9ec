//! One backend of a cluster, and what the waypoint learns about it from its answers: the
//! requests in flight (for least-request), a peak-sensitive latency average (for peak-EWMA),
//! and consecutive failures (for outlier detection, which ejects a failing backend for a
//! while). The ejection rules follow Envoy's outlier detection documentation, which Istio's
//! `DestinationRule.trafficPolicy.outlierDetection` configures.

use std::{
    net::SocketAddr,
    sync::Arc,
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;

use crate::upstream::Connections;

/// How an attempt on an endpoint ended, as far as its health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An answer: the HTTP status, or the gRPC status mapped to one (see `grpc::as_http_status`).
    Status(u16),
    /// No connection could be made.
    ConnectFailure,
    /// The backend reset the stream or closed the connection.
    Reset,
    /// No answer within the attempt's time.
    Timeout,
}

impl Outcome {
    fn is_5xx(self) -> bool {
        !matches!(self, Outcome::Status(s) if s < 500)
    }

    /// 502, 503, 504 and failures to answer at all (Envoy's "gateway errors").
    fn is_gateway_error(self) -> bool {
        !matches!(self, Outcome::Status(s) if !(502..=504).contains(&s))
    }
}

/// The outlier detection settings an endpoint is judged by.
#[derive(Debug, Clone, PartialEq)]
pub struct Ejection {
    pub consecutive_5xx: Option<u32>,
    pub consecutive_gateway: Option<u32>,
    pub interval: Duration,
    pub base_time: Duration,
    pub max_percent: u32,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    ejected_until: Option<Instant>,
    /// Ejections in a row: each lasts `base_time` times this. One is forgiven for every
    /// `interval` the endpoint then stays in.
    ejections: u32,
    returned_at: Option<Instant>,
}

/// Peak-EWMA latency (the "peak exponentially weighted moving average" balancer of
/// Finagle and linkerd2-proxy, rewritten from its description): a slower sample replaces
/// the average at once, a faster one pulls it down with decay time `DECAY`.
#[derive(Debug)]
struct Latency {
    nanos: f64,
    at: Instant,
}

const DECAY: Duration = Duration::from_secs(10);

pub struct Endpoint {
    /// The pod's address and target port.
    pub address: SocketAddr,
    /// The HBONE address of the node agent in front of the pod.
    pub node: SocketAddr,
    /// The address's hash, for rendezvous hashing.
    pub hash: u64,
    pub active: AtomicUsize,
    /// Attempts sent here (`weft_waypoint_upstream_attempts_total`).
    pub attempts: Counter,
    /// The pod's workload name and SPIFFE identity, for metrics and the access log.
    pub workload: Arc<str>,
    pub principal: Arc<str>,
    latency: Mutex<Latency>,
    health: Mutex<Health>,
    /// Whether `health` holds an ejection: read without the lock by every pick.
    out: AtomicBool,
    /// Shared with the same pod's endpoints in other clusters that keep the same limits
    /// ([`crate::cluster::Clusters`]).
    pub connections: Arc<Connections>,
}

impl Endpoint {
    pub fn new(
        address: SocketAddr,
        node: SocketAddr,
        attempts: Counter,
        connections: Arc<Connections>,
    ) -> Self {
        Endpoint {
            address,
            node,
            workload: "unknown".into(),
            principal: "unknown".into(),
            hash: crate::balance::hash_key(address.to_string().as_bytes()),
            active: AtomicUsize::new(0),
            attempts,
            latency: Mutex::new(Latency {
                nanos: 0.0,
                at: Instant::now(),
            }),
            health: Mutex::new(Health::default()),
            out: AtomicBool::new(false),
            connections,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.active.load(Ordering::Relaxed)
    }

    /// Peak-EWMA's cost: expected latency times the queue the request would join.
    pub fn cost(&self) -> f64 {
        let nanos = self.latency.lock().map(|l| l.nanos).unwrap_or(0.0);
        (nanos + 1.0) * (self.in_flight() as f64 + 1.0)
    }

    pub fn observe_latency(&self, sample: Duration) {
        let sample = sample.as_nanos() as f64;
        if let Ok(mut l) = self.latency.lock() {
            let now = Instant::now();
            if sample > l.nanos {
                l.nanos = sample;
            } else {
                let elapsed = now.duration_since(l.at).as_secs_f64();
                let w = (-elapsed / DECAY.as_secs_f64()).exp();
                l.nanos = l.nanos * w + sample * (1.0 - w);
            }
            l.at = now;
        }
    }

    /// Whether the endpoint is ejected at `now`.
    pub fn ejected(&self, now: Instant) -> bool {
        if !self.out.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut h) = self.health.lock() else {
            return false;
        };
        match h.ejected_until {
            Some(until) if now < until => true,
            Some(_) => {
                h.ejected_until = None;
                h.returned_at = Some(now);
                self.out.store(false, Ordering::Release);
                false
            }
            None => false,
        }
    }

    /// Counts an attempt's outcome. Returns true when it crossed a threshold, so that the
    /// cluster may eject the endpoint (if `max_percent` allows; see [`Endpoint::eject`]).
    pub fn record(&self, outcome: Outcome, rules: &Ejection) -> bool {
        let Ok(mut h) = self.health.lock() else {
            return false;
        };
        if outcome.is_5xx() {
            h.consecutive_5xx += 1;
        } else {
            h.consecutive_5xx = 0;
        }
        if outcome.is_gateway_error() {
            h.consecutive_gateway += 1;
        } else {
            h.consecutive_gateway = 0;
        }
        h.ejected_until.is_none()
            && (rules
                .consecutive_5xx
                .is_some_and(|n| n > 0 && h.consecutive_5xx >= n)
                || rules
                    .consecutive_gateway
                    .is_some_and(|n| n > 0 && h.consecutive_gateway >= n))
    }

    /// Ejects the endpoint for `base_time` times its ejections in a row.
    pub fn eject(&self, rules: &Ejection, now: Instant) -> Duration {
        let Ok(mut h) = self.health.lock() else {
            return Duration::ZERO;
        };
        if let Some(back) = h.returned_at {
            let forgiven = now.duration_since(back).as_nanos() / rules.interval.as_nanos().max(1);
            h.ejections = h
                .ejections
                .saturating_sub(forgiven.min(u32::MAX as u128) as u32);
        }
        h.ejections = h.ejections.saturating_add(1).min(10);
        let time = rules.base_time * h.ejections;
        h.ejected_until = Some(now + time);
        self.out.store(true, Ordering::Release);
        h.consecutive_5xx = 0;
        h.consecutive_gateway = 0;
        time
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Ejection {
        Ejection {
            consecutive_5xx: Some(3),
            consecutive_gateway: None,
            interval: Duration::from_secs(1),
            base_time: Duration::from_secs(2),
            max_percent: 100,
        }
    }

    fn endpoint() -> Endpoint {
        Endpoint::new(
            "10.0.0.1:80".parse().unwrap(),
            "10.99.0.1:15008".parse().unwrap(),
            Counter::default(),
            Default::default(),
        )
    }

    #[test]
    fn third_consecutive_5xx_crosses_the_threshold() {
        let e = endpoint();
        assert!(!e.record(Outcome::Status(503), &rules()));
        assert!(!e.record(Outcome::ConnectFailure, &rules()));
        assert!(e.record(Outcome::Status(500), &rules()));
    }

    #[test]
    fn a_success_resets_the_count() {
        let e = endpoint();
        e.record(Outcome::Status(503), &rules());
        e.record(Outcome::Status(503), &rules());
        assert!(!e.record(Outcome::Status(200), &rules()));
        assert!(!e.record(Outcome::Status(503), &rules()));
    }

    #[test]
    fn gateway_errors_exclude_plain_500() {
        let r = Ejection {
            consecutive_5xx: None,
            consecutive_gateway: Some(2),
            ..rules()
        };
        let e = endpoint();
        assert!(!e.record(Outcome::Status(500), &r));
        assert!(!e.record(Outcome::Status(500), &r));
        assert!(!e.record(Outcome::Timeout, &r));
        assert!(e.record(Outcome::Status(503), &r));
    }

    #[test]
    fn ejection_lasts_base_time_then_grows_and_is_forgiven() {
        let e = endpoint();
        let t0 = Instant::now();
        assert_eq!(e.eject(&rules(), t0), Duration::from_secs(2));
        assert!(e.ejected(t0 + Duration::from_secs(1)));
        let back = t0 + Duration::from_secs(2);
        assert!(!e.ejected(back));
        // Failing again at once: twice as long.
        assert_eq!(e.eject(&rules(), back), Duration::from_secs(4));
        let back = back + Duration::from_secs(4);
        assert!(!e.ejected(back));
        // Healthy for two intervals: both ejections forgiven, so base time again.
        assert_eq!(
            e.eject(&rules(), back + Duration::from_secs(2)),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = endpoint();
        e.observe_latency(Duration::from_millis(10));
        let high = e.cost();
        e.observe_latency(Duration::from_millis(1));
        // A sample right after barely moves the average down.
        assert!(e.cost() > high * 0.9);
    }
}
