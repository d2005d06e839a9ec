//! What a lab is made of, and its addressing plan.
//!
//! Node i (from 1) is 10.99.0.i on the underlay, owns pods 10.200.i.0/24, and its agent is
//! 10.200.i.1, the pods' gateway. Pod j of node i is 10.200.i.(10+j). Services are 10.96.0.x.

use std::net::Ipv4Addr;

#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Starts with `wl-`; names the namespaces, cgroups and pins.
    pub name: String,
    pub nodes: usize,
    pub namespaces: Vec<NamespaceSpec>,
    pub pods: Vec<PodSpec>,
    pub services: Vec<ServiceSpec>,
}

#[derive(Debug, Clone)]
pub struct NamespaceSpec {
    pub name: String,
    /// Labelled `weft.dev/dataplane-mode=ambient`.
    pub ambient: bool,
    /// More labels (`weft.dev/use-waypoint`, say).
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub namespace: String,
    pub node: usize,
    pub labels: Vec<(String, String)>,
    pub service_account: String,
    /// Ports the kubelet probes (`tcpSocket`): the first is the readiness probe's, a second
    /// the liveness probe's.
    pub probe_ports: Vec<u16>,
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    pub cluster_ip: Ipv4Addr,
    pub selector: Vec<(String, String)>,
    pub ports: Vec<ServicePort>,
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct ServicePort {
    pub name: String,
    pub port: u16,
    pub target_port: u16,
    pub app_protocol: Option<String>,
}

impl LabSpec {
    pub fn new(name: &str, nodes: usize) -> Self {
        LabSpec {
            name: name.to_string(),
            nodes,
            namespaces: Vec::new(),
            pods: Vec::new(),
            services: Vec::new(),
        }
    }

    pub fn namespace(&self, name: &str) -> Option<&NamespaceSpec> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    pub fn with_namespace(mut self, name: &str, ambient: bool) -> Self {
        self.namespaces.push(NamespaceSpec {
            name: name.to_string(),
            ambient,
            labels: Vec::new(),
        });
        self
    }

    /// Adds a label to a namespace of the spec.
    pub fn with_namespace_label(mut self, namespace: &str, key: &str, value: &str) -> Self {
        if let Some(ns) = self.namespaces.iter_mut().find(|n| n.name == namespace) {
            ns.labels.push((key.to_string(), value.to_string()));
        }
        self
    }

    /// A waypoint named `name` in `namespace`, as a pod on `node` (outside the mesh's
    /// capture, as waypoints are) and the Service `name` in front of its HBONE port.
    /// Bind workloads to it with `weft.dev/use-waypoint=<name>`; start it with
    /// `Lab::start_waypoint`.
    pub fn with_waypoint(mut self, name: &str, namespace: &str, node: usize) -> Self {
        let index = self.services.len() as u8;
        self = self.with_pod(
            name,
            namespace,
            node,
            &[("weft.dev/dataplane-mode", "none"), (WAYPOINT_LABEL, name)],
        );
        if let Some(pod) = self.pods.last_mut() {
            pod.service_account = name.to_string();
        }
        self.with_service(ServiceSpec {
            name: name.to_string(),
            namespace: namespace.to_string(),
            cluster_ip: Ipv4Addr::new(10, 96, 255, 1 + index),
            selector: vec![(WAYPOINT_LABEL.to_string(), name.to_string())],
            ports: vec![ServicePort {
                name: "mesh".into(),
                port: 15008,
                target_port: 15008,
                app_protocol: None,
            }],
            labels: Vec::new(),
        })
    }

    /// Another pod, `pod` on `node`, of the waypoint `waypoint` (added before with
    /// `with_waypoint`): a second replica behind the same Service, with the same identity.
    /// Start it with `Lab::start_waypoint(pod, ..)`.
    pub fn with_waypoint_replica(mut self, pod: &str, waypoint: &str, node: usize) -> Self {
        let namespace = self
            .pods
            .iter()
            .find(|p| p.name == waypoint)
            .map(|p| p.namespace.clone())
            .unwrap_or_else(|| panic!("no waypoint {waypoint} to add a replica to"));
        self = self.with_pod(
            pod,
            &namespace,
            node,
            &[
                ("weft.dev/dataplane-mode", "none"),
                (WAYPOINT_LABEL, waypoint),
            ],
        );
        if let Some(pod) = self.pods.last_mut() {
            pod.service_account = waypoint.to_string();
        }
        self
    }

    pub fn with_pod(
        mut self,
        name: &str,
        namespace: &str,
        node: usize,
        labels: &[(&str, &str)],
    ) -> Self {
        assert!(
            (1..=self.nodes).contains(&node),
            "pod {name} on node {node} of {}",
            self.nodes
        );
        self.pods.push(PodSpec {
            name: name.to_string(),
            namespace: namespace.to_string(),
            node,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            service_account: "default".to_string(),
            probe_ports: Vec::new(),
        });
        self
    }

    /// Gives the last pod added a `tcpSocket` readiness probe on `port`.
    pub fn with_probe_port(mut self, port: u16) -> Self {
        if let Some(pod) = self.pods.last_mut() {
            pod.probe_ports.push(port);
        }
        self
    }

    /// Like `with_pod`, with the pod's service account (its identity).
    pub fn with_pod_as(
        mut self,
        name: &str,
        namespace: &str,
        node: usize,
        service_account: &str,
    ) -> Self {
        self = self.with_pod(name, namespace, node, &[]);
        if let Some(pod) = self.pods.last_mut() {
            pod.service_account = service_account.to_string();
        }
        self
    }

    pub fn with_service(mut self, service: ServiceSpec) -> Self {
        self.services.push(service);
        self
    }
}

/// The label that selects a waypoint's pods for its Service.
pub const WAYPOINT_LABEL: &str = "weft.dev/waypoint";

impl ServiceSpec {
    /// The lab's gRPC Service: port 50051 named `grpc-api`, selecting `app=whoami`, with
    /// `labels` on the Service itself (`weft.dev/use-waypoint`, say).
    pub fn whoami(name: &str, namespace: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> Self {
        Self::one_port(name, namespace, ip, "whoami", ("grpc-api", 50051), labels)
    }

    /// A TCP Service: port 7100 named `tcp-echo` (carried at L4), selecting `app=echo`.
    pub fn tcp_echo(name: &str, namespace: &str, ip: [u8; 4], labels: &[(&str, &str)]) -> Self {
        Self::one_port(name, namespace, ip, "echo", ("tcp-echo", 7100), labels)
    }

    fn one_port(
        name: &str,
        namespace: &str,
        ip: [u8; 4],
        app: &str,
        (port_name, port): (&str, u16),
        labels: &[(&str, &str)],
    ) -> Self {
        ServiceSpec {
            name: name.into(),
            namespace: namespace.into(),
            cluster_ip: ip.into(),
            selector: vec![("app".into(), app.into())],
            ports: vec![ServicePort {
                name: port_name.into(),
                port,
                target_port: port,
                app_protocol: None,
            }],
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }
}

pub fn node_name(node: usize) -> String {
    format!("node-{node}")
}

pub fn node_netns(lab: &str, node: usize) -> String {
    format!("{lab}-n{node}")
}

pub fn underlay_netns(lab: &str) -> String {
    format!("{lab}-ul")
}

pub fn node_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, node as u8)
}

/// The lab's certificate authority, on the underlay bridge.
pub const CA_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 250);
pub const CA_PORT: u16 = 15012;
pub const TRUST_DOMAIN: &str = "cluster.local";

/// The address each node's agent dials its pods from (the agent's default), on the node's
/// loopback; pods route it through their gateway, as a cluster's pods do by default route.
pub const DIAL_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 15, 8);

pub fn agent_ip(node: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, node as u8, 1)
}

pub fn pod_ip(node: usize, index: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, node as u8, 10 + index)
}
