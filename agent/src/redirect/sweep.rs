//! The start-up window: a pod runs before the agent has attached its hooks. Connections it
//! made before its connect hooks were attached were never captured, and plaintext it accepted
//! before its tc gate was attached never met STRICT; both would live on. When a pod is
//! enrolled, and whenever its gate's modes change, the agent lists the pod's sockets
//! (`sockdiag`) and aborts those that only exist because the gates were not there yet.

use std::collections::{BTreeMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use weft_ebpf_common::{TC_MODE_STRICT, TC_PORT_PROBE};

use crate::settings::Cidr;

/// What the decision needs to know about the node and the pod.
pub(super) struct Window<'a> {
    pub pod_ip: Ipv4Addr,
    /// The agent's address for its pods (the outbound listener's), and its dial address.
    pub agent_ip: Ipv4Addr,
    pub dial_ip: Ipv4Addr,
    /// Enrolled pods of this node: same-node connections between them may be direct.
    pub local_pods: &'a HashSet<Ipv4Addr>,
    pub exclude_ports: &'a [u16],
    pub exclude_cidrs: &'a [Cidr],
    /// The pod's gate: its mode and port overrides (with `TC_PORT_PROBE` bits).
    pub mode: u32,
    pub ports: &'a BTreeMap<u16, u32>,
}

/// Why a socket would not exist had the gates been there from the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escaped {
    /// The pod's connection to `remote` that capture would have sent to the agent.
    Uncaptured,
    /// Plaintext from outside the mesh to a STRICT port.
    Plaintext,
}

impl Window<'_> {
    fn is_mesh(&self, ip: Ipv4Addr) -> bool {
        ip == self.dial_ip || self.local_pods.contains(&ip)
    }

    fn excluded(&self, remote: SocketAddrV4) -> bool {
        self.exclude_ports.contains(&remote.port())
            || self.exclude_cidrs.iter().any(|c| {
                let mask = u32::MAX.checked_shl(32 - u32::from(c.prefix)).unwrap_or(0);
                u32::from(*remote.ip()) & mask == u32::from(c.addr) & mask
            })
    }

    /// Whether the socket of the pod from `local` to `remote` escaped a gate. `accepted`:
    /// the pod's server side (its local port is one it listens on). The agent's own sockets
    /// in the pod's namespace (its plaintext inbound's) are the caller's to leave out.
    pub fn escaped(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        accepted: bool,
    ) -> Option<Escaped> {
        let (SocketAddr::V4(local), SocketAddr::V4(remote)) = (local, remote) else {
            return None;
        };
        let peer = *remote.ip();
        if *local.ip() != self.pod_ip || peer.is_loopback() || peer == self.pod_ip {
            return None;
        }
        if accepted {
            let mode = self.ports.get(&local.port()).copied();
            let probe = mode.is_some_and(|m| m & TC_PORT_PROBE != 0);
            let strict = mode.map_or(self.mode, |m| m & !TC_PORT_PROBE) == TC_MODE_STRICT;
            return (strict && !probe && !self.is_mesh(peer)).then_some(Escaped::Plaintext);
        }
        let captured = peer == self.agent_ip || self.local_pods.contains(&peer);
        (!captured && !self.excluded(remote)).then_some(Escaped::Uncaptured)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_got_past_gates_that_were_not_there_yet() {
        let local_pods: HashSet<Ipv4Addr> = ["10.200.1.11", "10.200.1.12"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let ports: BTreeMap<u16, u32> = [
            (7001, weft_ebpf_common::TC_MODE_ALLOW_ALL),
            (8080, TC_MODE_STRICT | TC_PORT_PROBE),
        ]
        .into_iter()
        .collect();
        let cidrs = ["10.99.0.0/24".parse().unwrap()];
        let window = Window {
            pod_ip: "10.200.1.11".parse().unwrap(),
            agent_ip: "10.200.1.1".parse().unwrap(),
            dial_ip: "169.254.15.8".parse().unwrap(),
            local_pods: &local_pods,
            exclude_ports: &[53],
            exclude_cidrs: &cidrs,
            mode: TC_MODE_STRICT,
            ports: &ports,
        };
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let me = |port: u16| SocketAddr::new("10.200.1.11".parse().unwrap(), port);
        // Accepted: plaintext from a remote pod or the node on a STRICT port escaped the gate;
        // the agent's dial address, a local pod, a PERMISSIVE port, a probe port did not.
        assert_eq!(
            window.escaped(me(7000), at("10.200.2.11:40000"), true),
            Some(Escaped::Plaintext)
        );
        assert_eq!(
            window.escaped(me(7000), at("10.200.1.1:40000"), true),
            Some(Escaped::Plaintext)
        );
        assert_eq!(
            window.escaped(me(7000), at("169.254.15.8:40000"), true),
            None
        );
        assert_eq!(
            window.escaped(me(7000), at("10.200.1.12:40000"), true),
            None
        );
        assert_eq!(
            window.escaped(me(7001), at("10.200.2.11:40000"), true),
            None
        );
        assert_eq!(window.escaped(me(8080), at("10.200.1.1:40000"), true), None);
        // Made by the pod: to another node's pod, uncaptured; to the agent (captured), a
        // local pod (direct), loopback, itself, an excluded port or CIDR: fine.
        assert_eq!(
            window.escaped(me(40000), at("10.200.2.11:7000"), false),
            Some(Escaped::Uncaptured)
        );
        for remote in [
            "10.200.1.1:15001",
            "10.200.1.12:7000",
            "127.0.0.1:7000",
            "10.200.1.11:7000",
            "10.96.0.10:53",
            "10.99.0.250:15012",
        ] {
            assert_eq!(
                window.escaped(me(40000), at(remote), false),
                None,
                "{remote}"
            );
        }
        // Another address than the pod's (a second interface): not the gates' business.
        assert_eq!(
            window.escaped(at("10.1.1.1:7000"), at("10.200.2.11:1"), true),
            None
        );
    }
}
