//! Who called what: the Service and port a client connection to the waypoint was opened
//! for, and the client as its certificate proves it. Made once per connection (by
//! `accept`), read by every call on it.

use std::{net::IpAddr, sync::Arc};

use weft_mesh::policy::Peer;

/// The Service (and port) a tunnelled connection was addressed to, and who called it.
#[derive(Debug, Clone)]
pub struct Called {
    /// The Service's (namespace, name), its key in the model.
    pub service: (String, String),
    /// `namespace/name`, the metrics' label, made once per connection.
    pub label: Arc<str>,
    /// `name.namespace.svc.cluster.local`, Istio's `destination_service`.
    pub host: Arc<str>,
    pub port: u16,
    /// The client's address, for `consistentHash.useSourceIp`.
    pub client_ip: IpAddr,
    pub source: Source,
}

/// The client of a tunnelled connection, as its certificate and the model tell.
#[derive(Debug, Clone)]
pub struct Source {
    /// For authorization: the principal the certificate proved, and the client's address.
    pub peer: Peer,
    /// `spiffe://...`, for metrics and the access log.
    pub principal: Arc<str>,
    pub namespace: Arc<str>,
    /// The client pod's workload, or `unknown` when its address is no known pod.
    pub workload: Arc<str>,
}
