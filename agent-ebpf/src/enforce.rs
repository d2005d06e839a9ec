//! Enforce: the tc program on the node side of each enrolled pod's veth, on the path into the
//! pod. It is the inbound gate for PeerAuthentication: the agent writes each pod's mode to
//! `TC_MODE`, and port-level overrides to `TC_PORT_MODE`. Under STRICT, a new TCP connection
//! may only come from the node agent (the tunnel's end, which checked the peer's certificate)
//! or from an enrolled pod on this node; plaintext from outside the mesh never reaches the
//! pod. Under PERMISSIVE such connections pass and are counted; inside the pod's namespace
//! `lookup` then hands them to the agent's plaintext listener. Packets of established
//! connections are not inspected further.

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    macros::classifier,
    programs::TcContext,
};
use weft_ebpf_common::{TC_MODE_STRICT, counter, port_mode_key};

use crate::maps::{TC_MODE, TC_PORT_MODE, count, from_mesh};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

/// The source address (network order) and destination port (host order) of a TCP SYN without
/// ACK, the first packet of a new inbound connection; `None` for anything else.
#[inline(always)]
fn new_connection(ctx: &TcContext) -> Option<(u32, u16)> {
    let proto: u16 = ctx.load(12).ok()?;
    if u16::from_be(proto) != ETH_P_IP {
        return None;
    }
    let version_ihl: u8 = ctx.load(ETH_HLEN).ok()?;
    let ip_proto: u8 = ctx.load(ETH_HLEN + 9).ok()?;
    if ip_proto != IPPROTO_TCP {
        return None;
    }
    let ihl = usize::from(version_ihl & 0x0f) * 4;
    let flags: u8 = ctx.load(ETH_HLEN + ihl + 13).ok()?;
    if flags & TCP_SYN == 0 || flags & TCP_ACK != 0 {
        return None;
    }
    // Read as raw bytes into a native u32: the same network-order convention as the maps.
    let source: u32 = ctx.load(ETH_HLEN + 12).ok()?;
    let port: u16 = ctx.load(ETH_HLEN + ihl + 2).ok()?;
    Some((source, u16::from_be(port)))
}

#[classifier]
pub fn weft_tc_pod_in(ctx: TcContext) -> i32 {
    // SAFETY: the kernel hands a valid __sk_buff; ifindex is readable.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    count(counter::TC_PACKETS, 1);
    let Some((source, port)) = new_connection(&ctx) else {
        return TC_ACT_OK as i32;
    };
    if from_mesh(source) {
        return TC_ACT_OK as i32;
    }
    // SAFETY: plain value lookups. The program is attached only to enrolled pods' veths, so a
    // missing entry (the agent has not written it yet, or could not) means STRICT.
    let mode = unsafe { TC_PORT_MODE.get(&port_mode_key(ifindex, port)) }
        .or_else(|| unsafe { TC_MODE.get(&ifindex) })
        .copied()
        .unwrap_or(TC_MODE_STRICT);
    if mode == TC_MODE_STRICT {
        count(counter::TC_DROPPED, 1);
        return TC_ACT_SHOT as i32;
    }
    count(counter::TC_PLAINTEXT, 1);
    TC_ACT_OK as i32
}
