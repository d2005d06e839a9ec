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
    pub config_dir: PathBuf,

    /// The cgroup v2 directory under which the kubelet makes pod cgroups.
    #[arg(long, env = "WEFT_CGROUP_ROOT", default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,

    /// bpffs directory where this agent pins its maps and links.
    #[arg(long, env = "WEFT_BPFFS_DIR", default_value = "/sys/fs/bpf/weft")]
    pub bpffs_dir: PathBuf,

    /// The address pods reach the agent at (their gateway on this node).
    #[arg(long, env = "WEFT_AGENT_IP")]
    pub agent_ip: Ipv4Addr,

    /// Outbound capture port.
    #[arg(long, default_value_t = 15001)]
    pub outbound_port: u16,

    /// Admin port (/config_dump, /healthz).
    #[arg(long, default_value_t = 15000)]
    pub admin_port: u16,

    /// Prometheus port (/metrics).
    #[arg(long, default_value_t = 15020)]
    pub metrics_port: u16,

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
