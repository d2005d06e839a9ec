//! Splice: the same-node fast path (sockops + sk_msg over a sockhash).
//!
//! sockops sees every TCP socket of the node's cgroup tree as it is established. It completes
//! the capture record (original destination by 4-tuple, marked once the agent's end is
//! established, dropped if the client closes before that), and puts sockets whose two ends are
//! both on this node (enrolled pods, or the agent) into `SOCKS`. sk_msg then runs on each
//! sendmsg() of those sockets and moves the bytes straight into the peer socket's receive
//! queue, skipping the loopback/veth TCP/IP path.
//!
//! Ordering rule: a socket that ever sent bytes through TCP (its peer was not in the map yet)
//! keeps doing so, because a spliced message is read before bytes still queued in TCP.
//! Switching the other way (spliced, then TCP) is safe for the same reason.

use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{
        BPF_F_INGRESS, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, sk_action::SK_PASS,
    },
    helpers::generated::{bpf_sk_storage_delete, bpf_sk_storage_get},
    macros::{sk_msg, sock_ops},
    programs::{SkMsgContext, SockOpsContext},
};
use aya_log_ebpf::warn;
use weft_ebpf_common::{Endpoint, OrigDst, SETTING_SPLICE, Settings, SockKey, counter};

use crate::maps::{
    NO_SPLICE, ORIG_BY_SOCKET, ORIG_BY_TUPLE, SOCKS, count, node_local, settings, v4_mapped,
};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const TCP_CLOSE: u32 = 7;

/// The IPv4 address pair of a socket, whether it is AF_INET or a v4-mapped AF_INET6 socket.
#[inline(always)]
fn v4_pair(
    family: u32,
    local4: u32,
    remote4: u32,
    local6: [u32; 4],
    remote6: [u32; 4],
) -> Option<(u32, u32)> {
    match family {
        AF_INET => Some((local4, remote4)),
        AF_INET6 => Some((v4_mapped(local6)?, v4_mapped(remote6)?)),
        _ => None,
    }
}

/// Both contexts keep remote_port in network order, shifted into the upper 16 bits on
/// little-endian hosts, and local_port in host order.
#[inline(always)]
fn remote_port(raw: u32) -> u32 {
    u32::from_be(raw) & 0xffff
}

/// Whether the socket is a pod's captured connection to the agent's outbound listener.
#[inline(always)]
fn to_agent(key: &SockKey, settings: &Settings) -> bool {
    key.remote_ip == settings.agent_ip && key.remote_port == settings.outbound_port
}

/// The pod's end of a captured connection is established: move its original destination from
/// the socket's storage to the 4-tuple, where the agent finds it on accept.
#[inline(always)]
fn record_tuple(ctx: &SockOpsContext, key: &SockKey) {
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this callback; its sk field is a
    // socket pointer or null, which the verifier tracks.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk };
    if sk.is_null() {
        return;
    }
    let storage = ptr::from_ref(&ORIG_BY_SOCKET).cast_mut().cast::<c_void>();
    // SAFETY: the helper takes a map and a socket pointer; flags 0 only looks up.
    let record =
        unsafe { bpf_sk_storage_get(storage, sk.cast(), ptr::null_mut(), 0) }.cast::<OrigDst>();
    if record.is_null() {
        return;
    }
    // SAFETY: a non-null pointer from the helper is this socket's storage, an OrigDst.
    let orig = OrigDst {
        accepted: 0,
        ..unsafe { *record }
    };
    // SAFETY: same socket as above; the record is no longer needed.
    let _ = unsafe { bpf_sk_storage_delete(storage, sk.cast()) };
    let client = Endpoint {
        ip: key.local_ip,
        port: key.local_port,
    };
    match ORIG_BY_TUPLE.insert(&client, &orig, 0) {
        Ok(()) => {
            count(counter::ESTABLISHED, 1);
            // Ask for state changes, to drop the record if the client closes before the agent's
            // end is established.
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
        Err(err) => {
            count(counter::ORIG_RECORD_FAILED, 1);
            warn!(
                ctx,
                "original-destination record failed ({}); the agent will close this connection",
                err
            );
        }
    }
}

/// The agent's end of a captured connection is established: it is in the accept queue, and
/// its record must stay for the agent, even if the client closes first.
#[inline(always)]
fn mark_accepted(key: &SockKey) {
    let client = Endpoint {
        ip: key.remote_ip,
        port: key.remote_port,
    };
    if let Some(record) = ORIG_BY_TUPLE.get_ptr_mut(&client) {
        // SAFETY: a pointer from a lookup in this map points at an OrigDst value.
        unsafe { (*record).accepted = 1 };
    }
}

/// The pod's end of a captured connection closed. If the agent's end never got established
/// (its accept queue was full), the agent will never ask for the record: drop it.
#[inline(always)]
fn forget_unaccepted(key: &SockKey) {
    let client = Endpoint {
        ip: key.local_ip,
        port: key.local_port,
    };
    // SAFETY: plain value lookup.
    if unsafe { ORIG_BY_TUPLE.get(&client) }.is_some_and(|orig| orig.accepted == 0) {
        let _ = ORIG_BY_TUPLE.remove(&client);
    }
}

#[sock_ops]
pub fn weft_sockops(ctx: SockOpsContext) -> u32 {
    let op = ctx.op();
    if op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && op != BPF_SOCK_OPS_STATE_CB
    {
        return 0;
    }
    let Some((local_ip, remote_ip)) = v4_pair(
        ctx.family(),
        ctx.local_ip4(),
        ctx.remote_ip4(),
        ctx.local_ip6(),
        ctx.remote_ip6(),
    ) else {
        return 0;
    };
    let key = SockKey {
        local_ip,
        remote_ip,
        local_port: ctx.local_port(),
        remote_port: remote_port(ctx.remote_port()),
    };
    let Some(settings) = settings() else {
        return 0;
    };
    if op == BPF_SOCK_OPS_STATE_CB {
        // arg 1 is the new state. Forget the socket's no-splice mark so that a later connection
        // reusing the 4-tuple starts fresh.
        if ctx.arg(1) == TCP_CLOSE {
            let _ = NO_SPLICE.remove(&key);
            if to_agent(&key, settings) {
                forget_unaccepted(&key);
            }
        }
        return 0;
    }
    if op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && to_agent(&key, settings) {
        record_tuple(&ctx, &key);
    }
    if op == BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB
        && key.local_ip == settings.agent_ip
        && key.local_port == settings.outbound_port
    {
        mark_accepted(&key);
    }
    if settings.flags & SETTING_SPLICE == 0
        || !node_local(local_ip, settings)
        || !node_local(remote_ip, settings)
    {
        return 0;
    }
    let mut key = key;
    // SAFETY: ctx.ops is the kernel's bpf_sock_ops for this callback.
    match SOCKS.update(&mut key, unsafe { &mut *ctx.ops }, 0) {
        Ok(()) => {
            count(counter::SOCK_ADDED, 1);
            // Ask for state changes of this socket, to clean up its marks when it closes.
            let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
        }
        Err(err) => {
            count(counter::SOCK_ADD_FAILED, 1);
            warn!(
                &ctx,
                "sockhash insert failed ({}); this socket takes the TCP path", err
            );
        }
    }
    0
}

#[sk_msg]
pub fn weft_sk_msg(ctx: SkMsgContext) -> u32 {
    // SAFETY: the kernel hands a valid sk_msg_md; these fields are readable.
    let md = unsafe { &*ctx.msg };
    let size = u64::from(md.size);
    let Some((local_ip, remote_ip)) = v4_pair(
        md.family,
        md.local_ip4,
        md.remote_ip4,
        md.local_ip6,
        md.remote_ip6,
    ) else {
        return SK_PASS;
    };
    let key = SockKey {
        local_ip,
        remote_ip,
        local_port: md.local_port,
        remote_port: remote_port(md.remote_port),
    };
    // SAFETY: plain value lookup.
    if unsafe { NO_SPLICE.get(&key) }.is_some() {
        count(counter::PASSED_MSGS, 1);
        count(counter::PASSED_BYTES, size);
        return SK_PASS;
    }
    let mut peer = key.peer();
    // The helper answers SK_PASS when it set up the redirect, SK_DROP when the peer is absent.
    // We always return SK_PASS: with a redirect set that delivers to the peer, without one it
    // lets the bytes take the normal TCP path. Data is never dropped here.
    if SOCKS.redirect_msg(&ctx, &mut peer, u64::from(BPF_F_INGRESS)) == i64::from(SK_PASS) {
        count(counter::SPLICED_MSGS, 1);
        count(counter::SPLICED_BYTES, size);
    } else {
        let _ = NO_SPLICE.insert(&key, &1, 0);
        count(counter::PASSED_MSGS, 1);
        count(counter::PASSED_BYTES, size);
    }
    SK_PASS
}
