//! Local rate limiting: the token buckets of the `LocalRateLimit` objects that attach to
//! this waypoint (see `weft_mesh::config::LocalRateLimitInfo` for the CRD). A bucket lives
//! as long as its object keeps the same spec, so that a configuration reload does not
//! refill it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use weft_mesh::{
    config::{LimitScope, LocalRateLimitInfo, Model, TokenBucket},
    policy::value_matches,
};

/// One bucket, refilled lazily when it is asked for a token.
pub struct Bucket {
    spec: TokenBucket,
    state: Mutex<(u32, Instant)>,
}

impl Bucket {
    pub fn new(spec: TokenBucket, now: Instant) -> Self {
        Bucket {
            spec,
            state: Mutex::new((spec.max_tokens, now)),
        }
    }

    /// Takes a token if there is one: whole fill intervals since the last fill add
    /// `tokensPerFill` each, up to `maxTokens`.
    pub fn take(&self, now: Instant) -> bool {
        let Ok(mut state) = self.state.lock() else {
            return true;
        };
        let (tokens, last) = &mut *state;
        let interval = self.spec.fill_interval;
        let fills = now.saturating_duration_since(*last).as_nanos() / interval.as_nanos().max(1);
        if fills > 0 {
            let added = fills.saturating_mul(self.spec.tokens_per_fill.into());
            *tokens = (u128::from(*tokens) + added).min(self.spec.max_tokens.into()) as u32;
            *last += interval * fills.min(u32::MAX.into()) as u32;
        }
        if *tokens > 0 {
            *tokens -= 1;
            true
        } else {
            false
        }
    }
}

/// (limit namespace, limit name, index of the bucket in its spec, the bucket's spec).
type Key = (String, String, usize, TokenBucket);

/// What a call is, for choosing its buckets.
pub struct CallKey<'a> {
    pub waypoint: (&'a str, &'a str),
    pub service: (&'a str, &'a str),
    /// The VirtualService http route's name, if it has one.
    pub route: Option<&'a str>,
    pub path: &'a str,
}

#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<Key, Arc<Bucket>>>,
}

fn attaches(limit: &LocalRateLimitInfo, call: &CallKey<'_>) -> bool {
    limit
        .target_refs
        .iter()
        .any(|r| r.attaches(&limit.namespace, call.waypoint, Some(call.service)))
}

impl Limiter {
    /// Takes a token from every bucket that applies to the call. `Err` names the first
    /// limit (`namespace/name`) whose bucket was empty.
    pub fn admit(&self, model: &Model, call: &CallKey<'_>) -> Result<(), String> {
        if model.local_rate_limits.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut refused = None;
        for limit in model.local_rate_limits.values() {
            if !attaches(limit, call) {
                continue;
            }
            for (index, (scope, spec)) in limit.limits.iter().enumerate() {
                let applies = match scope {
                    LimitScope::Target => true,
                    LimitScope::Route(name) => call.route == Some(name.as_str()),
                    LimitScope::Method(pattern) => value_matches(pattern, call.path),
                };
                if !applies {
                    continue;
                }
                let bucket = self.bucket(limit, index, *spec, now);
                if !bucket.take(now) && refused.is_none() {
                    refused = Some(format!("{}/{}", limit.namespace, limit.name));
                }
            }
        }
        refused.map_or(Ok(()), Err)
    }

    fn bucket(
        &self,
        limit: &LocalRateLimitInfo,
        index: usize,
        spec: TokenBucket,
        now: Instant,
    ) -> Arc<Bucket> {
        let key = (limit.namespace.clone(), limit.name.clone(), index, spec);
        let Ok(mut buckets) = self.buckets.lock() else {
            return Arc::new(Bucket::new(spec, now));
        };
        buckets
            .entry(key)
            .or_insert_with(|| Arc::new(Bucket::new(spec, now)))
            .clone()
    }

    /// Drops the buckets of limits that are gone or changed.
    pub fn retain(&self, model: &Model) {
        if let Ok(mut buckets) = self.buckets.lock() {
            buckets.retain(|(ns, name, index, spec), _| {
                model
                    .local_rate_limits
                    .get(&(ns.clone(), name.clone()))
                    .and_then(|l| l.limits.get(*index))
                    .is_some_and(|(_, s)| s == spec)
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_refusal_then_refill() {
        let t0 = Instant::now();
        let bucket = Bucket::new(
            TokenBucket {
                max_tokens: 3,
                tokens_per_fill: 2,
                fill_interval: Duration::from_millis(500),
            },
            t0,
        );
        assert!((0..3).all(|_| bucket.take(t0)), "a full bucket's burst");
        assert!(!bucket.take(t0));
        assert!(!bucket.take(t0 + Duration::from_millis(499)));
        let t1 = t0 + Duration::from_millis(500);
        assert!(bucket.take(t1) && bucket.take(t1) && !bucket.take(t1));
        // A long idle refills to maxTokens, never beyond.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(t2)).count(), 3);
    }

    #[test]
    fn buckets_by_target_route_and_method() {
        let yaml = r#"
apiVersion: weft.dev/v1alpha1
kind: LocalRateLimit
metadata: {name: rl, namespace: shop}
spec:
  targetRefs: [{kind: Service, name: users}]
  routes: [{name: canary, tokenBucket: {maxTokens: 1, fillInterval: 1h}}]
  methods: [{path: "/user.UserService/List*", tokenBucket: {maxTokens: 2, fillInterval: 1h}}]
"#;
        let mut model = Model::default();
        let object = weft_mesh::config::parse_value(serde_yaml::from_str(yaml).unwrap())
            .unwrap()
            .unwrap();
        model.insert(object);
        let limiter = Limiter::default();
        let call = |service, route, path| CallKey {
            waypoint: ("shop", "waypoint"),
            service: ("shop", service),
            route,
            path,
        };
        let list = call("users", None, "/user.UserService/ListUsers");
        assert!(limiter.admit(&model, &list).is_ok());
        assert!(limiter.admit(&model, &list).is_ok());
        assert_eq!(limiter.admit(&model, &list), Err("shop/rl".to_string()));
        // Another method, another Service: not limited.
        assert!(
            limiter
                .admit(&model, &call("users", None, "/user.UserService/GetUser"))
                .is_ok()
        );
        assert!(
            limiter
                .admit(&model, &call("orders", None, "/user.UserService/ListUsers"))
                .is_ok()
        );
        let canary = call("users", Some("canary"), "/x/Y");
        assert!(limiter.admit(&model, &canary).is_ok());
        assert!(limiter.admit(&model, &canary).is_err());
        limiter.retain(&Model::default());
        assert!(limiter.buckets.lock().unwrap().is_empty());
    }
}
