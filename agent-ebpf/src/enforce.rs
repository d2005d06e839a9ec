//! Enforce: the tc program on the node side of each enrolled pod's veth, on the path into the
//! pod. It is the inbound gate: the agent writes each pod's mode to `TC_MODE`. For now every
//! mode lets traffic pass and is counted; STRICT mutual TLS arrives with the tunnel.

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use weft_ebpf_common::{TC_MODE_ALLOW_ALL, counter};

use crate::maps::{TC_MODE, count};

#[classifier]
pub fn weft_tc_pod_in(ctx: TcContext) -> i32 {
    // SAFETY: the kernel hands a valid __sk_buff; ifindex is readable.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain value lookup.
    let mode = unsafe { TC_MODE.get(&ifindex) }
        .copied()
        .unwrap_or(TC_MODE_ALLOW_ALL);
    count(counter::TC_PACKETS, 1);
    match mode {
        TC_MODE_ALLOW_ALL => TC_ACT_OK as i32,
        _ => TC_ACT_OK as i32,
    }
}
