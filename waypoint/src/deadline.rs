//! A call's deadline and each try's. The call's is the sooner of the route's `timeout` and
//! the client's `grpc-timeout` (gRPC over HTTP/2, "Timeout"); a try's is the sooner of that
//! and `perTryTimeout` from the try's start. Only a deadline the client set is passed on to
//! the backend, as what is left of it: the route's own timeout is the waypoint's to enforce
//! (a backend that enforced it too would race it with a status of its own, CANCELLED in
//! tonic's case).

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use crate::grpc;

#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Option<Instant>,
    /// Whether the client sent `grpc-timeout`.
    from_client: bool,
}

impl Deadline {
    pub fn new(route: Option<Duration>, headers: &HeaderMap, now: Instant) -> Self {
        let client = grpc::parse_timeout(headers);
        Deadline {
            at: [route, client].into_iter().flatten().min().map(|t| now + t),
            from_client: headers.contains_key(grpc::TIMEOUT),
        }
    }

    pub fn passed(&self, now: Instant) -> bool {
        self.at.is_some_and(|d| d <= now)
    }

    /// The deadline of a try that starts at `now`.
    pub fn for_try(&self, per_try: Option<Duration>, now: Instant) -> Option<Instant> {
        [self.at, per_try.map(|t| now + t)]
            .into_iter()
            .flatten()
            .min()
    }

    /// The `grpc-timeout` to send with a try that must end by `try_at`, if any.
    pub fn upstream(&self, try_at: Option<Instant>, now: Instant) -> Option<HeaderValue> {
        let try_at = try_at.filter(|_| self.from_client)?;
        Some(grpc::format_timeout(try_at.saturating_duration_since(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: Option<&'static str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(t) = timeout {
            h.insert(grpc::TIMEOUT, HeaderValue::from_static(t));
        }
        h
    }

    #[test]
    fn the_sooner_of_the_route_and_the_client_wins() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let d = Deadline::new(Some(ms(500)), &headers(Some("200m")), now);
        assert_eq!(d.at, Some(now + ms(200)));
        let d = Deadline::new(Some(ms(100)), &headers(Some("200m")), now);
        assert_eq!(d.at, Some(now + ms(100)));
        let d = Deadline::new(None, &headers(None), now);
        assert_eq!(d.at, None);
        assert!(!d.passed(now + ms(10_000)));
        assert!(Deadline::new(Some(ms(1)), &headers(None), now).passed(now + ms(1)));
    }

    #[test]
    fn a_try_ends_at_its_own_timeout_or_the_calls() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let d = Deadline::new(Some(ms(300)), &headers(None), now);
        assert_eq!(d.for_try(Some(ms(100)), now), Some(now + ms(100)));
        assert_eq!(d.for_try(Some(ms(100)), now + ms(250)), Some(now + ms(300)));
        assert_eq!(d.for_try(None, now), Some(now + ms(300)));
        assert_eq!(
            Deadline::new(None, &headers(None), now).for_try(None, now),
            None
        );
    }

    #[test]
    fn only_a_clients_deadline_is_passed_on() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let route = Deadline::new(Some(ms(300)), &headers(None), now);
        assert_eq!(route.upstream(route.for_try(None, now), now), None);
        let client = Deadline::new(Some(ms(300)), &headers(Some("200m")), now);
        let sent = client
            .upstream(client.for_try(None, now), now + ms(50))
            .unwrap();
        assert_eq!(
            grpc::parse_timeout(&{
                let mut h = HeaderMap::new();
                h.insert(grpc::TIMEOUT, sent);
                h
            }),
            Some(ms(150))
        );
    }
}
