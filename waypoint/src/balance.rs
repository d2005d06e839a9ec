//! The balancer: which endpoint of a cluster takes an attempt. Ejected endpoints are
//! skipped. A retry avoids the endpoints that the call's earlier tries went to (Istio's
//! default retry host predicate, `previous_hosts`), and every attempt avoids pods whose
//! connections just failed (`upstream::Connections::reachable`), as long as another
//! endpoint is left; when none is, the pick falls back a step at a time (see [`Eligible`])
//! rather than fail a call that one of them might still serve. The balancers are Istio's
//! `loadBalancer.simple` (ROUND_ROBIN, RANDOM, LEAST_REQUEST), Weft's PEAK_EWMA, and
//! `consistentHash` by header or by source address.
//!
//! A pick allocates nothing and takes no lock unless an endpoint is ejected.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Instant,
};

use http::HeaderMap;
use rand::Rng;
use weft_mesh::config::{HashKey, LoadBalancer};

use crate::endpoint::Endpoint;

/// The endpoints of a call's tries so far: `last`, and the ones before it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Tried<'a> {
    pub last: Option<SocketAddr>,
    pub earlier: &'a [SocketAddr],
}

impl Tried<'_> {
    fn contains(&self, address: SocketAddr) -> bool {
        self.last == Some(address) || self.earlier.contains(&address)
    }
}

/// How far a pick had to fall back. Each step admits more of the healthy (not ejected)
/// endpoints than the one before it; a pick takes the first step that admits any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Reachable, and tried by no earlier try of the call.
    Untried,
    /// Reachable, and not the last try's.
    NotLast,
    Reachable,
    /// None is reachable: any but the last try's.
    AnyNotLast,
    Any,
}

const STEPS: [Step; 5] = [
    Step::Untried,
    Step::NotLast,
    Step::Reachable,
    Step::AnyNotLast,
    Step::Any,
];

impl Step {
    fn admits(self, reachable: bool, tried: bool, last: bool) -> bool {
        match self {
            Step::Untried => reachable && !tried,
            Step::NotLast => reachable && !last,
            Step::Reachable => reachable,
            Step::AnyNotLast => !last,
            Step::Any => true,
        }
    }
}

/// The endpoints an attempt may go to, without collecting them: the healthy ones that the
/// first step admitting any admits.
struct Eligible<'a> {
    all: &'a [Arc<Endpoint>],
    now: Instant,
    tried: Tried<'a>,
    step: Step,
    count: usize,
}

impl<'a> Eligible<'a> {
    fn new(all: &'a [Arc<Endpoint>], tried: Tried<'a>, now: Instant) -> Self {
        let mut counts = [0; STEPS.len()];
        for e in all.iter().filter(|e| !e.ejected(now)) {
            let reachable = e.connections.reachable(now);
            let (was_tried, last) = (tried.contains(e.address), tried.last == Some(e.address));
            for (count, step) in counts.iter_mut().zip(STEPS) {
                *count += usize::from(step.admits(reachable, was_tried, last));
            }
        }
        let (step, count) = STEPS
            .into_iter()
            .zip(counts)
            .find(|&(_, count)| count > 0)
            .unwrap_or((Step::Any, 0));
        Eligible {
            all,
            now,
            tried,
            step,
            count,
        }
    }

    fn iter(&self) -> impl Iterator<Item = &'a Arc<Endpoint>> + '_ {
        self.all.iter().filter(|e| {
            !e.ejected(self.now)
                && self.step.admits(
                    e.connections.reachable(self.now),
                    self.tried.contains(e.address),
                    self.tried.last == Some(e.address),
                )
        })
    }

    fn nth(&self, n: usize) -> Option<&'a Arc<Endpoint>> {
        self.iter().nth(n)
    }
}

/// Picks an endpoint of `all` for an attempt by `balancer` (`next` is round robin's turn,
/// `hash` the call's consistent-hash key), avoiding the endpoints `tried` and those that
/// are unreachable while another is left.
pub fn pick(
    balancer: &LoadBalancer,
    all: &[Arc<Endpoint>],
    next: &AtomicUsize,
    hash: Option<u64>,
    tried: Tried<'_>,
) -> Option<Arc<Endpoint>> {
    let eligible = Eligible::new(all, tried, Instant::now());
    if eligible.count == 0 {
        return None;
    }
    let chosen = match (balancer, hash) {
        (LoadBalancer::ConsistentHash(_), Some(hash)) => rendezvous(eligible.iter(), hash),
        (LoadBalancer::Random, _) => eligible.nth(rand::rng().random_range(0..eligible.count)),
        (LoadBalancer::LeastRequest, _) => two_choices(&eligible, |e| e.in_flight() as f64),
        (LoadBalancer::PeakEwma, _) => two_choices(&eligible, Endpoint::cost),
        _ => eligible.nth(next.fetch_add(1, Ordering::Relaxed) % eligible.count),
    };
    chosen.cloned()
}

/// The call's consistent-hash key, when its cluster hashes: the header's value (none when
/// the call lacks the header: it is then balanced as round robin), or the client's address.
pub fn call_hash(balancer: &LoadBalancer, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
    match balancer {
        LoadBalancer::ConsistentHash(HashKey::Header(name)) => {
            headers.get(name.as_str()).map(|v| hash_key(v.as_bytes()))
        }
        LoadBalancer::ConsistentHash(HashKey::SourceIp) => Some(match client {
            IpAddr::V4(ip) => hash_key(&ip.octets()),
            IpAddr::V6(ip) => hash_key(&ip.octets()),
        }),
        _ => None,
    }
}

/// Power of two choices (Mitzenmacher): two endpoints at random, the cheaper wins.
fn two_choices<'a>(
    eligible: &Eligible<'a>,
    cost: impl Fn(&Endpoint) -> f64,
) -> Option<&'a Arc<Endpoint>> {
    if eligible.count == 1 {
        return eligible.nth(0);
    }
    let mut rng = rand::rng();
    let a = rng.random_range(0..eligible.count);
    let mut b = rng.random_range(0..eligible.count - 1);
    if b >= a {
        b += 1;
    }
    let (a, b) = (eligible.nth(a)?, eligible.nth(b)?);
    Some(if cost(b) < cost(a) { b } else { a })
}

/// Rendezvous (highest random weight) hashing: each key goes to the endpoint with the
/// highest mix of key and address, so a key stays put unless its endpoint leaves.
fn rendezvous<'a>(
    eligible: impl Iterator<Item = &'a Arc<Endpoint>>,
    key: u64,
) -> Option<&'a Arc<Endpoint>> {
    eligible.max_by_key(|e| mix(key ^ e.hash))
}

/// SplitMix64's finaliser: spreads similar inputs over the whole range.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable hash of a consistent-hash key: FNV-1a (64-bit), fixed by its specification, so
/// that every waypoint replica and every build sends a key to the same endpoint.
pub fn hash_key(value: &[u8]) -> u64 {
    value.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use prometheus_client::metrics::counter::Counter;

    use super::*;
    use crate::endpoint::{Ejection, Outcome};

    fn endpoints(n: u8) -> Vec<Arc<Endpoint>> {
        (1..=n)
            .map(|i| {
                Arc::new(Endpoint::new(
                    SocketAddr::new([10, 1, 0, i].into(), 80),
                    "10.0.0.1:15008".parse().unwrap(),
                    Counter::default(),
                    Default::default(),
                ))
            })
            .collect()
    }

    fn eject(e: &Endpoint) {
        let rules = Ejection {
            consecutive_5xx: Some(1),
            consecutive_gateway: None,
            interval: Duration::from_secs(10),
            base_time: Duration::from_secs(30),
            max_percent: 100,
        };
        assert!(e.record(Outcome::Status(503), &rules));
        e.eject(&rules, Instant::now());
    }

    fn last(address: SocketAddr) -> Tried<'static> {
        Tried {
            last: Some(address),
            earlier: &[],
        }
    }

    fn round_robin(all: &[Arc<Endpoint>], next: &AtomicUsize, tried: Tried<'_>) -> SocketAddr {
        let e = pick(&LoadBalancer::RoundRobin, all, next, None, tried);
        e.expect("an endpoint").address
    }

    /// A retry goes to an endpoint that no try of the call went to; when every one was
    /// tried, to any but the last.
    #[test]
    fn a_retry_avoids_every_endpoint_tried_before() {
        let all = endpoints(3);
        let next = AtomicUsize::new(0);
        let (a, b, c) = (all[0].address, all[1].address, all[2].address);
        let earlier = [a];
        for _ in 0..10 {
            let tried = Tried {
                last: Some(b),
                earlier: &earlier,
            };
            assert_eq!(round_robin(&all, &next, tried), c);
        }
        let earlier = [a, b];
        let mut seen = Vec::new();
        for _ in 0..10 {
            let tried = Tried {
                last: Some(c),
                earlier: &earlier,
            };
            seen.push(round_robin(&all, &next, tried));
        }
        assert!(
            !seen.contains(&c) && seen.contains(&a) && seen.contains(&b),
            "{seen:?}"
        );
    }

    /// A pod whose connection failed is out of the picks while another is reachable, and
    /// still picked when none is; it is back when its back-off ends.
    #[test]
    fn an_unreachable_pod_is_avoided_until_its_backoff_ends() {
        let all = endpoints(3);
        let next = AtomicUsize::new(0);
        let now = Instant::now();
        all[0].connections.unreachable(now);
        for _ in 0..20 {
            assert_ne!(round_robin(&all, &next, Tried::default()), all[0].address);
        }
        // A retry from b: c, rather than the unreachable a that it has not tried.
        for _ in 0..10 {
            assert_eq!(
                round_robin(&all, &next, last(all[1].address)),
                all[2].address
            );
        }
        all[1].connections.unreachable(now);
        all[2].connections.unreachable(now);
        let mut seen: Vec<SocketAddr> = (0..6)
            .map(|_| round_robin(&all, &next, last(all[2].address)))
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(
            seen,
            [all[0].address, all[1].address],
            "all out: any but the last"
        );

        // The back-off itself is `weft_mesh::reachability`'s, tested there.
        assert!(
            all[0]
                .connections
                .reachable(now + Duration::from_millis(1100))
        );
    }

    /// FNV-1a's published test vectors: every replica hashes a key the same.
    #[test]
    fn hash_keys_are_fnv1a() {
        assert_eq!(hash_key(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash_key(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash_key(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn ejected_endpoints_are_skipped_and_the_previous_one_avoided() {
        let all = endpoints(3);
        let next = AtomicUsize::new(0);
        eject(&all[0]);
        for _ in 0..20 {
            let e = pick(
                &LoadBalancer::RoundRobin,
                &all,
                &next,
                None,
                last(all[1].address),
            );
            assert_eq!(e.unwrap().address, all[2].address);
        }
        // The one to avoid is the only healthy one: it is taken.
        eject(&all[2]);
        let e = pick(
            &LoadBalancer::Random,
            &all,
            &next,
            None,
            last(all[1].address),
        );
        assert_eq!(e.unwrap().address, all[1].address);
        eject(&all[1]);
        assert!(
            pick(
                &LoadBalancer::RoundRobin,
                &all,
                &next,
                None,
                Tried::default()
            )
            .is_none()
        );
    }

    /// A key keeps its endpoint when another endpoint leaves, and moves only when its own does.
    #[test]
    fn rendezvous_moves_only_the_keys_of_an_endpoint_that_left() {
        let all = endpoints(5);
        let balancer = LoadBalancer::ConsistentHash(HashKey::SourceIp);
        let next = AtomicUsize::new(0);
        let before: Vec<SocketAddr> = (0..200u64)
            .map(|k| {
                pick(
                    &balancer,
                    &all,
                    &next,
                    Some(hash_key(&k.to_be_bytes())),
                    Tried::default(),
                )
            })
            .map(|e| e.unwrap().address)
            .collect();
        let gone = all[2].address;
        eject(&all[2]);
        for (k, was) in (0..200u64).zip(&before) {
            let now = pick(
                &balancer,
                &all,
                &next,
                Some(hash_key(&k.to_be_bytes())),
                Tried::default(),
            )
            .unwrap()
            .address;
            if *was != gone {
                assert_eq!(now, *was, "key {k} moved");
            } else {
                assert_ne!(now, gone);
            }
        }
        assert!(
            before.contains(&gone),
            "no key hashed to the endpoint that left"
        );
    }

    /// Two choices: of two candidates, the one with fewer calls in flight.
    #[test]
    fn least_request_takes_the_less_busy_of_two() {
        let all = endpoints(2);
        all[0].active.store(5, Ordering::Relaxed);
        let next = AtomicUsize::new(0);
        for _ in 0..20 {
            let e = pick(
                &LoadBalancer::LeastRequest,
                &all,
                &next,
                None,
                Tried::default(),
            )
            .unwrap();
            assert_eq!(e.address, all[1].address);
        }
    }

    #[test]
    fn the_hash_is_the_header_or_the_source_address() {
        let header = LoadBalancer::ConsistentHash(HashKey::Header("x-user".into()));
        let mut headers = HeaderMap::new();
        let client: IpAddr = "10.2.0.1".parse().unwrap();
        assert_eq!(call_hash(&header, &headers, client), None);
        headers.insert("x-user", "ann".parse().unwrap());
        assert_eq!(call_hash(&header, &headers, client), Some(hash_key(b"ann")));
        let source = LoadBalancer::ConsistentHash(HashKey::SourceIp);
        assert_eq!(
            call_hash(&source, &headers, client),
            Some(hash_key(&[10, 2, 0, 1]))
        );
        assert_eq!(call_hash(&LoadBalancer::RoundRobin, &headers, client), None);
    }
}
