//! What one caller of the CA can make it do: bounded.
//!
//! - [`Answers`]: a short cache of what the authenticator said of a token, yes and no, so
//!   that a node renewing many identities, or a caller repeating a bad token, costs one
//!   TokenReview (one API server round trip) per token per minute, not one per request;
//! - [`PerPeer`]: a token bucket per peer address, checked before anything else, so that a
//!   flood of requests (made-up tokens included) is refused with RESOURCE_EXHAUSTED before
//!   it reaches the authenticator;
//! - the server itself limits the streams per connection, the calls it runs at once per
//!   connection and the time a call may take (`server.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Caller;

/// How long a yes is believed, and a no.
pub const ACCEPTED_FOR: Duration = Duration::from_secs(60);
pub const REFUSED_FOR: Duration = Duration::from_secs(10);
/// Tokens remembered at most; the oldest answers go first when it is full.
const ANSWERS: usize = 4096;

/// What the authenticator said of a token: the caller, or why not.
pub type Answer = Result<Caller, String>;

/// The authenticator's recent answers, by token, with when each was given.
#[derive(Default)]
pub struct Answers(Mutex<HashMap<String, (Instant, Answer)>>);

impl Answers {
    /// A fresh answer for `token`, if there is one.
    pub fn get(&self, token: &str, now: Instant) -> Option<Answer> {
        let answers = self.0.lock().ok()?;
        let (at, answer) = answers.get(token)?;
        let fresh = match answer {
            Ok(_) => ACCEPTED_FOR,
            Err(_) => REFUSED_FOR,
        };
        (now.duration_since(*at) < fresh).then(|| answer.clone())
    }

    /// Remembers an answer. Only definite ones are given: a backend that could not be
    /// asked is asked again next time.
    pub fn put(&self, token: &str, answer: Answer, now: Instant) {
        let Ok(mut answers) = self.0.lock() else {
            return;
        };
        if answers.len() >= ANSWERS && !answers.contains_key(token) {
            answers.retain(|_, (at, a)| {
                now.duration_since(*at)
                    < match a {
                        Ok(_) => ACCEPTED_FOR,
                        Err(_) => REFUSED_FOR,
                    }
            });
            if answers.len() >= ANSWERS
                && let Some(oldest) = answers
                    .iter()
                    .min_by_key(|(_, (at, _))| *at)
                    .map(|(k, _)| k.clone())
            {
                answers.remove(&oldest);
            }
        }
        answers.insert(token.to_string(), (now, answer));
    }
}

/// Requests a peer address may make: `BURST` at once (a node agent starting beside 110
/// pods, Kubernetes' default pod limit, asks for all their identities together), then
/// `PER_SECOND`.
const BURST: f64 = 256.0;
const PER_SECOND: f64 = 20.0;
/// Peers remembered at most (a full bucket is the same as none).
const PEERS: usize = 4096;

/// A token bucket per peer address.
#[derive(Default)]
pub struct PerPeer(Mutex<HashMap<IpAddr, (f64, Instant)>>);

impl PerPeer {
    /// Takes one request from `peer`'s bucket; false if it is empty.
    pub fn admit(&self, peer: IpAddr, now: Instant) -> bool {
        let Ok(mut peers) = self.0.lock() else {
            return false;
        };
        if peers.len() >= PEERS && !peers.contains_key(&peer) {
            peers.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * PER_SECOND < BURST
            });
            if peers.len() >= PEERS {
                return false;
            }
        }
        let (tokens, at) = peers.entry(peer).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * PER_SECOND).min(BURST);
        *at = now;
        if *tokens < 1.0 {
            return false;
        }
        *tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_last_a_minute_for_yes_and_ten_seconds_for_no() {
        let answers = Answers::default();
        let t0 = Instant::now();
        answers.put("good", Ok(Caller::node("n1")), t0);
        answers.put("bad", Err("unknown token".into()), t0);
        let later = |s| t0 + Duration::from_secs(s);
        assert_eq!(answers.get("good", later(59)), Some(Ok(Caller::node("n1"))));
        assert_eq!(answers.get("good", later(61)), None);
        assert!(matches!(answers.get("bad", later(9)), Some(Err(_))));
        assert_eq!(answers.get("bad", later(11)), None);
        assert_eq!(answers.get("other", t0), None);
    }

    #[test]
    fn the_cache_holds_a_bounded_number_of_tokens() {
        let answers = Answers::default();
        let t0 = Instant::now();
        for i in 0..ANSWERS + 100 {
            answers.put(
                &format!("t{i}"),
                Err("no".into()),
                t0 + Duration::from_micros(i as u64),
            );
        }
        assert_eq!(answers.0.lock().unwrap().len(), ANSWERS);
        assert!(answers.get(&format!("t{}", ANSWERS + 99), t0).is_some());
    }

    #[test]
    fn a_peer_gets_its_burst_then_its_rate() {
        let limit = PerPeer::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let admitted = (0..300).filter(|_| limit.admit(a, t0)).count();
        assert_eq!(admitted, BURST as usize);
        assert!(limit.admit(b, t0), "another peer has its own bucket");
        assert!(!limit.admit(a, t0));
        assert!(
            limit.admit(a, t0 + Duration::from_millis(60)),
            "refilled at 20/s"
        );
    }
}
