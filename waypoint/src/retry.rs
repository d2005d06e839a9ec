//! Retries: which failures and answers a route's `retries` ask to retry (Envoy's retry
//! conditions, the names of Istio's `retryOn`), how long to wait before trying again, and
//! the bookkeeping of one call's tries: `attempts`, a `maxRetries` slot and the budget
//! (`breaker`), the endpoints the next try should avoid (`balance`).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use rand::Rng;
use weft_mesh::config::{RetryOn, RetryPolicy};

use crate::{
    balance::Tried,
    breaker::{Breaker, RetrySlot},
    endpoint::Outcome,
    grpc::{self, Code},
    metrics::Flags,
};

/// Why an attempt got no response headers.
#[derive(Debug)]
pub enum Failure {
    Connect(String),
    /// The destination's node agent refused the tunnel by policy (HBONE 401/403): a
    /// decision, not a fault, so never retried and not held against the endpoint's health.
    Denied(String),
    /// The stream was refused before the backend saw it (REFUSED_STREAM): safe to send
    /// again anywhere.
    Refused(String),
    /// The connection was going away (its GOAWAY had come, as when the pod's node agent
    /// drains) before the request went out on it: safe to send again anywhere, and no sign
    /// of the endpoint's health.
    Closing(String),
    Reset(String),
    Timeout,
}

impl Failure {
    /// From the error of a stream that got no response.
    pub fn of_stream(err: &hyper::Error) -> Failure {
        if err.is_canceled() {
            return Failure::Closing(err.to_string());
        }
        let mut source = std::error::Error::source(err);
        while let Some(e) = source {
            if let Some(h2) = e.downcast_ref::<h2::Error>()
                && h2.reason() == Some(h2::Reason::REFUSED_STREAM)
            {
                return Failure::Refused(err.to_string());
            }
            source = e.source();
        }
        Failure::Reset(err.to_string())
    }

    /// From a failed connection: a refusal by policy, or a connect failure.
    pub fn of_connection(err: &std::io::Error) -> Failure {
        match err.kind() {
            std::io::ErrorKind::PermissionDenied => Failure::Denied(err.to_string()),
            _ => Failure::Connect(err.to_string()),
        }
    }

    /// What it tells about the endpoint's health, if anything.
    pub fn outcome(&self) -> Option<Outcome> {
        Some(match self {
            Failure::Connect(_) => Outcome::ConnectFailure,
            Failure::Denied(_) => Outcome::Status(403),
            Failure::Refused(_) | Failure::Reset(_) => Outcome::Reset,
            Failure::Closing(_) => return None,
            Failure::Timeout => Outcome::Timeout,
        })
    }

    /// The response flag the call gets for it.
    pub fn flag(&self) -> Flags {
        match self {
            Failure::Connect(_) => Flags::UF,
            Failure::Denied(_) => Flags::default(),
            Failure::Timeout => Flags::UT,
            Failure::Refused(_) | Failure::Closing(_) | Failure::Reset(_) => Flags::UR,
        }
    }

    /// The status and message the client gets when it is the call's last word.
    pub fn answer(&self) -> (Code, String) {
        match self {
            Failure::Timeout => (Code::DeadlineExceeded, "upstream request timeout".into()),
            Failure::Connect(m) => (Code::Unavailable, format!("upstream connect error: {m}")),
            Failure::Denied(m) => (
                Code::PermissionDenied,
                format!("RBAC: access denied by the destination's node agent: {m}"),
            ),
            Failure::Refused(m) | Failure::Closing(m) | Failure::Reset(m) => {
                (Code::Unavailable, format!("upstream reset: {m}"))
            }
        }
    }

    /// Whether `on` asks to retry it.
    pub fn retriable(&self, on: &RetryOn) -> bool {
        match self {
            Failure::Connect(_) => on.connect_failure || on.http_5xx || on.gateway_error,
            Failure::Denied(_) => false,
            Failure::Refused(_) | Failure::Closing(_) => {
                on.refused_stream || on.reset || on.http_5xx
            }
            Failure::Reset(_) => on.reset || on.http_5xx,
            // Envoy retries a per-try timeout on 5xx and gateway-error.
            Failure::Timeout => on.http_5xx || on.gateway_error || on.grpc_deadline_exceeded,
        }
    }
}

/// Whether an answer asks for a retry under `retryOn`: the gRPC conditions read
/// `grpc-status`, the HTTP ones `:status` (as Envoy does, so `5xx` alone does not retry a
/// gRPC error, which travels with status 200).
pub fn retry_on_answer(on: &RetryOn, http: u16, grpc: Option<u32>) -> bool {
    let by_grpc = grpc.is_some_and(|code| match code {
        1 => on.grpc_cancelled,
        4 => on.grpc_deadline_exceeded,
        8 => on.grpc_resource_exhausted,
        13 => on.grpc_internal,
        14 => on.grpc_unavailable,
        _ => false,
    });
    by_grpc
        || (on.http_5xx && http >= 500)
        || (on.gateway_error && (502..=504).contains(&http))
        || (on.retriable_status_codes && on.status_codes.contains(&http))
}

/// What an answer is worth: whether `on` retries it, and what it tells of the endpoint's
/// health (for a gRPC call, its status mapped to an HTTP one).
pub fn judge_answer(on: &RetryOn, http: u16, grpc: Option<u32>) -> (bool, Outcome) {
    let health = grpc.map_or(http, grpc::as_http_status);
    (retry_on_answer(on, http, grpc), Outcome::Status(health))
}

/// What follows a try.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again (a retry slot is held).
    Retry,
    /// Retriable, but `maxRetries` or the budget refused the retry (flag URX).
    Refused,
    /// Retriable, but `attempts` are used up (flag URX).
    Exhausted,
    /// The try's answer is the call's.
    Done,
}

/// The tries of one call.
pub struct Tries<'a> {
    policy: &'a RetryPolicy,
    count: u32,
    slot: Option<RetrySlot>,
    /// The endpoint of the last try, and those of the tries before it, for the next to
    /// avoid (only a retry fills `earlier`).
    last: Option<SocketAddr>,
    earlier: Vec<SocketAddr>,
}

impl<'a> Tries<'a> {
    pub fn new(policy: &'a RetryPolicy) -> Self {
        Tries {
            policy,
            count: 0,
            slot: None,
            last: None,
            earlier: Vec::new(),
        }
    }

    /// A try begins.
    pub fn start(&mut self, endpoint: SocketAddr) {
        self.count += 1;
        if let Some(before) = self.last.replace(endpoint) {
            self.earlier.push(before);
        }
    }

    /// The endpoints tried so far.
    pub fn tried(&self) -> Tried<'_> {
        Tried {
            last: self.last,
            earlier: &self.earlier,
        }
    }

    pub fn per_try_timeout(&self) -> Option<Duration> {
        self.policy.per_try_timeout
    }

    /// After a try whose result was `retriable`: whether to try again, given whether the
    /// request can be sent again (`replayable`) and the call is still in time.
    pub fn after(
        &mut self,
        retriable: bool,
        replayable: bool,
        in_time: bool,
        breaker: &Breaker,
    ) -> Next {
        if !retriable {
            return Next::Done;
        }
        if self.count > self.policy.attempts {
            return if self.policy.attempts > 0 {
                Next::Exhausted
            } else {
                Next::Done
            };
        }
        if !replayable || !in_time {
            return Next::Done;
        }
        drop(self.slot.take());
        match breaker.retry() {
            Some(slot) => {
                self.slot = Some(slot);
                Next::Retry
            }
            None => Next::Refused,
        }
    }

    /// Waits before the next try: Envoy's default back-off, a random time below
    /// 25 ms × 2^(n-1), at most 250 ms, and never past `deadline`.
    pub async fn backoff(&self, deadline: Option<Instant>) {
        let ceiling = Duration::from_millis(25u64 << (self.count.max(1) - 1).min(4))
            .min(Duration::from_millis(250));
        let mut wait =
            Duration::from_micros(rand::rng().random_range(0..ceiling.as_micros() as u64));
        if let Some(deadline) = deadline {
            wait = wait.min(deadline.saturating_duration_since(Instant::now()));
        }
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use weft_mesh::config::RetryBudget;

    use super::*;

    fn breaker() -> Breaker {
        Breaker {
            max_requests: None,
            max_retries: None,
            budget_policy: RetryBudget {
                percent: 100.0,
                min_per_second: 100,
            },
            active: Arc::default(),
            retries_active: Arc::default(),
            budget: Mutex::default(),
            unbudgeted: Default::default(),
        }
    }

    #[test]
    fn grpc_conditions_read_the_grpc_status_and_http_ones_the_http_status() {
        let on = RetryOn {
            http_5xx: true,
            ..RetryOn::default()
        };
        assert!(retry_on_answer(&on, 503, None));
        assert!(
            !retry_on_answer(&on, 200, Some(14)),
            "5xx is not UNAVAILABLE"
        );
        let on = RetryOn {
            grpc_unavailable: true,
            ..RetryOn::default()
        };
        assert!(retry_on_answer(&on, 200, Some(14)));
        assert!(!retry_on_answer(&on, 503, None));
        let on = RetryOn {
            gateway_error: true,
            ..RetryOn::default()
        };
        assert!(retry_on_answer(&on, 504, None) && !retry_on_answer(&on, 500, None));
        let on = RetryOn {
            retriable_status_codes: true,
            status_codes: vec![409],
            ..RetryOn::default()
        };
        assert!(retry_on_answer(&on, 409, None) && !retry_on_answer(&on, 503, None));
    }

    #[test]
    fn failures_retry_under_their_conditions() {
        let only = |f: fn(&mut RetryOn)| {
            let mut on = RetryOn::default();
            f(&mut on);
            on
        };
        let connect = Failure::Connect(String::new());
        assert!(connect.retriable(&only(|o| o.connect_failure = true)));
        assert!(!connect.retriable(&only(|o| o.reset = true)));
        let reset = Failure::Reset(String::new());
        assert!(reset.retriable(&only(|o| o.reset = true)));
        assert!(!reset.retriable(&only(|o| o.refused_stream = true)));
        let refused = Failure::Refused(String::new());
        assert!(refused.retriable(&only(|o| o.refused_stream = true)));
        assert_eq!(refused.outcome(), Some(Outcome::Reset));
        // A connection that was going away: retried as a refusal, and the endpoint's
        // health is not touched (its node agent drained; the pod is fine).
        let closing = Failure::Closing(String::new());
        assert!(closing.retriable(&only(|o| o.refused_stream = true)));
        assert!(closing.retriable(&RetryOn::default_conditions()));
        assert_eq!(closing.outcome(), None);
        assert!(Failure::Timeout.retriable(&only(|o| o.grpc_deadline_exceeded = true)));
        assert!(!Failure::Denied(String::new()).retriable(&only(|o| {
            *o = RetryOn::default_conditions();
            o.http_5xx = true;
        })));
    }

    #[test]
    fn tries_stop_at_attempts_and_when_the_request_cannot_be_sent_again() {
        let policy = RetryPolicy {
            attempts: 2,
            per_try_timeout: None,
            retry_on: RetryOn::default_conditions(),
        };
        let b = breaker();
        let mut tries = Tries::new(&policy);
        let at: SocketAddr = "10.1.0.1:80".parse().unwrap();
        tries.start(at);
        assert_eq!(tries.after(false, true, true, &b), Next::Done);
        assert_eq!(tries.after(true, true, true, &b), Next::Retry);
        tries.start(at);
        assert_eq!(
            tries.after(true, false, true, &b),
            Next::Done,
            "not replayable"
        );
        assert_eq!(
            tries.after(true, true, false, &b),
            Next::Done,
            "out of time"
        );
        assert_eq!(tries.after(true, true, true, &b), Next::Retry);
        tries.start(at);
        assert_eq!(tries.after(true, true, true, &b), Next::Exhausted);

        let none = RetryPolicy {
            attempts: 0,
            ..policy
        };
        let mut tries = Tries::new(&none);
        tries.start(at);
        assert_eq!(tries.after(true, true, true, &b), Next::Done);
    }
}
