//! The configuration both processes act on: the Kubernetes objects that decide who is in
//! the mesh and how their traffic is handled, reduced to one typed [`Model`].
//!
//! Two sources feed the model: a directory of manifests ([`DirSource`], [`watch_dir`]) for
//! the lab and the tests, and later the Kubernetes API. Both hand each object to
//! [`parse_value`] (or, for objects that arrive already typed, [`namespace_info`],
//! [`pod_info`], [`service_info`] and [`service_account_info`]), so a manifest means the
//! same thing whichever way it arrives, and an invalid one is rejected with the same
//! message.
//!
//! Files:
//! - `model.rs`: the typed model and the questions the agent asks of it;
//! - `protocol.rs`: Istio's port naming convention for gRPC and HTTP/2;
//! - `parse.rs`: one Kubernetes object in, one model entry (or a clear error) out;
//! - `security/`: Istio's AuthorizationPolicy and PeerAuthentication, parsed and validated
//!   (what they mean at run time is `crate::policy`'s business);
//! - `traffic/`: Istio's VirtualService and DestinationRule, parsed and validated, and
//!   which of them apply to a Service (what they do is the waypoint's business);
//! - `ratelimit.rs`: Weft's `LocalRateLimit` CRD, the waypoint's token buckets;
//! - `error.rs`: how a rejection names the file, document, object and field;
//! - `dir.rs`: the directory source, with last-good-per-file semantics;
//! - `kube.rs`: the Kubernetes API source (kube-rs reflectors), with last-good-per-object
//!   semantics;
//! - `watch.rs`: inotify plus a periodic resync, publishing on a watch channel.
//!
//! [`Model`]: crate::config::Model
//! [`DirSource`]: crate::config::DirSource
//! [`watch_dir`]: crate::config::watch_dir
//! [`parse_value`]: crate::config::parse_value
//! [`namespace_info`]: crate::config::namespace_info
//! [`pod_info`]: crate::config::pod_info
//! [`service_info`]: crate::config::service_info
//! [`service_account_info`]: crate::config::service_account_info

mod dir;
mod error;
mod kube;
mod model;
pub(crate) mod parse;
mod protocol;
mod ratelimit;
mod security;
mod traffic;
mod watch;
mod waypoint;

pub use dir::DirSource;
pub use error::{ConfigError, InvalidObject};
pub use kube::{ConfigSource, KINDS as KUBE_KINDS, SyncedReceiver, watch_kube};
pub use model::{
    Model, NamespaceInfo, NodeInfo, Object, ObjectKey, PodInfo, ServiceAccountInfo, ServiceInfo,
    ServicePortInfo, UnreadInfo, labels_match, workload_name,
};
pub use parse::{
    model_from_yaml, namespace_info, node_info, parse_documents, parse_value, pod_info,
    service_account_info, service_info,
};
pub use protocol::{AppProtocol, detect_protocol};
pub use ratelimit::{LimitScope, LocalRateLimitInfo, MIN_FILL_INTERVAL, TokenBucket};
pub use security::{
    AuthorizationPolicyInfo, AuthzAction, Cidr, Condition, InvalidCidr, MtlsMode, Operation,
    PeerAuthenticationInfo, Rule, Source, TargetRef, condition_keys,
};
pub use traffic::{
    ConnectionPool, DestinationRuleInfo, HashKey, HttpMatch, HttpRoute, LOAD_BALANCER_ANNOTATION,
    LoadBalancer, MatchRegex, OutlierDetection, RETRY_BUDGET_MIN_ANNOTATION,
    RETRY_BUDGET_PERCENT_ANNOTATION, RetryBudget, RetryOn, RetryPolicy, RouteDestination,
    StringMatch, Subset, TrafficMeta, TrafficPolicy, VirtualServiceInfo, parse_duration,
    resolve_host,
};
pub use watch::{ErrorsReceiver, ModelReceiver, RESYNC_INTERVAL, watch_dir};
pub(crate) use waypoint::use_waypoint;
pub use waypoint::{ISTIO_USE_WAYPOINT_LABEL, TrafficKind, WAYPOINT_FOR_LABEL, WaypointRef};

/// Namespace label that enrols the namespace's pods in the mesh, with the value
/// [`AMBIENT`]. On a pod, the value [`NONE`] opts that pod out.
pub const AMBIENT_LABEL: &str = "weft.dev/dataplane-mode";
/// Istio's name for [`AMBIENT_LABEL`], accepted so that existing manifests work unchanged.
pub const ISTIO_AMBIENT_LABEL: &str = "istio.io/dataplane-mode";
/// Names the waypoint that handles L7 for a namespace, service or service account.
pub const USE_WAYPOINT_LABEL: &str = "weft.dev/use-waypoint";

/// Value of the dataplane-mode labels that enrols a namespace.
pub const AMBIENT: &str = "ambient";
/// Value of the dataplane-mode labels that keeps a pod out of an enrolled namespace.
pub const NONE: &str = "none";
