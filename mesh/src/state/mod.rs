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
//! - `findings.rs`: the findings and their stable codes.
//!
//! [`epoch`]: State::epoch

use std::collections::HashMap;
use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::{
    AuthorizationPolicyInfo, DestinationRuleInfo, Model, PodInfo, ServiceInfo, VirtualServiceInfo,
    WaypointRef, resolve_host, workload_name,
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
    /// The VirtualService that routes it: the oldest of those naming it.
    pub virtual_service: Option<Arc<VirtualServiceInfo>>,
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

/// The compiled state. See the module documentation.
#[derive(Debug, Default)]
pub struct State {
    model: Model,
    epoch: u64,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    services: HashMap<(String, String), Arc<CompiledService>>,
    by_vip: HashMap<IpAddr, Arc<CompiledService>>,
    /// The Services that select each pod, by the pod's (namespace, name).
    selecting: HashMap<(String, String), Vec<Arc<CompiledService>>>,
    /// L7 workload policies handed to waypoints (see `delegation.rs`).
    delegated: delegation::Delegated,
    /// Workload-attached AuthorizationPolicies (no `targetRefs`) by namespace, so that a
    /// connection's decision looks at its namespace's and the root namespace's only.
    workload_policies: HashMap<String, Vec<Arc<AuthorizationPolicyInfo>>>,
    findings: Vec<Finding>,
}

/// Epochs are unique within a process, so that a connection can tell whether the state it
/// was admitted under is still the current one.
static EPOCH: AtomicU64 = AtomicU64::new(1);

impl State {
    /// Compiles a model. Cost: linear in the objects, plus each Service's selector against
    /// the pods of its own namespace.
    pub fn compile(model: Model) -> State {
        let mut workloads: HashMap<(String, String), Arc<Workload>> = HashMap::new();
        let mut by_namespace: HashMap<&str, Vec<Arc<Workload>>> = HashMap::new();
        let mut by_ip = HashMap::new();
        for pod in model.pods.values() {
            let workload = Arc::new(Workload {
                name: workload_name(pod),
                in_mesh: model.in_mesh(pod),
                waypoint: model.bind_workload_waypoint(pod),
                pod: pod.clone(),
            });
            if !pod.host_network
                && let Some(ip) = pod.ip
            {
                by_ip.insert(ip, workload.clone());
                by_namespace
                    .entry(pod.namespace.as_str())
                    .or_default()
                    .push(workload.clone());
            }
            workloads.insert((pod.namespace.clone(), pod.name.clone()), workload);
        }

        let traffic = traffic::compile(&model);
        let mut services = HashMap::new();
        let mut by_vip = HashMap::new();
        let mut selecting: HashMap<(String, String), Vec<Arc<CompiledService>>> = HashMap::new();
        for (key, service) in &model.services {
            let endpoints: Vec<Arc<Workload>> = by_namespace
                .get(service.namespace.as_str())
                .into_iter()
                .flatten()
                .filter(|w| service.selects(&w.pod))
                .cloned()
                .collect();
            let (virtual_service, destination_rule) =
                traffic.for_service.get(key).cloned().unwrap_or_default();
            let compiled = Arc::new(CompiledService {
                waypoint: model.bind_service_waypoint(service),
                service: service.clone(),
                endpoints,
                virtual_service,
                destination_rule,
            });
            for endpoint in &compiled.endpoints {
                selecting
                    .entry((endpoint.pod.namespace.clone(), endpoint.pod.name.clone()))
                    .or_default()
                    .push(compiled.clone());
            }
            if let Some(ip) = service.cluster_ip {
                by_vip.insert(ip, compiled.clone());
            }
            services.insert(key.clone(), compiled);
        }

        let delegated = delegation::compile(&model, &by_namespace, &selecting, &services);
        drop(by_namespace);
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
        let mut state = State {
            epoch: EPOCH.fetch_add(1, Ordering::Relaxed),
            by_ip,
            services,
            by_vip,
            selecting,
            delegated,
            workload_policies,
            findings: traffic.findings,
            model,
        };
        let more = findings::analyze(&state);
        state.findings.extend(more);
        state.findings.sort();
        state.findings.dedup();
        state
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
        self.by_ip.get(&ip).map(|w| &**w)
    }

    /// What happens to a connection from `source` to `target`: the one decision the
    /// outbound paths start from, in two hash lookups.
    pub fn resolve(&self, source: IpAddr, target: IpAddr) -> Resolved<'_> {
        let source = self.workload(source);
        let (destination, waypoint) = match self.by_vip.get(&target) {
            Some(service) => (Destination::Service(service), service.waypoint.as_ref()),
            None => match self.by_ip.get(&target) {
                Some(w) => (
                    Destination::Workload(w),
                    w.waypoint.as_ref().filter(|_| w.in_mesh),
                ),
                None => (Destination::Outside, None),
            },
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
        self.services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|s| &**s)
    }

    fn compiled(&self, service: &ServiceInfo) -> Option<&CompiledService> {
        self.service(&service.namespace, &service.name)
    }

    /// The Service whose cluster IP is `ip`.
    pub fn service_by_ip(&self, ip: IpAddr) -> Option<&ServiceInfo> {
        self.by_vip.get(&ip).map(|s| &s.service)
    }

    /// The compiled Service whose cluster IP is `ip`.
    pub fn compiled_by_ip(&self, ip: IpAddr) -> Option<&CompiledService> {
        self.by_vip.get(&ip).map(|s| &**s)
    }

    /// The Service a VirtualService or DestinationRule host names, written in `namespace`.
    pub fn service_for_host(&self, host: &str, namespace: &str) -> Option<&ServiceInfo> {
        let (namespace, name) = resolve_host(host, namespace)?;
        self.services.get(&(namespace, name)).map(|s| &s.service)
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
        self.selecting
            .get(&(pod.namespace.clone(), pod.name.clone()))
            .into_iter()
            .flat_map(|services| services.iter().map(|s| &s.service))
    }

    /// The waypoint for traffic to the Service's cluster IP.
    pub fn service_waypoint(&self, service: &ServiceInfo) -> Option<WaypointRef> {
        self.compiled(service).and_then(|s| s.waypoint.clone())
    }

    /// The waypoint for traffic addressed to the pod's own IP.
    pub fn workload_waypoint(&self, pod: &PodInfo) -> Option<WaypointRef> {
        match pod.ip.and_then(|ip| self.by_ip.get(&ip)) {
            Some(w) if w.pod.name == pod.name && w.pod.namespace == pod.namespace => {
                w.waypoint.clone()
            }
            _ => self.model.bind_workload_waypoint(pod),
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
        self.delegated
            .workloads
            .get(&(pod.namespace.clone(), pod.name.clone()))?
            .iter()
            .find(|d| d.is_waypoint(peer_namespace, peer_service_account))
    }

    /// The workload policies a waypoint enforces per call for calls to this Service.
    pub fn delegated_policies(
        &self,
        namespace: &str,
        name: &str,
    ) -> &[Arc<AuthorizationPolicyInfo>] {
        self.delegated
            .services
            .get(&(namespace.to_string(), name.to_string()))
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
            self.workload_policies
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

    /// The VirtualService that routes a Service, if any.
    pub fn virtual_service_for(&self, service: &ServiceInfo) -> Option<&VirtualServiceInfo> {
        self.compiled(service)?.virtual_service.as_deref()
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
