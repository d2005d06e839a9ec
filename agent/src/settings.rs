//! The agent's configuration: one typed struct, read once at start from flags or environment.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct AgentSettings {
    /// This node's name: pods whose spec.nodeName matches are enrolled here.
    #[arg(long, env = "WEFT_NODE_NAME")]
    pub node_name: String,

    /// Directory of Kubernetes YAML (Namespace, Pod, Service) to read and watch.
    #[arg(long, env = "WEFT_CONFIG_DIR")]
    pub config_dir: Option<PathBuf>,

    /// Read the configuration from the Kubernetes API instead (in-cluster service account,
    /// or the kubeconfig).
    #[arg(long, env = "WEFT_KUBERNETES")]
    pub kubernetes: bool,

    /// The cgroup v2 directory under which the kubelet makes pod cgroups.
    #[arg(long, env = "WEFT_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,

    /// bpffs directory where this agent pins its maps and links.
    #[arg(long, env = "WEFT_BPFFS_DIR", default_value = "/sys/fs/bpf/weft")]
    pub bpffs_dir: PathBuf,

    /// The address pods reach the agent at (their gateway on this node).
    #[arg(long, env = "WEFT_AGENT_IP")]
    pub agent_ip: Ipv4Addr,

    /// The address the agent dials pods from, added to the node's loopback at start. It must
    /// be one nothing else on the node uses: the pods' gate trusts it (with the agent's socket
    /// mark) as the mesh, and trusts the node's own address for nothing. Link-local, so pods
    /// reach it through their default route and no other node routes to it.
    #[arg(long, env = "WEFT_DIAL_IP", default_value = "169.254.15.8")]
    pub dial_ip: Ipv4Addr,

    /// Outbound capture port.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,

    /// Admin port (/config_dump, /healthz).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,

    /// Prometheus port (/metrics).
    #[arg(long, default_value_t = 15020)]
    pub metrics_port: u16,

    /// On SIGTERM, leave the eBPF programs, maps and links pinned for the next agent to
    /// adopt (a DaemonSet's rolling update), instead of removing them. Until the next agent
    /// is up, the node's pods' new connections are refused rather than sent outside the
    /// mesh; without the flag the agent cleans up after itself.
    #[arg(long, env = "WEFT_KEEP_DATAPATH_ON_EXIT")]
    pub keep_datapath_on_exit: bool,

    /// After SIGTERM, how long the connections this agent carries may run on (a next agent
    /// serves the new ones meanwhile) before it exits and they end with it. The pod's
    /// `terminationGracePeriodSeconds` must be longer.
    #[arg(long, env = "WEFT_DRAIN_SECONDS", default_value_t = 90)]
    pub drain_seconds: u64,

    /// Readiness port: `/healthz/ready`, and `grpc.health.v1.Health` for gRPC probes.
    #[arg(long, default_value_t = 15021)]
    pub ready_port: u16,

    /// Connections the agent carries at once to one pod (through its tunnel inbound,
    /// plaintext inbound and same-node path); more are refused and counted.
    #[arg(long, default_value_t = 4096)]
    pub max_connections_per_pod: usize,

    /// Connections the agent carries at once in all.
    #[arg(long, default_value_t = 32768)]
    pub max_connections: usize,

    /// Destination ports never captured (repeatable).
    #[arg(long = "exclude-port")]
    pub exclude_ports: Vec<u16>,

    /// Destination CIDRs never captured (repeatable), e.g. 10.99.0.0/16.
    #[arg(long = "exclude-cidr")]
    pub exclude_cidrs: Vec<Cidr>,

    /// Turn the same-node kernel splice off (bytes take the TCP/IP path).
    #[arg(long)]
    pub no_splice: bool,

    /// Send same-node pod-to-pod connections through the agent instead of leaving them
    /// direct (still spliced unless --no-splice).
    #[arg(long)]
    pub no_direct_local: bool,

    #[command(flatten)]
    pub tunnel: TunnelSettings,
}

/// The mutual-TLS tunnel (HBONE) and the identities it presents.
#[derive(Debug, Clone, Args)]
pub struct TunnelSettings {
    /// The certificate authority (`weft-agent ca serve`). Without it the agent forwards
    /// captured connections in plaintext and says so at start.
    /// `IP:PORT` or `host:port` (the CA Service's DNS name in a cluster).
    #[arg(long, env = "WEFT_CA_ADDRESS")]
    pub ca_address: Option<String>,

    /// File holding this node's bootstrap token for the CA.
    #[arg(long, env = "WEFT_CA_TOKEN_FILE")]
    pub ca_token_file: Option<PathBuf>,

    /// PEM file of the trusted root certificates.
    #[arg(long, env = "WEFT_TRUST_BUNDLE")]
    pub trust_bundle: Option<PathBuf>,

    /// The SPIFFE trust domain.
    #[arg(long, env = "WEFT_TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,

    /// Where the HBONE tunnel listens (this node's address that other nodes reach).
    #[arg(long, env = "WEFT_HBONE_ADDRESS", default_value = "0.0.0.0:15008")]
    pub hbone_address: std::net::SocketAddr,

    /// The agent's own namespace and service account: its tunnel identity.
    #[arg(long, default_value = "weft-system")]
    pub agent_namespace: String,
    #[arg(long, default_value = "weft-agent")]
    pub agent_service_account: String,

    /// HTTP/2 flow-control window of each tunnelled stream, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    pub hbone_stream_window: u32,

    /// HTTP/2 flow-control window of each tunnel connection, in bytes.
    #[arg(long, default_value_t = 16 * 1024 * 1024)]
    pub hbone_connection_window: u32,

    /// Streams one pooled tunnel connection carries before another is opened.
    #[arg(long, default_value_t = 100)]
    pub hbone_max_streams: usize,

    /// A pooled tunnel connection without streams closes after this many seconds.
    #[arg(long, default_value_t = 30)]
    pub hbone_idle_seconds: u64,

    /// Lifetime to request for workload certificates; they renew at half of it.
    #[arg(long, default_value_t = 86_400)]
    pub cert_ttl_seconds: u64,

    /// Istio's root namespace: policies there without a selector apply mesh-wide.
    #[arg(long, default_value = "istio-system")]
    pub root_namespace: String,
}

impl TunnelSettings {
    /// The tunnel's tuning, from the flags.
    pub fn hbone(&self) -> weft_mesh::hbone::Settings {
        weft_mesh::hbone::Settings {
            stream_window: self.hbone_stream_window,
            connection_window: self.hbone_connection_window,
            max_streams_per_connection: self.hbone_max_streams,
            idle_timeout: std::time::Duration::from_secs(self.hbone_idle_seconds),
            ..weft_mesh::hbone::Settings::default()
        }
    }
}

/// An IPv4 CIDR given on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr.parse().map_err(|e| format!("{s}: bad address: {e}"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|e| format!("{s}: bad prefix: {e}"))?;
        if prefix > 32 {
            return Err(format!("{s}: prefix longer than 32"));
        }
        Ok(Cidr { addr, prefix })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs() {
        let c: Cidr = "10.99.0.0/16".parse().unwrap();
        assert_eq!((c.addr, c.prefix), (Ipv4Addr::new(10, 99, 0, 0), 16));
        let c: Cidr = "10.1.2.3".parse().unwrap();
        assert_eq!(c.prefix, 32);
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("ten/8".parse::<Cidr>().is_err());
    }
}
