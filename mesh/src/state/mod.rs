//! The compiled state: the one place where configuration becomes decisions.
//!
//! Sources hand over a [`Model`], the objects as parsed. [`State::compile`] turns it into
//! indexes keyed by what the data path asks with (a pod's IP, a Service's cluster IP, a
//! Service's name), and settles everything that spans objects once: which pods are a
//! Service's endpoints, which waypoint serves a Service or a pod, which VirtualService of a
//! host wins, how a host's DestinationRules merge. Every case where the YAML does not do
//! what it says becomes a [`Finding`] in the same step, so that `analyze`, the logs, the
//! metric and `describe` report exactly what the data path does.
//!
//! A State is immutable and published whole (behind an `Arc`, on a watch channel): a
//! connection or a call reads one consistent snapshot. Each State has an [`epoch`], new
//! with every compile.
//!
//! The State dereferences to its [`Model`], so that rules that read objects as such
//! (policies, enrolment) take it unchanged; the lookups that would otherwise scan the model
//! are the State's own methods.
//!
//! Files:
//! - `traffic.rs`: VirtualService precedence and DestinationRule merging per Service;
//! - `delegation.rs`: L7 workload policies handed to the waypoint that serves the workloads;
//! - `findings.rs`: the findings and their stable codes.
//!
//! What derives from pods is kept per namespace (a Service selects pods of its own
//! namespace), so that [`State::update`] rebuilds one namespace when one Pod changes.
//!
//! [`epoch`]: State::epoch

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{
    AuthorizationPolicyInfo, DestinationRuleInfo, Model, ObjectKey, PodInfo, ServiceInfo,
    VirtualServiceInfo, WaypointRef, resolve_host, workload_name,
};

mod delegation;
mod findings;
mod traffic;

pub use delegation::Delegation;
pub use findings::{Finding, Severity};

/// A pod with what the data path derives from it, once.
#[derive(Debug, Clone)]
pub struct Workload {
    pub pod: PodInfo,
    /// As Istio's metrics name it ([`workload_name`]).
    pub name: String,
    /// In an ambient namespace and not opted out.
    pub in_mesh: bool,
    /// The waypoint for traffic addressed to the pod's own IP.
    pub waypoint: Option<WaypointRef>,
}

/// A Service with its endpoints and the traffic objects that apply to it.
#[derive(Debug, Clone)]
pub struct CompiledService {
    pub service: ServiceInfo,
    /// The pods it selects that own an address, in (namespace, name) order.
    pub endpoints: Vec<Arc<Workload>>,
    /// The waypoint for traffic to its cluster IP.
    pub waypoint: Option<WaypointRef>,
    /// The VirtualService that routes it (the producer route): the oldest of those of its
    /// own namespace that name it.
    pub virtual_service: Option<Arc<VirtualServiceInfo>>,
    /// Routes of other namespaces (consumer routes), one per namespace, for that
    /// namespace's callers only; see [`State::route_for`].
    pub consumer_routes: Vec<Arc<VirtualServiceInfo>>,
    /// Its DestinationRules merged into one (see `traffic.rs`).
    pub destination_rule: Option<Arc<DestinationRuleInfo>>,
}

/// Where a connection to an address goes, as far as the configuration says.
#[derive(Debug, Clone, Copy)]
pub enum Destination<'a> {
    /// A Service's cluster IP.
    Service(&'a CompiledService),
    /// A pod's own IP.
    Workload(&'a Workload),
    /// Nothing the mesh knows.
    Outside,
}

/// What [`State::resolve`] answers for a connection from one address to another.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'a> {
    /// The pod that opened it, if the source is one.
    pub source: Option<&'a Workload>,
    pub destination: Destination<'a>,
    /// The waypoint the connection must go through: the Service's, or (for a pod in the
    /// mesh) the workload's.
    pub waypoint: Option<&'a WaypointRef>,
}

/// What the State derives from one namespace's pods and Services. Only pods of the same
/// namespace feed it (a Service selects pods of its own namespace), so a changed Pod
/// rebuilds its namespace's shard and nothing else ([`State::update`]).
#[derive(Debug, Default)]
struct Shard {
    /// Every pod of the namespace, host-network ones too, by name.
    workloads: HashMap<String, Arc<Workload>>,
    /// Services by name.
    services: HashMap<String, Arc<CompiledService>>,
    /// The Services that select each pod, by the pod's name.
    selecting: HashMap<String, Vec<Arc<CompiledService>>>,
    /// The L7 policies handed to waypoints for these pods and Services (`delegation.rs`).
    delegated: delegation::Delegated,
    /// Findings about these pods.
    findings: Vec<Finding>,
}

/// The compiled state. See the module documentation.
#[derive(Debug, Default)]
pub struct State {
    model: Model,
    epoch: u64,
    shards: HashMap<String, Arc<Shard>>,
    /// Cluster IPs, and the addresses of pods that own theirs (not host-network).
    addresses: Addresses,
    /// Whether two pods or Services claim one address: then a Service holds it over a pod,
    /// and the later by (namespace, name) over the earlier, which only a full compile can
    /// settle.
    address_conflict: bool,
    /// What does not depend on pods, kept as it is by [`State::update`].
    fixed: Arc<Fixed>,
    findings: Vec<Finding>,
}

#[derive(Debug, Default)]
struct Fixed {
    /// Workload-attached AuthorizationPolicies (no `targetRefs`) by namespace, so that a
    /// connection's decision looks at its namespace's and the root namespace's only.
    workload_policies: HashMap<String, Vec<Arc<AuthorizationPolicyInfo>>>,
    /// The workload policies with L7 rules, which may be delegated (`delegation.rs`).
    l7_policies: delegation::Candidates,
    /// The waypoints that Services are bound to: a pod change that changes one of their
    /// identities needs a full compile.
    service_waypoints: Vec<WaypointRef>,
    /// The findings that do not depend on pods.
    findings: Vec<Finding>,
}

/// What owns an address, and the waypoint that a connection to it goes through, copied
/// here so that [`State::resolve`] reads the map's entry and nothing else.
#[derive(Debug, Clone)]
struct Address {
    owner: Owner,
    waypoint: Option<Arc<WaypointRef>>,
}

#[derive(Debug, Clone)]
enum Owner {
    Service(Arc<CompiledService>),
    Workload(Arc<Workload>),
}

impl Address {
    fn service(service: &Arc<CompiledService>) -> Address {
        Address {
            waypoint: service.waypoint.clone().map(Arc::new),
            owner: Owner::Service(service.clone()),
        }
    }

    fn workload(workload: &Arc<Workload>) -> Address {
        Address {
            waypoint: workload
                .waypoint
                .clone()
                .filter(|_| workload.in_mesh)
                .map(Arc::new),
            owner: Owner::Workload(workload.clone()),
        }
    }

    fn is_workload(&self, workload: &Arc<Workload>) -> bool {
        matches!(&self.owner, Owner::Workload(w) if Arc::ptr_eq(w, workload))
    }
}

/// Addresses keyed by their number, IPv4 Services and pods apart: an entry keyed by a
/// `u32` is 32 bytes where one keyed by `IpAddr` is 48, and two maps sized for 5k and 10k
/// entries take 768 KB where one for 15k takes 1 MB, so that 10k pods' entries stay in a
/// core's cache (`bench scale`, `resolve_ratio`). A Service's cluster IP is looked up
/// first: it holds an address a pod claims too.
#[derive(Debug, Clone, Default)]
struct Addresses {
    services: HashMap<u32, Address>,
    pods: HashMap<u32, Address>,
    v6: HashMap<u128, Address>,
}

impl Addresses {
    fn get(&self, ip: &IpAddr) -> Option<&Address> {
        match ip {
            IpAddr::V4(ip) => {
                let key = u32::from(*ip);
                self.services.get(&key).or_else(|| self.pods.get(&key))
            }
            IpAddr::V6(ip) => self.v6.get(&u128::from(*ip)),
        }
    }

    /// Adds an address; returns what already claimed it, if anything did.
    fn insert(&mut self, ip: IpAddr, address: Address) -> Option<Address> {
        match ip {
            IpAddr::V4(ip) => {
                let key = u32::from(ip);
                let (own, other) = match address.owner {
                    Owner::Service(_) => (&mut self.services, &self.pods),
                    Owner::Workload(_) => (&mut self.pods, &self.services),
                };
                let claimed = other.get(&key).cloned();
                own.insert(key, address).or(claimed)
            }
            IpAddr::V6(ip) => self.v6.insert(u128::from(ip), address),
        }
    }

    /// Removes a pod's address.
    fn remove_pod(&mut self, ip: &IpAddr) {
        match ip {
            IpAddr::V4(ip) => {
                self.pods.remove(&u32::from(*ip));
            }
            IpAddr::V6(ip) => {
                self.v6.remove(&u128::from(*ip));
            }
        }
    }

    /// The pod that owns `ip`, whether or not a Service claims the address too.
    fn pod(&self, ip: &IpAddr) -> Option<&Address> {
        match ip {
            IpAddr::V4(ip) => self.pods.get(&u32::from(*ip)),
            IpAddr::V6(ip) => self.v6.get(&u128::from(*ip)),
        }
    }

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = (IpAddr, &Address)> {
        let v4 = self
            .services
            .iter()
            .chain(&self.pods)
            .map(|(ip, a)| (IpAddr::from(std::net::Ipv4Addr::from(*ip)), a));
        let v6 = self
            .v6
            .iter()
            .map(|(ip, a)| (IpAddr::from(std::net::Ipv6Addr::from(*ip)), a));
        v4.chain(v6)
    }
}

/// The address a pod owns: none for a host-network pod (its address is the node's).
fn own_ip(workload: &Workload) -> Option<IpAddr> {
    workload.pod.ip.filter(|_| !workload.pod.host_network)
}

/// Epochs are unique within a process, so that a connection can tell whether the state it
/// was admitted under is still the current one.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// The pods and Services of each namespace, in (namespace, name) order.
fn by_namespace(model: &Model) -> BTreeMap<&str, (Vec<&PodInfo>, Vec<&ServiceInfo>)> {
    let mut out: BTreeMap<&str, (Vec<&PodInfo>, Vec<&ServiceInfo>)> = BTreeMap::new();
    for pod in model.pods.values() {
        out.entry(pod.namespace.as_str()).or_default().0.push(pod);
    }
    for service in model.services.values() {
        out.entry(service.namespace.as_str())
            .or_default()
            .1
            .push(service);
    }
    out
}

/// A namespace's workloads, Services and endpoints (no delegations yet: those need the
/// waypoints' identities, which may live in another shard). `traffic` gives each Service's
/// VirtualService and merged DestinationRule.
fn shard(
    model: &Model,
    pods: &[&PodInfo],
    services: &[&ServiceInfo],
    traffic: impl Fn(&ServiceInfo) -> traffic::ServiceTraffic,
) -> Shard {
    let mut shard = Shard::default();
    let mut addressed = Vec::new();
    for pod in pods {
        let workload = Arc::new(Workload {
            name: workload_name(pod),
            in_mesh: model.in_mesh(pod),
            waypoint: model.bind_workload_waypoint(pod),
            pod: (*pod).clone(),
        });
        if !pod.host_network && pod.ip.is_some() {
            addressed.push(workload.clone());
        }
        shard.workloads.insert(pod.name.clone(), workload);
    }
    for service in services {
        let traffic = traffic(service);
        let compiled = Arc::new(CompiledService {
            waypoint: model.bind_service_waypoint(service),
            service: (*service).clone(),
            endpoints: addressed
                .iter()
                .filter(|w| service.selects(&w.pod))
                .cloned()
                .collect(),
            virtual_service: traffic.producer,
            consumer_routes: traffic.consumers,
            destination_rule: traffic.destination_rule,
        });
        for endpoint in &compiled.endpoints {
            shard
                .selecting
                .entry(endpoint.pod.name.clone())
                .or_default()
                .push(compiled.clone());
        }
        shard.services.insert(service.name.clone(), compiled);
    }
    shard
}

impl State {
    /// Compiles a model. Cost: linear in the objects, plus each Service's selector against
    /// the pods of its own namespace.
    pub fn compile(model: Model) -> State {
        let traffic = traffic::compile(&model);
        let mut shards: HashMap<String, Shard> = by_namespace(&model)
            .into_iter()
            .map(|(namespace, (pods, services))| {
                let shard = shard(&model, &pods, &services, |service| {
                    traffic
                        .for_service
                        .get(&(service.namespace.clone(), service.name.clone()))
                        .cloned()
                        .unwrap_or_default()
                });
                (namespace.to_string(), shard)
            })
            .collect();

        let mut workload_policies: HashMap<String, Vec<Arc<AuthorizationPolicyInfo>>> =
            HashMap::new();
        for policy in model.authorization_policies.values() {
            if policy.target_refs.is_empty() {
                workload_policies
                    .entry(policy.namespace.clone())
                    .or_default()
                    .push(Arc::new(policy.clone()));
            }
        }
        let mut service_waypoints: Vec<WaypointRef> = shards
            .values()
            .flat_map(|s| s.services.values())
            .filter_map(|s| s.waypoint.clone())
            .collect();
        service_waypoints.sort();
        service_waypoints.dedup();
        let l7_policies = delegation::Candidates::of(&model);

        // Delegations need every shard's endpoints (a waypoint's identities).
        let delegated: Vec<(String, delegation::Delegated)> = shards
            .iter()
            .map(|(namespace, shard)| {
                let identities = |w: &WaypointRef| {
                    let endpoints = if w.namespace == *namespace {
                        shard.services.get(&w.name)
                    } else {
                        shards
                            .get(&w.namespace)
                            .and_then(|s| s.services.get(&w.name))
                    };
                    delegation::identities(endpoints.map(|s| &**s))
                };
                (
                    namespace.clone(),
                    delegation::compile(shard, &l7_policies, identities),
                )
            })
            .collect();
        for (namespace, delegated) in delegated {
            if let Some(shard) = shards.get_mut(&namespace) {
                shard.delegated = delegated;
            }
        }
        for shard in shards.values_mut() {
            shard.findings = findings::pods(&model, shard.workloads.values().map(|w| &w.pod));
        }

        let mut state = State {
            epoch: EPOCH.fetch_add(1, Ordering::Relaxed),
            shards: shards.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            model,
            ..State::default()
        };
        state.address_conflict = !state.index_addresses();
        let mut fixed = Fixed {
            workload_policies,
            l7_policies,
            service_waypoints,
            findings: traffic.findings,
        };
        fixed.findings.extend(findings::analyze(&state));
        state.fixed = Arc::new(fixed);
        state.collect_findings();
        state
    }

    /// The state after a change of the model to `model`, where `changed` names the objects
    /// that differ. When only Pods changed, only their namespaces' shards are rebuilt and
    /// the address indexes patched; anything else is a full [`compile`](State::compile).
    pub fn update(&self, model: Model, changed: &[ObjectKey]) -> State {
        let mut namespaces: Vec<&str> = Vec::new();
        for key in changed {
            match (key.kind, key.namespace.as_deref()) {
                ("Pod", Some(namespace)) => namespaces.push(namespace),
                _ => return State::compile(model),
            }
        }
        // The default State (before a first compile) has nothing to update.
        if self.address_conflict || self.epoch == 0 {
            return State::compile(model);
        }
        namespaces.sort_unstable();
        namespaces.dedup();

        let mut rebuilt: Vec<(String, Shard)> = Vec::new();
        for namespace in namespaces {
            let range = (namespace.to_string(), String::new())..;
            let pods: Vec<&PodInfo> = model
                .pods
                .range(range.clone())
                .take_while(|((ns, _), _)| ns == namespace)
                .map(|(_, pod)| pod)
                .collect();
            let services: Vec<&ServiceInfo> = model
                .services
                .range(range)
                .take_while(|((ns, _), _)| ns == namespace)
                .map(|(_, service)| service)
                .collect();
            let old = self.shards.get(namespace);
            // Only pods changed: each Service keeps its traffic objects.
            let new = shard(&model, &pods, &services, |service| {
                old.and_then(|s| s.services.get(&service.name))
                    .map(|s| traffic::ServiceTraffic {
                        producer: s.virtual_service.clone(),
                        consumers: s.consumer_routes.clone(),
                        destination_rule: s.destination_rule.clone(),
                    })
                    .unwrap_or_default()
            });
            // A waypoint whose pods changed identity changes delegations everywhere.
            let waypoint_changed = self
                .fixed
                .service_waypoints
                .iter()
                .filter(|w| w.namespace == namespace)
                .any(|w| {
                    let before = old.and_then(|s| s.services.get(&w.name)).map(|s| &**s);
                    let after = new.services.get(&w.name).map(|s| &**s);
                    delegation::identities(before) != delegation::identities(after)
                });
            if waypoint_changed {
                return State::compile(model);
            }
            rebuilt.push((namespace.to_string(), new));
        }

        let mut shards = self.shards.clone();
        for (namespace, mut new) in rebuilt {
            let identities = |w: &WaypointRef| {
                let service = if w.namespace == namespace {
                    new.services.get(&w.name).map(|s| &**s)
                } else {
                    self.service(&w.namespace, &w.name)
                };
                delegation::identities(service)
            };
            new.delegated = delegation::compile(&new, &self.fixed.l7_policies, identities);
            new.findings = findings::pods(&model, new.workloads.values().map(|w| &w.pod));
            shards.insert(namespace, Arc::new(new));
        }
        let mut state = State {
            model,
            epoch: EPOCH.fetch_add(1, Ordering::Relaxed),
            shards,
            fixed: self.fixed.clone(),
            ..State::default()
        };
        state.addresses = self.addresses.clone();
        if !state.patch_addresses(self) {
            return State::compile(state.model);
        }
        state.collect_findings();
        state
    }

    /// Fills the address index from the shards. Returns false if two pods or Services
    /// claim one address.
    fn index_addresses(&mut self) -> bool {
        let mut namespaces: Vec<(&String, &Arc<Shard>)> = self.shards.iter().collect();
        namespaces.sort_by_key(|(namespace, _)| *namespace);
        let namespaces: Vec<&Arc<Shard>> = namespaces.into_iter().map(|(_, s)| s).collect();
        let mut unique = true;
        // Pods first, so that a Service holds an address that a pod claims too.
        for shard in &namespaces {
            let mut pods: Vec<&Arc<Workload>> = shard.workloads.values().collect();
            pods.sort_by(|a, b| a.pod.name.cmp(&b.pod.name));
            for workload in pods {
                if let Some(ip) = own_ip(workload) {
                    unique &= self
                        .addresses
                        .insert(ip, Address::workload(workload))
                        .is_none();
                }
            }
        }
        let mut services: Vec<&Arc<CompiledService>> = namespaces
            .iter()
            .flat_map(|s| s.services.values())
            .collect();
        services.sort_by(|a, b| {
            (&a.service.namespace, &a.service.name).cmp(&(&b.service.namespace, &b.service.name))
        });
        for service in services {
            if let Some(ip) = service.service.cluster_ip {
                unique &= self
                    .addresses
                    .insert(ip, Address::service(service))
                    .is_none();
            }
        }
        unique
    }

    /// Moves the address index (copied from `before`) to the shards that changed. Returns
    /// false if a new address collides with another's.
    fn patch_addresses(&mut self, before: &State) -> bool {
        for (namespace, shard) in &self.shards {
            let old = before.shards.get(namespace);
            if old.is_some_and(|old| Arc::ptr_eq(old, shard)) {
                continue;
            }
            for workload in old.into_iter().flat_map(|s| s.workloads.values()) {
                if let Some(ip) = own_ip(workload)
                    && self
                        .addresses
                        .get(&ip)
                        .is_some_and(|a| a.is_workload(workload))
                {
                    self.addresses.remove_pod(&ip);
                }
            }
            for workload in shard.workloads.values() {
                if let Some(ip) = own_ip(workload)
                    && self
                        .addresses
                        .insert(ip, Address::workload(workload))
                        .is_some()
                {
                    return false;
                }
            }
            // Same Services, same addresses: only their endpoints are new.
            for service in shard.services.values() {
                if let Some(ip) = service.service.cluster_ip {
                    self.addresses.insert(ip, Address::service(service));
                }
            }
        }
        true
    }

    /// The findings: those that do not depend on pods, the shards', and the delegations'.
    fn collect_findings(&mut self) {
        let mut all = self.fixed.findings.clone();
        for shard in self.shards.values() {
            all.extend(shard.findings.iter().cloned());
        }
        all.extend(findings::delegations(self));
        all.sort();
        all.dedup();
        self.findings = all;
    }

    /// Every compiled Service.
    fn compiled_services(&self) -> impl Iterator<Item = &CompiledService> {
        self.shards
            .values()
            .flat_map(|s| s.services.values().map(|s| &**s))
    }

    /// The objects as parsed.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Unique to this compile within the process; a later compile has a larger one.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every finding, sorted by severity (errors first), code and object.
    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    /// The findings about one object (`Service default/grpc-server`).
    pub fn findings_for<'a>(&'a self, object: &'a str) -> impl Iterator<Item = &'a Finding> {
        self.findings.iter().filter(move |f| f.object == object)
    }

    /// The workload that owns `ip` (never a host-network pod: its address is the node's).
    pub fn workload(&self, ip: IpAddr) -> Option<&Workload> {
        match &self.addresses.pod(&ip)?.owner {
            Owner::Workload(w) => Some(w),
            Owner::Service(_) => None,
        }
    }

    /// What happens to a connection from `source` to `target`: the one decision the
    /// outbound paths start from, in two hash lookups.
    pub fn resolve(&self, source: IpAddr, target: IpAddr) -> Resolved<'_> {
        let source = self.workload(source);
        let (destination, waypoint) = match self.addresses.get(&target) {
            Some(address) => (
                match &address.owner {
                    Owner::Service(s) => Destination::Service(s),
                    Owner::Workload(w) => Destination::Workload(w),
                },
                address.waypoint.as_deref(),
            ),
            None => (Destination::Outside, None),
        };
        Resolved {
            source,
            destination,
            waypoint,
        }
    }

    /// The pod that owns `ip`.
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodInfo> {
        self.workload(ip).map(|w| &w.pod)
    }

    /// A Service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&CompiledService> {
        self.shards.get(namespace)?.services.get(name).map(|s| &**s)
    }

    fn compiled(&self, service: &ServiceInfo) -> Option<&CompiledService> {
        self.service(&service.namespace, &service.name)
    }

    /// The Service whose cluster IP is `ip`.
    pub fn service_by_ip(&self, ip: IpAddr) -> Option<&ServiceInfo> {
        self.compiled_by_ip(ip).map(|s| &s.service)
    }

    /// The compiled Service whose cluster IP is `ip`.
    pub fn compiled_by_ip(&self, ip: IpAddr) -> Option<&CompiledService> {
        match &self.addresses.get(&ip)?.owner {
            Owner::Service(s) => Some(s),
            Owner::Workload(_) => None,
        }
    }

    /// The Service a VirtualService or DestinationRule host names, written in `namespace`.
    pub fn service_for_host(&self, host: &str, namespace: &str) -> Option<&ServiceInfo> {
        let (namespace, name) = resolve_host(host, namespace)?;
        self.service(&namespace, &name).map(|s| &s.service)
    }

    /// The pods behind a Service (its endpoints): selected, and owning an address.
    pub fn endpoints<'a>(
        &'a self,
        service: &ServiceInfo,
    ) -> impl Iterator<Item = &'a PodInfo> + 'a {
        self.compiled(service)
            .into_iter()
            .flat_map(|s| s.endpoints.iter().map(|w| &w.pod))
    }

    /// The Services whose selector picks the pod.
    pub fn services_selecting<'a>(
        &'a self,
        pod: &PodInfo,
    ) -> impl Iterator<Item = &'a ServiceInfo> + 'a {
        self.shards
            .get(&pod.namespace)
            .and_then(|s| s.selecting.get(&pod.name))
            .into_iter()
            .flat_map(|services| services.iter().map(|s| &s.service))
    }

    /// The waypoint for traffic to the Service's cluster IP.
    pub fn service_waypoint(&self, service: &ServiceInfo) -> Option<WaypointRef> {
        self.compiled(service).and_then(|s| s.waypoint.clone())
    }

    /// The waypoint for traffic addressed to the pod's own IP.
    pub fn workload_waypoint(&self, pod: &PodInfo) -> Option<WaypointRef> {
        match pod.ip.and_then(|ip| self.workload(ip)) {
            Some(w) if w.pod.name == pod.name && w.pod.namespace == pod.namespace => {
                w.waypoint.clone()
            }
            _ => self.model.bind_workload_waypoint(pod),
        }
    }

    /// For a pod in the mesh bound to a workload waypoint: that waypoint, and the
    /// identities, as (namespace, service account), that may open connections to it: the
    /// waypoint's pods', and those of the waypoints of the Services that select the pod,
    /// which dial it for calls to those Services. Everything else bypasses the waypoint.
    pub fn bound_waypoint(&self, pod: &PodInfo) -> Option<(&WaypointRef, Vec<(String, String)>)> {
        let workload = self.shards.get(&pod.namespace)?.workloads.get(&pod.name)?;
        let waypoint = workload.waypoint.as_ref().filter(|_| workload.in_mesh)?;
        Some((waypoint, self.waypoint_peers(pod)))
    }

    /// The identities, as (namespace, service account), of the waypoints that carry traffic
    /// to `pod`: its workload waypoint's pods', and those of the waypoints of the Services
    /// that select it. Sorted.
    pub fn waypoint_peers(&self, pod: &PodInfo) -> Vec<(String, String)> {
        let Some(shard) = self.shards.get(&pod.namespace) else {
            return Vec::new();
        };
        let own = shard
            .workloads
            .get(&pod.name)
            .filter(|w| w.in_mesh)
            .and_then(|w| w.waypoint.as_ref());
        let services = shard
            .selecting
            .get(&pod.name)
            .into_iter()
            .flatten()
            .filter_map(|s| s.waypoint.as_ref());
        let mut identities: Vec<(String, String)> = own
            .into_iter()
            .chain(services)
            .flat_map(|w| delegation::identities(self.service(&w.namespace, &w.name)))
            .collect();
        identities.sort();
        identities.dedup();
        identities
    }

    /// The client address that a tunnelled connection stands for, for `source.ip` and
    /// `ipBlocks`. The tunnel's peer (`peer_ip`, proven identity `peer`) is the direct
    /// client; the address it forwards (`Forwarded: for=`) is believed only when the peer
    /// may speak for it: the forwarded address is a pod whose identity is the peer's own
    /// (a source agent forwarding its pod's address), or the peer is a waypoint that
    /// carries traffic to `dest` (forwarding its client's). Istio's `source.ip` is likewise
    /// the direct peer's address.
    pub fn client_address(
        &self,
        dest: Option<&PodInfo>,
        peer: (&str, &str),
        peer_ip: IpAddr,
        forwarded: Option<IpAddr>,
    ) -> IpAddr {
        let Some(forwarded) = forwarded else {
            return peer_ip;
        };
        let own = self
            .workload(forwarded)
            .is_some_and(|w| (w.pod.namespace.as_str(), w.pod.service_account.as_str()) == peer);
        let waypoint = || {
            dest.is_some_and(|d| {
                self.waypoint_peers(d)
                    .iter()
                    .any(|(ns, sa)| (ns.as_str(), sa.as_str()) == peer)
            })
        };
        if own || waypoint() {
            forwarded
        } else {
            peer_ip
        }
    }

    /// The waypoint's pods that have an address: the endpoints of its Service.
    pub fn waypoint_pods(&self, waypoint: &WaypointRef) -> Vec<&PodInfo> {
        self.service(&waypoint.namespace, &waypoint.name)
            .map(|s| s.endpoints.iter().map(|w| &w.pod).collect())
            .unwrap_or_default()
    }

    /// The delegation of `pod`'s L7 policies to the waypoint whose identity is the peer
    /// (namespace, service account), if that peer is such a waypoint: the destination agent
    /// leaves those policies to it.
    pub fn delegation_to(
        &self,
        pod: &PodInfo,
        peer_namespace: &str,
        peer_service_account: &str,
    ) -> Option<&Delegation> {
        self.shards
            .get(&pod.namespace)?
            .delegated
            .workloads
            .get(&pod.name)?
            .iter()
            .find(|d| d.is_waypoint(peer_namespace, peer_service_account))
    }

    /// The workload policies a waypoint enforces per call for calls to this Service.
    pub fn delegated_policies(
        &self,
        namespace: &str,
        name: &str,
    ) -> &[Arc<AuthorizationPolicyInfo>] {
        self.shards
            .get(namespace)
            .and_then(|s| s.delegated.services.get(name))
            .map_or(&[], Vec::as_slice)
    }

    /// The AuthorizationPolicies that can apply to a workload of `namespace` by selector or
    /// namespace: those of `root` (the root namespace) and of `namespace`, in (namespace,
    /// name) order. Which of them select the workload is the policy evaluator's question.
    pub fn workload_policies<'a>(
        &'a self,
        root: &'a str,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a AuthorizationPolicyInfo> + 'a {
        let (first, second) = if root <= namespace {
            (root, namespace)
        } else {
            (namespace, root)
        };
        let get = |ns: &str| {
            self.fixed
                .workload_policies
                .get(ns)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .map(|p| &**p)
        };
        get(first).chain(
            if first == second {
                None
            } else {
                Some(get(second))
            }
            .into_iter()
            .flatten(),
        )
    }

    /// The VirtualService of the Service's own namespace that routes it (the producer
    /// route), if any.
    pub fn virtual_service_for(&self, service: &ServiceInfo) -> Option<&VirtualServiceInfo> {
        self.compiled(service)?.virtual_service.as_deref()
    }

    /// The VirtualService that routes a call to `service` from a caller in `caller`: the
    /// caller's namespace's own route for it (a consumer route) if it has one, else the
    /// Service's namespace's (the producer route), each only where its `exportTo` reaches
    /// the caller. A route of a third namespace never applies (Istio's "Traffic Management
    /// Best Practices", "Cross-namespace configuration sharing").
    pub fn route_for(&self, service: &ServiceInfo, caller: &str) -> Option<&VirtualServiceInfo> {
        let compiled = self.compiled(service)?;
        compiled
            .consumer_routes
            .iter()
            .find(|vs| vs.namespace == caller)
            .filter(|vs| vs.exported_to(caller))
            .or(compiled.virtual_service.as_ref())
            .filter(|vs| vs.exported_to(caller))
            .map(|vs| &**vs)
    }

    /// The Service's DestinationRules, merged.
    pub fn destination_rule_for(&self, service: &ServiceInfo) -> Option<&DestinationRuleInfo> {
        self.compiled(service)?.destination_rule.as_deref()
    }
}

/// Logs at warn level each finding of `now` that `before` did not have, so that a finding
/// is logged when its object is applied, not again at every recompile.
pub fn log_new_findings(before: &[Finding], now: &[Finding]) {
    let before: std::collections::HashSet<&Finding> = before.iter().collect();
    for finding in now.iter().filter(|f| !before.contains(f)) {
        match finding.severity {
            Severity::Info => {
                tracing::info!(code = finding.code, object = %finding.object, "{}", finding.message)
            }
            _ => {
                tracing::warn!(code = finding.code, severity = finding.severity.as_str(), object = %finding.object, "{}", finding.message)
            }
        }
    }
}

impl Deref for State {
    type Target = Model;

    fn deref(&self) -> &Model {
        &self.model
    }
}

impl PartialEq<Model> for State {
    fn eq(&self, other: &Model) -> bool {
        self.model == *other
    }
}

impl From<Model> for State {
    fn from(model: Model) -> State {
        State::compile(model)
    }
}

#[cfg(test)]
mod seeds_tests;
#[cfg(test)]
mod tests;
