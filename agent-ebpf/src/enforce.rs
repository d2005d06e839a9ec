//! Enforce: the tc program on the node side of each enrolled pod's veth, on the path into the
//! pod. It is the inbound gate for PeerAuthentication: the agent writes each pod's mode to
//! `TC_MODE`, and port-level overrides to `TC_PORT_MODE`. Under STRICT, a new TCP connection
//! may only come from the node agent (the tunnel's end, which checked the peer's certificate)
//! or from an enrolled pod on this node; plaintext from outside the mesh never reaches the
//! pod. Under PERMISSIVE such connections pass and are counted; inside the pod's namespace
//! `lookup` then hands them to the agent's plaintext inbound listener.
//!
//! The agent is recognised by two things together: the source address it dials pods from
//! (`Settings::dial_ip`) and the socket mark it sets on those connections (`AGENT_MARK`, which
//! the packet still carries here, before it crosses into the pod's namespace). The node's own
//! address is trusted for nothing: NodePort traffic that kube-proxy masquerades to it, and
//! hostNetwork pods, meet STRICT like anyone else. A connection from the dial address without
//! the mark is a node process posing as the agent and is dropped whatever the mode. The one
//! exception for the node's processes is the kubelet's probes: a connection opened by a local
//! socket (a forwarded packet has none) to a port the pod's spec probes passes, and is
//! recorded so that sk_lookup lets it reach the container directly.
//!
//! IPv6 SYNs never come from the mesh (it is IPv4 between pods), and neither STRICT nor the
//! plaintext inbound's policy could apply to them: they are dropped whatever the mode, found
//! behind extension headers too. What cannot be read (a non-first fragment, which has no TCP
//! header, a packet too short for its headers, or extension headers deeper than the gate
//! walks) is dropped on STRICT pods rather than passed.

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_get_socket_cookie,
    macros::classifier,
    programs::TcContext,
};
use weft_ebpf_common::{
    AGENT_MARK, ProbeKey, TC_MODE_STRICT, TC_PORT_PROBE, counter, port_mode_key,
};

use crate::maps::{PROBES, TC_MODE, TC_PORT_MODE, count, is_dial_address, pod_flags};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// IPv4 flags and fragment offset: the offset's 13 bits.
const FRAGMENT_OFFSET: u16 = 0x1fff;
const IPV6_HLEN: usize = 40;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
const MAX_IPV6_EXTENSIONS: usize = 4;

/// What the gate makes of a packet into the pod.
enum Packet {
    /// Not the start of a TCP connection (another protocol, or a packet of one that is
    /// established): passed.
    Other,
    /// An IPv4 TCP SYN without ACK, from `source` to this port (host order).
    New { source: Source, port: u16 },
    /// TCP that cannot be read: a non-first IPv4 fragment (no TCP header to check), or a
    /// packet too short for its headers. Dropped where the pod is STRICT.
    Unreadable,
    /// A new IPv6 TCP connection, or IPv6 that cannot be read as TCP or not (a non-first
    /// fragment, headers cut short or deeper than the gate walks). Dropped whatever the mode.
    Ipv6,
}

/// The IPv4 ends of a new connection: addresses in network order, the source port in host
/// order.
#[derive(Clone, Copy)]
struct Source {
    ip: u32,
    port: u16,
    pod_ip: u32,
}

/// A TCP header's flags, and its source and destination ports (host order).
#[inline(always)]
fn tcp_flags_ports(ctx: &TcContext, tcp: usize) -> Option<(u8, u16, u16)> {
    let flags: u8 = ctx.load(tcp + 13).ok()?;
    let source: u16 = ctx.load(tcp).ok()?;
    let port: u16 = ctx.load(tcp + 2).ok()?;
    Some((flags, u16::from_be(source), u16::from_be(port)))
}

#[inline(always)]
fn is_new(flags: u8) -> bool {
    flags & TCP_SYN != 0 && flags & TCP_ACK == 0
}

#[inline(always)]
fn classify(ctx: &TcContext) -> Packet {
    let Ok(proto) = ctx.load::<u16>(12) else {
        return Packet::Other;
    };
    match u16::from_be(proto) {
        ETH_P_IP => {
            let (Ok(version_ihl), Ok(ip_proto), Ok(fragment)) = (
                ctx.load::<u8>(ETH_HLEN),
                ctx.load::<u8>(ETH_HLEN + 9),
                ctx.load::<u16>(ETH_HLEN + 6),
            ) else {
                return Packet::Unreadable;
            };
            if ip_proto != IPPROTO_TCP {
                return Packet::Other;
            }
            if u16::from_be(fragment) & FRAGMENT_OFFSET != 0 {
                return Packet::Unreadable;
            }
            let ihl = usize::from(version_ihl & 0x0f) * 4;
            if ihl < 20 {
                return Packet::Unreadable;
            }
            let Some((flags, source_port, port)) = tcp_flags_ports(ctx, ETH_HLEN + ihl) else {
                return Packet::Unreadable;
            };
            if !is_new(flags) {
                return Packet::Other;
            }
            // Read as raw bytes into a native u32: the same network-order convention as
            // the maps.
            match (
                ctx.load::<u32>(ETH_HLEN + 12),
                ctx.load::<u32>(ETH_HLEN + 16),
            ) {
                (Ok(ip), Ok(pod_ip)) => Packet::New {
                    source: Source {
                        ip,
                        port: source_port,
                        pod_ip,
                    },
                    port,
                },
                _ => Packet::Unreadable,
            }
        }
        ETH_P_IPV6 => {
            // Extension headers are walked (hop-by-hop, routing, destination options, AH,
            // fragment), a few deep: TCP behind them is TCP.
            let Ok(mut next) = ctx.load::<u8>(ETH_HLEN + 6) else {
                return Packet::Ipv6;
            };
            let mut at = ETH_HLEN + IPV6_HLEN;
            for _ in 0..MAX_IPV6_EXTENSIONS {
                let length = match next {
                    IPPROTO_TCP => break,
                    IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                        let Ok(units) = ctx.load::<u8>(at + 1) else {
                            return Packet::Ipv6;
                        };
                        (usize::from(units) + 1) * 8
                    }
                    IPV6_AUTH => {
                        let Ok(units) = ctx.load::<u8>(at + 1) else {
                            return Packet::Ipv6;
                        };
                        (usize::from(units) + 2) * 4
                    }
                    IPV6_FRAGMENT => {
                        let Ok(offset) = ctx.load::<u16>(at + 2) else {
                            return Packet::Ipv6;
                        };
                        if u16::from_be(offset) & 0xfff8 != 0 {
                            return Packet::Ipv6;
                        }
                        8
                    }
                    _ => return Packet::Other,
                };
                let Ok(following) = ctx.load::<u8>(at) else {
                    return Packet::Ipv6;
                };
                next = following;
                at += length;
            }
            if next != IPPROTO_TCP {
                // Deeper than we walk: not readable as TCP or not.
                return Packet::Ipv6;
            }
            match tcp_flags_ports(ctx, at) {
                Some((flags, _, _)) if !is_new(flags) => Packet::Other,
                _ => Packet::Ipv6,
            }
        }
        _ => Packet::Other,
    }
}

#[classifier]
pub fn weft_tc_pod_in(ctx: TcContext) -> i32 {
    // SAFETY: the kernel hands a valid __sk_buff; ifindex is readable.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    count(counter::TC_PACKETS, 1);
    // SAFETY (both lookups): plain value lookups. The program is attached only to enrolled
    // pods' veths, so a missing entry (the agent has not written it yet, or could not)
    // means STRICT.
    let pod_mode = || {
        unsafe { TC_MODE.get(&ifindex) }
            .copied()
            .unwrap_or(TC_MODE_STRICT)
    };
    let (source, port) = match classify(&ctx) {
        Packet::Other => return TC_ACT_OK as i32,
        Packet::Unreadable => {
            if pod_mode() == TC_MODE_STRICT {
                count(counter::TC_DROPPED, 1);
                return TC_ACT_SHOT as i32;
            }
            return TC_ACT_OK as i32;
        }
        Packet::Ipv6 => {
            // IPv6 TCP into an enrolled pod: Weft carries IPv4 only, so neither STRICT nor
            // the plaintext inbound (and its policy) could apply. Refused whatever the mode.
            count(counter::TC_DROPPED, 1);
            return TC_ACT_SHOT as i32;
        }
        Packet::New { source, port } => (source, port),
    };
    if is_dial_address(source.ip) {
        // SAFETY: the kernel hands a valid __sk_buff; mark is readable.
        if unsafe { (*ctx.skb.skb).mark } & AGENT_MARK != 0 {
            return TC_ACT_OK as i32;
        }
        count(counter::TC_FORGED, 1);
        return TC_ACT_SHOT as i32;
    }
    if pod_flags(source.ip).is_some() {
        return TC_ACT_OK as i32;
    }
    let entry = unsafe { TC_PORT_MODE.get(&port_mode_key(ifindex, port)) }.copied();
    if let Some(mode) = entry
        && mode & TC_PORT_PROBE != 0
        && opened_on_this_node(&ctx)
    {
        let key = ProbeKey {
            source_ip: source.ip,
            pod_ip: source.pod_ip,
            source_port: source.port,
            pod_port: port,
        };
        if PROBES.insert(&key, &1, 0).is_ok() {
            count(counter::TC_PROBES, 1);
            return TC_ACT_OK as i32;
        }
    }
    let mode = entry.map_or_else(pod_mode, |m| m & !TC_PORT_PROBE);
    if mode == TC_MODE_STRICT {
        count(counter::TC_DROPPED, 1);
        return TC_ACT_SHOT as i32;
    }
    count(counter::TC_PLAINTEXT, 1);
    TC_ACT_OK as i32
}

/// Whether a process of this node's network namespace sent the packet: it still belongs to
/// a local socket. A packet forwarded from elsewhere (another node, another pod, NodePort
/// traffic after DNAT) has none, so its socket cookie reads 0.
#[inline(always)]
fn opened_on_this_node(ctx: &TcContext) -> bool {
    // SAFETY: the helper takes the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) != 0 }
}
