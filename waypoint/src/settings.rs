//! The waypoint's configuration: one typed struct, read once at start from flags and the
//! environment (the Deployment's downward API gives the pod's namespace and IP).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use weft_mesh::ca::Enrolment;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "weft-waypoint",
    version,
    about = "Weft's L7 waypoint: per-call gRPC routing and balancing"
)]
pub struct Settings {
    /// Directory of Kubernetes manifests (the lab's and the tests' configuration source).
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// Read the configuration from the Kubernetes API instead (in-cluster service account,
    /// or the kubeconfig).
    #[arg(long, env = "WEFT_KUBERNETES")]
    pub kubernetes: bool,

    /// The waypoint's name: workloads bind to it with `weft.dev/use-waypoint=<name>`.
    #[arg(long, env = "WEFT_WAYPOINT_NAME")]
    pub name: String,

    /// The waypoint's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,

    /// The service account the waypoint runs as (default: its name, as Istio names them).
    #[arg(long, env = "WEFT_SERVICE_ACCOUNT")]
    pub service_account: Option<String>,

    /// The pod's own address, which node agents see as the client of its calls.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: std::net::IpAddr,

    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// The certificate authority.
    /// `IP:PORT` or `host:port` (the CA Service's DNS name in a cluster).
    #[arg(long, env = "WEFT_CA_ADDRESS")]
    pub ca_address: String,
    #[arg(long, env = "WEFT_CA_TOKEN_FILE")]
    pub ca_token_file: PathBuf,
    #[arg(long, env = "WEFT_TRUST_BUNDLE")]
    pub trust_bundle: PathBuf,
    #[arg(long, default_value_t = 86_400)]
    pub cert_ttl_seconds: u64,

    /// The node agents' identity, which upstream tunnels must present.
    #[arg(long, default_value = "weft-system")]
    pub agent_namespace: String,
    #[arg(long, default_value = "weft-agent")]
    pub agent_service_account: String,

    #[arg(long, default_value = "0.0.0.0:15008")]
    pub hbone_address: SocketAddr,
    /// Local only by default: the config dump is for the pod's own operator.
    #[arg(long, default_value = "127.0.0.1:15000")]
    pub admin_address: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    pub metrics_address: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    pub ready_address: SocketAddr,

    /// HTTP/2 flow-control window of each call, both towards clients and backends.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub window: u32,

    /// Where the access log goes: a file, or `-` for standard output. None by default.
    #[arg(long, env = "WEFT_ACCESS_LOG")]
    pub access_log: Option<PathBuf>,

    /// Which calls the access log records.
    #[arg(
        long,
        env = "WEFT_ACCESS_LOG_FILTER",
        value_enum,
        default_value = "all"
    )]
    pub access_log_filter: crate::telemetry::LogFilter,

    /// Percentage of new traces the waypoint samples (a client's own decision stands).
    #[arg(long, env = "WEFT_TRACE_SAMPLING", default_value_t = 1.0,
          value_parser = sampling)]
    pub trace_sampling: f64,

    /// OTLP/gRPC collector for the waypoint's spans, e.g. `http://collector:4317`. Spans
    /// are not exported without one (trace headers are still propagated).
    #[arg(long, env = "WEFT_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The mesh's root namespace (Istio's `rootNamespace`).
    #[arg(long, default_value = weft_mesh::policy::DEFAULT_ROOT_NAMESPACE)]
    pub root_namespace: String,

    /// Worker threads (Envoy's `--concurrency`); 0 means one per core.
    #[arg(long, env = "WEFT_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// On SIGTERM the waypoint stops accepting, sends GOAWAY on every connection, and gives
    /// the calls in flight this long to finish before it exits (below the pod's
    /// `terminationGracePeriodSeconds`, 30 by default).
    #[arg(long, env = "WEFT_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,
}

impl Settings {
    pub fn enrolment(&self, ca: SocketAddr) -> Enrolment {
        Enrolment {
            ca,
            token_file: self.ca_token_file.clone(),
            trust_bundle: self.trust_bundle.clone(),
            ttl: Duration::from_secs(self.cert_ttl_seconds),
        }
    }
}

fn sampling(text: &str) -> Result<f64, String> {
    let value: f64 = text.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=100.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{value} is not a percentage (0 to 100)"))
    }
}
