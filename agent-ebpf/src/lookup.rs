//! Lookup: the sk_lookup program in each enrolled pod's network namespace. It runs when a new
//! TCP connection looks for a listening socket there, after the tc gate let it in. A
//! connection from outside the mesh (plaintext, to a PERMISSIVE pod or port) is handed to the
//! agent's plaintext inbound listener (:15006) in that namespace, which applies L4 policy and
//! counts it before dialling the pod; the accepted socket keeps the original destination as
//! its local address. Connections from the mesh (the agent's dial address, whose mark the tc
//! gate checked, or a pod of this node), kubelet probes the gate recorded in `PROBES`, and
//! connections to addresses other than the pod's own (loopback) take the regular lookup.
//!
//! Written from the kernel's documentation of BPF_PROG_TYPE_SK_LOOKUP
//! (Documentation/bpf/prog_sk_lookup.rst).

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use weft_ebpf_common::{ProbeKey, counter};

use crate::maps::{PLAINTEXT_LISTENERS, PROBES, count, from_mesh, pod_flags};

const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;
/// While a restarting agent's program and its successor's are both attached, each selects
/// the same listener; the second replaces the first's choice instead of failing.
const BPF_SK_LOOKUP_F_REPLACE: u64 = 1;

#[sk_lookup]
pub fn weft_sk_lookup(ctx: SkLookupContext) -> u32 {
    // SAFETY: the kernel hands a valid bpf_sk_lookup; these fields are readable.
    let (family, protocol, local, remote, local_port, remote_port) = unsafe {
        let l = &*ctx.lookup;
        (
            l.family,
            l.protocol,
            l.local_ip4,
            l.remote_ip4,
            l.local_port,
            l.remote_port,
        )
    };
    if family != AF_INET || protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    if pod_flags(local).is_none() || from_mesh(remote) {
        return SK_PASS;
    }
    // `local_port` is in host order, `remote_port` in network order (bpf_sk_lookup).
    let probe = ProbeKey {
        source_ip: remote,
        pod_ip: local,
        source_port: u16::from_be(remote_port as u16),
        pod_port: local_port as u16,
    };
    if PROBES.remove(&probe).is_ok() {
        return SK_PASS;
    }
    match PLAINTEXT_LISTENERS.redirect_sk_lookup(&ctx, local, BPF_SK_LOOKUP_F_REPLACE) {
        Ok(()) => {
            count(counter::PLAINTEXT_STEERED, 1);
            SK_PASS
        }
        Err(_) => {
            // No listener (the agent is restarting): fail closed rather than let plaintext
            // past the agent's policy.
            count(counter::PLAINTEXT_NO_LISTENER, 1);
            SK_DROP
        }
    }
}
