//! A cluster: the endpoints one route destination leads to (a Service, or one subset of it,
//! on one port), with the DestinationRule's policy for them, and the clusters of a waypoint,
//! kept up to the model. A cluster holds what its parts share: the balancer's turn
//! (`balance`), the circuit breakers and retry budget (`breaker`), and the ejections of
//! outlier detection, which it keeps within `maxEjectionPercent` (each endpoint judges its
//! own health: `endpoint`).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};
use weft_mesh::state::State;

use arc_swap::ArcSwap;
use prometheus_client::metrics::{counter::Counter, family::Family};
use weft_mesh::config::labels_match;
use weft_mesh::{
    config::{LoadBalancer, RetryBudget, ServiceInfo, TrafficPolicy},
    hbone,
};

use crate::{
    balance::{self, Tried},
    breaker::Breaker,
    endpoint::{Ejection, Endpoint, Outcome},
    metrics::{ClusterLabels, EndpointLabels, Metrics},
    upstream::{Connections, Limits},
};

/// What a cluster is: a Service, a subset of it, and the service port.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    pub namespace: String,
    pub service: String,
    pub subset: Option<String>,
    pub port: u16,
}

impl std::fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}:{}", self.namespace, self.service, self.port)?;
        if let Some(subset) = &self.subset {
            write!(f, "#{subset}")?;
        }
        Ok(())
    }
}

/// The policy a cluster applies, resolved from its DestinationRule (subset fields override
/// the rule's top-level ones, as in Istio).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub balancer: LoadBalancer,
    pub limits: Limits,
    pub max_requests: Option<usize>,
    pub max_retries: Option<usize>,
    pub ejection: Option<Ejection>,
    pub budget: RetryBudget,
}

/// Without a rule's annotations: retries up to 20% of requests (Envoy's default budget
/// share), or 10 per second when that is more, over the budget's 10-second window.
pub const DEFAULT_BUDGET: RetryBudget = RetryBudget {
    percent: 20.0,
    min_per_second: 10,
};

impl Policy {
    pub fn resolve(
        top: &TrafficPolicy,
        subset: Option<&TrafficPolicy>,
        budget: Option<&RetryBudget>,
    ) -> Policy {
        let balancer = subset
            .and_then(|s| s.load_balancer.clone())
            .or_else(|| top.load_balancer.clone())
            .unwrap_or(LoadBalancer::RoundRobin);
        let pool = |f: fn(&TrafficPolicy) -> Option<u32>| subset.and_then(f).or_else(|| f(top));
        let dur = |f: fn(&TrafficPolicy) -> Option<Duration>| subset.and_then(f).or_else(|| f(top));
        let defaults = Limits::default();
        let limits = Limits {
            max_connections: pool(|p| p.connection_pool.max_connections)
                .map_or(defaults.max_connections, |n| n.max(1) as usize),
            max_streams: pool(|p| p.connection_pool.max_concurrent_streams)
                .map_or(defaults.max_streams, |n| n.max(1) as usize),
            max_requests_per_connection: pool(|p| p.connection_pool.max_requests_per_connection)
                .filter(|n| *n > 0)
                .map(u64::from),
            idle_timeout: dur(|p| p.connection_pool.idle_timeout)
                .filter(|d| !d.is_zero())
                .unwrap_or(defaults.idle_timeout),
            connect_timeout: dur(|p| p.connection_pool.connect_timeout)
                .filter(|d| !d.is_zero())
                .unwrap_or(defaults.connect_timeout),
        };
        let outlier = subset
            .and_then(|s| s.outlier_detection.clone())
            .or_else(|| top.outlier_detection.clone());
        Policy {
            balancer,
            limits,
            max_requests: pool(|p| p.connection_pool.http2_max_requests).map(|n| n as usize),
            max_retries: pool(|p| p.connection_pool.max_retries).map(|n| n as usize),
            ejection: outlier.map(|o| Ejection {
                consecutive_5xx: o.consecutive_5xx_errors,
                consecutive_gateway: o.consecutive_gateway_errors,
                interval: o.interval,
                base_time: o.base_ejection_time,
                max_percent: o.max_ejection_percent,
            }),
            budget: budget.cloned().unwrap_or(DEFAULT_BUDGET),
        }
    }
}

pub struct Cluster {
    pub key: ClusterKey,
    pub policy: Policy,
    /// Fixed when the cluster is built: a new model builds a new cluster.
    endpoints: Arc<Vec<Arc<Endpoint>>>,
    next: AtomicUsize,
    pub breaker: Breaker,
    ejections: Family<EndpointLabels, Counter>,
}

impl Cluster {
    pub fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints.clone()
    }

    /// Picks an endpoint for an attempt: a healthy one by the balancer, avoiding the
    /// endpoints the call `tried` and unreachable pods while another is left (`balance`).
    pub fn pick(&self, hash: Option<u64>, tried: Tried<'_>) -> Option<Arc<Endpoint>> {
        balance::pick(
            &self.policy.balancer,
            &self.endpoints,
            &self.next,
            hash,
            tried,
        )
    }

    /// Counts an attempt's outcome, and ejects the endpoint if it crossed a threshold and
    /// fewer than `maxEjectionPercent` of the endpoints are out.
    pub fn report(&self, endpoint: &Endpoint, outcome: Outcome) -> Option<Duration> {
        if matches!(outcome, Outcome::ConnectFailure | Outcome::Reset) {
            endpoint.connections.unreachable(Instant::now());
        }
        let rules = self.policy.ejection.as_ref()?;
        if !endpoint.record(outcome, rules) {
            return None;
        }
        let all = &self.endpoints;
        let now = Instant::now();
        let out = all.iter().filter(|e| e.ejected(now)).count();
        // Envoy ejects at least one endpoint whatever a non-zero percentage says; past that,
        // an ejection must keep the ejected share within it.
        let max = rules.max_percent as usize;
        if max > 0 && (out == 0 || (out + 1) * 100 <= max * all.len()) {
            let time = endpoint.eject(rules, now);
            tracing::info!(cluster = %self.key, endpoint = %endpoint.address, ?time, "outlier ejected");
            self.ejections
                .get_or_create(&EndpointLabels {
                    cluster: self.key.to_string(),
                    endpoint: endpoint.address.to_string(),
                })
                .inc();
            return Some(time);
        }
        None
    }
}

/// A cluster, with the model it was built from.
type Built = (Arc<State>, Arc<Cluster>);

/// One cluster's place in the map: swapped whole when a new model rebuilds it.
type Slot = ArcSwap<Built>;

/// The clusters of one waypoint, refreshed from the model: an endpoint that stays keeps
/// its connections, counters and ejection.
///
/// Calls read the map without a lock: it is a published snapshot, copied on write when a
/// cluster is added or dropped (rare), and each cluster sits in a slot of its own that a
/// rebuild swaps (once per cluster and model). Writers take turns under `writer`.
#[derive(Default)]
pub struct Clusters {
    by_key: ArcSwap<HashMap<ClusterKey, Arc<Slot>>>,
    writer: Mutex<()>,
    /// Where attempts and ejections are counted, per endpoint.
    attempts: Family<EndpointLabels, Counter>,
    ejections: Family<EndpointLabels, Counter>,
    /// Retries counted per cluster (by the proxy), removed with their cluster.
    retries: [Family<ClusterLabels, Counter>; 2],
    /// For the endpoints' SPIFFE identities.
    trust_domain: String,
    /// The connections to each pod, shared by the clusters that lead to it with the same
    /// connection limits and no `tcp.maxConnections` of their own: a pod behind several
    /// Services (or subsets, or ports of one Service) gets one set of connections, not one
    /// per cluster. A cluster that sets `maxConnections` keeps its own, so that the limit
    /// means what Istio says, connections from this cluster to the host.
    shared: Mutex<HashMap<(SocketAddr, SocketAddr, Limits), Weak<Connections>>>,
}

impl Clusters {
    pub fn new(metrics: &Metrics, trust_domain: &str) -> Self {
        Clusters {
            by_key: ArcSwap::default(),
            writer: Mutex::default(),
            trust_domain: trust_domain.to_string(),
            attempts: metrics.attempts.clone(),
            ejections: metrics.ejections.clone(),
            retries: [metrics.retries.clone(), metrics.retries_refused.clone()],
            shared: Mutex::default(),
        }
    }

    /// The connections that a new endpoint of a cluster with `limits` uses to reach `pod`.
    fn connections(&self, pod: SocketAddr, node: SocketAddr, limits: &Limits) -> Arc<Connections> {
        if limits.max_connections != Limits::default().max_connections {
            return Arc::default();
        }
        let mut shared = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (pod, node, limits.clone());
        if let Some(connections) = shared.get(&key).and_then(Weak::upgrade) {
            return connections;
        }
        // Entries of pods that no endpoint leads to any more go as new ones come.
        shared.retain(|_, c| c.strong_count() > 0);
        let connections = Arc::<Connections>::default();
        shared.insert(key, Arc::downgrade(&connections));
        connections
    }

    /// Brings every cluster up to `model`: drops the clusters of Services (or ports) that
    /// are gone, with their metric series, and rebuilds the others that an older model
    /// built (endpoints that stay keep their state; `build` drops the series of those that
    /// left). Without it both would only grow as Services and pods come and go.
    pub fn retain(&self, model: &Arc<State>) {
        let _writer = self.write();
        let map = self.by_key.load_full();
        let stays = |key: &ClusterKey| {
            model
                .service(&key.namespace, &key.service)
                .is_some_and(|s| s.service.ports.iter().any(|p| p.port == key.port))
        };
        if map.keys().any(|key| !stays(key)) {
            let mut kept = HashMap::with_capacity(map.len());
            for (key, slot) in map.iter() {
                if stays(key) {
                    kept.insert(key.clone(), slot.clone());
                    continue;
                }
                self.forget(key, slot.load().1.endpoints.iter());
                let labels = ClusterLabels {
                    cluster: key.to_string(),
                };
                for family in &self.retries {
                    family.remove(&labels);
                }
            }
            self.by_key.store(Arc::new(kept));
        }
        for (key, slot) in self.by_key.load().iter() {
            let built = slot.load();
            if built.0.epoch() >= model.epoch() {
                continue;
            }
            let Some(service) = model.service(&key.namespace, &key.service) else {
                continue;
            };
            let cluster = Arc::new(build(model, &service.service, key, Some(&built.1), self));
            slot.store(Arc::new((model.clone(), cluster)));
        }
    }

    /// Removes the per-endpoint series of `endpoints`, which have left cluster `key`.
    fn forget<'a>(&self, key: &ClusterKey, endpoints: impl IntoIterator<Item = &'a Arc<Endpoint>>) {
        for endpoint in endpoints {
            let labels = EndpointLabels {
                cluster: key.to_string(),
                endpoint: endpoint.address.to_string(),
            };
            self.attempts.remove(&labels);
            self.ejections.remove(&labels);
        }
    }

    /// Writers take turns. The lock guards no data of its own, so a writer that panicked
    /// left nothing half-done behind it, and the next one goes on.
    fn write(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cluster for `key` as `model` describes it, or as a newer model does: a call that
    /// read its model just before a change never builds the cluster back to the old one.
    pub fn get(&self, model: &Arc<State>, service: &ServiceInfo, key: &ClusterKey) -> Arc<Cluster> {
        let fresh = |slot: &Slot| {
            let built = slot.load();
            (built.0.epoch() >= model.epoch()).then(|| built.1.clone())
        };
        let found = self.by_key.load().get(key).cloned();
        if let Some(cluster) = found.as_deref().and_then(fresh) {
            return cluster;
        }
        let _writer = self.write();
        // Another call may have built it meanwhile.
        let map = self.by_key.load_full();
        if let Some(slot) = map.get(key) {
            if let Some(cluster) = fresh(slot) {
                return cluster;
            }
            let old = slot.load().1.clone();
            let cluster = Arc::new(build(model, service, key, Some(&old), self));
            slot.store(Arc::new((model.clone(), cluster.clone())));
            return cluster;
        }
        let cluster = Arc::new(build(model, service, key, None, self));
        let mut grown = (*map).clone();
        grown.insert(
            key.clone(),
            Arc::new(ArcSwap::from_pointee((model.clone(), cluster.clone()))),
        );
        self.by_key.store(Arc::new(grown));
        cluster
    }

    /// Every cluster, for the admin page and the idle-connection reaper.
    pub fn all(&self) -> Vec<Arc<Cluster>> {
        self.by_key
            .load()
            .values()
            .map(|slot| slot.load().1.clone())
            .collect()
    }
}

fn build(
    model: &State,
    service: &ServiceInfo,
    key: &ClusterKey,
    old: Option<&Cluster>,
    clusters: &Clusters,
) -> Cluster {
    let rule = model.destination_rule_for(service);
    let subset = rule.and_then(|r| {
        key.subset
            .as_ref()
            .and_then(|name| r.subsets.iter().find(|s| &s.name == name))
    });
    let default_policy = TrafficPolicy::default();
    let policy = Policy::resolve(
        rule.map_or(&default_policy, |r| &r.traffic_policy),
        subset.and_then(|s| s.traffic_policy.as_ref()),
        rule.and_then(|r| r.retry_budget.as_ref()),
    );
    let subset_labels: BTreeMap<String, String> =
        subset.map(|s| s.labels.clone()).unwrap_or_default();
    // A subset named by a route but missing from the rule has no endpoints (Envoy: no cluster).
    let unknown_subset = key.subset.is_some() && subset.is_none();
    let service_port = service.ports.iter().find(|p| p.port == key.port);
    // An endpoint stays the same endpoint while its pod keeps its address and node.
    let previous: HashMap<(SocketAddr, SocketAddr), Arc<Endpoint>> = old
        .map(|c| {
            c.endpoints()
                .iter()
                .map(|e| ((e.address, e.node), e.clone()))
                .collect()
        })
        .unwrap_or_default();
    let endpoints: Vec<Arc<Endpoint>> = model
        .service(&service.namespace, &service.name)
        .into_iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|w| !unknown_subset && labels_match(&subset_labels, &w.pod.labels))
        .filter_map(|w| {
            let pod = &w.pod;
            let target_port = match service_port {
                Some(p) => p.target_on(pod)?,
                None => key.port,
            };
            let address = SocketAddr::new(pod.ip?, target_port);
            let node = SocketAddr::new(
                model.nodes.get(pod.node_name.as_deref()?)?.internal_ip?,
                hbone::PORT,
            );
            Some(previous.get(&(address, node)).cloned().unwrap_or_else(|| {
                let attempts = clusters
                    .attempts
                    .get_or_create(&EndpointLabels {
                        cluster: key.to_string(),
                        endpoint: address.to_string(),
                    })
                    .clone();
                let connections = clusters.connections(address, node, &policy.limits);
                let mut endpoint = Endpoint::new(address, node, attempts, connections);
                endpoint.workload = w.name.as_str().into();
                endpoint.principal = format!(
                    "spiffe://{}/ns/{}/sa/{}",
                    clusters.trust_domain, pod.namespace, pod.service_account
                )
                .into();
                Arc::new(endpoint)
            }))
        })
        .collect();
    // The endpoints of the old cluster that this one no longer has take their series along.
    clusters.forget(
        key,
        previous
            .values()
            .filter(|e| !endpoints.iter().any(|n| Arc::ptr_eq(n, e))),
    );
    let same_policy = old.is_some_and(|o| o.policy == policy);
    let old_breaker = old.map(|o| &o.breaker);
    let breaker = Breaker {
        max_requests: policy.max_requests,
        max_retries: policy.max_retries,
        budget_policy: policy.budget.clone(),
        active: old_breaker.map_or_else(Default::default, |o| o.active.clone()),
        retries_active: old_breaker.map_or_else(Default::default, |o| o.retries_active.clone()),
        budget: Mutex::new(
            old_breaker
                .filter(|_| same_policy)
                .and_then(|o| {
                    o.fold();
                    o.budget.lock().ok().map(|b| b.clone())
                })
                .unwrap_or_default(),
        ),
        unbudgeted: Default::default(),
    };
    Cluster {
        key: key.clone(),
        policy,
        endpoints: Arc::new(endpoints),
        next: AtomicUsize::new(old.map_or(0, |o| o.next.load(Ordering::Relaxed))),
        breaker,
        ejections: clusters.ejections.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::{encoding::text::encode, registry::Registry};
    use weft_mesh::config::model_from_yaml;

    fn state(yaml: &str) -> Arc<State> {
        Arc::new(State::compile(model_from_yaml(yaml).unwrap()))
    }

    const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.1}]}\n";

    fn pod(name: &str, ip: &str) -> String {
        format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, uid: {name}, labels: {{app: cart}}}}\nspec: {{nodeName: n1}}\nstatus: {{podIP: {ip}}}\n"
        )
    }

    const SERVICE: &str = "---\napiVersion: v1\nkind: Service\nmetadata: {name: cart, namespace: shop}\nspec: {clusterIP: 10.96.0.1, selector: {app: cart}, ports: [{name: grpc, port: 50051}]}\n";

    fn exported(registry: &Registry) -> String {
        let mut text = String::new();
        encode(&mut text, registry).unwrap();
        text
    }

    /// Endpoints and Services that leave take their clusters and metric series with them.
    #[test]
    fn gone_services_and_pods_leave_no_cluster_or_series_behind() {
        let metrics = Metrics::new();
        let mut registry = Registry::default();
        registry.register("attempts", "", metrics.attempts.clone());
        registry.register("retries", "", metrics.retries.clone());
        let clusters = Clusters::new(&metrics, "cluster.local");
        let key = ClusterKey {
            namespace: "shop".into(),
            service: "cart".into(),
            subset: None,
            port: 50051,
        };
        let two = state(&format!(
            "{NODE}{}{}{SERVICE}",
            pod("a", "10.1.0.1"),
            pod("b", "10.1.0.2")
        ));
        let service = two.service("shop", "cart").expect("the Service");
        let cluster = clusters.get(&two, &service.service, &key);
        for endpoint in cluster.endpoints().iter() {
            endpoint.attempts.inc();
        }
        metrics
            .retries
            .get_or_create(&ClusterLabels {
                cluster: key.to_string(),
            })
            .inc();
        let text = exported(&registry);
        assert!(
            text.contains("10.1.0.1:50051") && text.contains("10.1.0.2:50051"),
            "{text}"
        );

        // Pod b is gone: its series goes, a's stays and keeps its count.
        let one = state(&format!("{NODE}{}{SERVICE}", pod("a", "10.1.0.1")));
        clusters.retain(&one);
        let text = exported(&registry);
        assert!(text.contains("endpoint=\"10.1.0.1:50051\"} 1"), "{text}");
        assert!(!text.contains("10.1.0.2"), "{text}");
        assert_eq!(clusters.all().len(), 1);
        assert_eq!(clusters.all()[0].endpoints().len(), 1);

        // The Service is gone: so are its cluster and every series of it.
        let none = state(&format!("{NODE}{}", pod("a", "10.1.0.1")));
        clusters.retain(&none);
        assert!(clusters.all().is_empty());
        let text = exported(&registry);
        assert!(!text.contains("shop/cart"), "{text}");
    }
}
