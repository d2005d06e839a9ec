//! Finding a pod's node-side veth: the interface of the node's /32 route to the pod's address.
//!
//! CNIs that give each pod a veth (Calico, Cilium, the lab) install such a route. Reading
//! /proc/net/route of the agent's own network namespace needs no netlink library.

use std::net::Ipv4Addr;

/// The interface that routes `ip/32`, from /proc/net/route of the current network namespace.
pub fn pod_interface(ip: Ipv4Addr) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    host_route_interface(&table, ip)
}

/// Parses the table: destination and mask are the raw network-order words printed as hex.
fn host_route_interface(table: &str, ip: Ipv4Addr) -> Option<String> {
    let want = u32::from_ne_bytes(ip.octets());
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (iface, dest, mask) = (cols.first()?, cols.get(1)?, cols.get(7)?);
        let dest = u32::from_str_radix(dest, 16).ok()?;
        let mask = u32::from_str_radix(mask, 16).ok()?;
        (dest == want && mask == u32::MAX).then(|| (*iface).to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str =
        "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t0000630A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
vp1a\t0201C80A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
vp1b\t0301C80A\t00000000\t0005\t0\t0\t0\tFFFFFFFF\t0\t0\t0
";

    #[test]
    fn finds_the_host_route() {
        assert_eq!(
            host_route_interface(TABLE, Ipv4Addr::new(10, 200, 1, 3)).as_deref(),
            Some("vp1b")
        );
        assert_eq!(
            host_route_interface(TABLE, Ipv4Addr::new(10, 200, 1, 2)).as_deref(),
            Some("vp1a")
        );
    }

    #[test]
    fn ignores_subnet_routes_and_unknown_pods() {
        assert_eq!(
            host_route_interface(TABLE, Ipv4Addr::new(10, 99, 0, 0)),
            None
        );
        assert_eq!(
            host_route_interface(TABLE, Ipv4Addr::new(10, 200, 1, 9)),
            None
        );
    }
}
