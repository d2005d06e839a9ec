//! Shared by the agent and the waypoint.

/// The Kubernetes objects Weft reads, as one typed model that every source feeds.
pub mod config;

/// The compiled state: the configuration indexed and resolved for the data path, with a
/// finding for every case where it does not do what it says.
pub mod state;

/// The HTTP server behind the admin, metrics and readiness ports.
pub mod admin;

/// SPIFFE workload identities: certificates, keys, trust bundles and the TLS configurations
/// that check them.
pub mod identity;

/// The certificate authority (`weft-agent ca`): its gRPC service and client.
pub mod ca;

/// Istio's authorization and peer-authentication semantics, evaluated.
pub mod policy;

/// HBONE: HTTP/2 CONNECT over mutual TLS, the tunnel between agents and waypoints.
pub mod hbone;

/// An HTTP/2 connection that cannot be served, answered stream by stream with a status.
pub mod refusal;

/// A relayed HTTP/2 connection whose tunnel breaks: its open calls answered with a status.
pub mod relayed;

/// Passive health: a peer whose connection failed is avoided for a back-off.
pub mod reachability;

/// `weft-agent waypoint generate`: a waypoint's Kubernetes objects.
pub mod waypoint_manifests;

/// `weft-agent analyze`: the findings and rejections, one line each.
pub mod analyze;

/// `weft-agent describe`: what the mesh makes of a pod or a Service.
pub mod describe;

#[cfg(test)]
mod test_http;
